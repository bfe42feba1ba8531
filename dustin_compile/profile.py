"""``DustinProfile``: the calibrated choices for one (target, draft) pair, saved as JSON keyed by config hashes."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field

import torch

from .errors import ProfileError
from .cache import head_geometry

PROFILE_VERSION = 1
# Keys that do not change what a model computes (paths, versions, the dtype it was saved in).
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "_attn_implementation",
             "attn_implementation", "use_cache", "output_attentions", "output_hidden_states", "return_dict"}


def config_hash(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex) of the model config's computation-relevant fields."""
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class DustinProfile:
    """Which heads estimate the selection, how the budget is split, and which layers stay dense.

    history_layer/history_heads: target layer and query heads whose ``q*`` scores the history.
    draft_layers: ``((layer, (head, ...)), ...)`` draft score heads for the lookahead signal.
    m_fraction: share of the free budget (budget − sink − window) given to the draft's top positions.
    dense_layers: target layers kept dense in sparse verification.
    recovery: per target layer, the mean attention recovery measured at calibration (for the report).
    frequent_tokens: token ids by descending frequency in the calibration texts (up to 32,768; ``draft_vocab=K``
        lets the draft score the first K: draftvocab.py). Replace it with ``dustin.frequent_tokens`` of a larger
        corpus: ``dataclasses.replace(profile, frequent_tokens=...)``.
    """

    target_hash: str
    draft_hash: str
    history_layer: int
    history_heads: tuple[int, ...]
    draft_layers: tuple[tuple[int, tuple[int, ...]], ...]
    m_fraction: float = 0.5
    dense_layers: tuple[int, ...] = ()
    budget: int | None = None
    recovery: list[float] = field(default_factory=list)
    objective: float | None = None
    frequent_tokens: tuple[int, ...] = ()
    version: int = PROFILE_VERSION

    def save(self, path: str) -> None:
        raw = asdict(self)
        tokens, raw["frequent_tokens"] = raw["frequent_tokens"], "@TOKENS@"  # tens of thousands of ids: one line
        text = json.dumps(raw, indent=2).replace('"@TOKENS@"', json.dumps(list(tokens)))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    @classmethod
    def load(cls, path: str) -> DustinProfile:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), repr(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "the profile") -> DustinProfile:
        """The inverse of ``dataclasses.asdict`` (JSON lists back to tuples), checking the version."""
        raw = dict(raw)
        if raw.get("version") != PROFILE_VERSION:
            raise ProfileError(f"profile {where} has version {raw.get('version')}, expected {PROFILE_VERSION}; "
                               "recalibrate")
        raw["history_heads"] = tuple(raw["history_heads"])
        raw["draft_layers"] = tuple((int(layer), tuple(heads)) for layer, heads in raw["draft_layers"])
        raw["dense_layers"] = tuple(raw["dense_layers"])
        raw["frequent_tokens"] = tuple(int(i) for i in raw.get("frequent_tokens", ()))  # absent before 2026-12
        return cls(**raw)

    def check(self, target: torch.nn.Module, draft: torch.nn.Module) -> None:
        """Refuse a profile calibrated for other models."""
        got = (config_hash(target), config_hash(draft))
        if got != (self.target_hash, self.draft_hash):
            raise ProfileError(
                f"profile was calibrated for target {self.target_hash} / draft {self.draft_hash}, but these models "
                f"hash to {got[0]} / {got[1]}: run dustin.calibrate(target, draft, texts) for this pair"
            )


def default_profile(target: torch.nn.Module, draft: torch.nn.Module, warn: bool = True) -> DustinProfile:
    """Without calibration: a middle target layer with (up to 4 of) the query heads of its first KV group (the
    estimation reads one group's keys), the draft's last three layers with all their heads, half the free budget
    to the draft signal, no dense layers."""
    if warn:
        warnings.warn("dustin: no calibration profile; using the default score heads (dustin.calibrate gives better "
                      "selections)", stacklevel=3)
    t_layers, d_layers = target.config.num_hidden_layers, draft.config.num_hidden_layers
    t_q, t_kv, _ = head_geometry(target)
    d_heads = head_geometry(draft)[0]
    draft_layers = tuple((layer, tuple(range(d_heads))) for layer in range(max(0, d_layers - 3), d_layers))
    return DustinProfile(config_hash(target), config_hash(draft), history_layer=t_layers // 2,
                         history_heads=tuple(range(min(4, t_q // t_kv))), draft_layers=draft_layers)
