"""``dustin.calibrate``: choose the score heads, the draft/history split ``m`` and the dense layers for a pair.

1. Record dense speculative trajectories on the given texts: at every iteration, every target layer's verification
   queries (all heads, all gamma+1 rows), every draft layer's queries of the drafted tokens, and the history length.
   The graph pass records them (query taps on every layer); the KV caches at the end hold every key those queries
   read (positions below each iteration's length never change).
2. The truth: each target layer/head/row's attention over the history positions. A selection's *recovery* at a
   layer is the attention mass it keeps there (over the history), averaged over heads, rows and windows.
3. Rank single heads by the recovery of their own selection; pick the target layer (and the best heads of one KV
   group, so the estimation reads one group's keys) whose summed history score selects best; add draft layers greedily (each with its best heads) while the lookahead
   selection improves; tune ``m`` on a grid; keep the worst layers dense (at most ``max_dense_layers``).
   Objective: mean layer recovery + ``worst_weight`` x the worst layer's.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from dustin.kernels import select_tokens

from .cache import head_geometry
from .config import DustinConfig
from .draftvocab import frequent_tokens
from .profile import DustinProfile, config_hash
from .recording import record_windows
from .validate import vocab_size

M_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def calibrate(target: torch.nn.Module, draft: torch.nn.Module, texts, config: DustinConfig | None = None, *,
              tokenizer=None, context: int = 4096, windows: int = 8, history_heads: int = 4, draft_layers: int = 3,
              draft_heads: int = 4, max_dense_layers: int = 2, worst_weight: float = 0.5, progress: bool = True,
              **overrides) -> DustinProfile:
    """Calibrate a ``DustinProfile`` for (target, draft) on ``texts`` (strings with ``tokenizer``, or token-id
    lists/tensors), each cut to ``context`` tokens, recording ``windows`` verification windows per text.

    The selection is calibrated for ``config``'s ``budget``, ``gamma``, ``n_sink`` and ``window`` (``config``, or
    the default ``DustinConfig`` with ``overrides``: ``calibrate(t, d, texts, budget=1024)``), the configuration the
    profile is then used with; the profile records its budget and warns when used at another.
    """
    config = (config or DustinConfig()).replace(**overrides)
    budget, n_sink, window = config.budget, config.n_sink, config.window
    if budget <= n_sink + window:
        raise ValueError(f"calibrate: budget ({budget}) must exceed n_sink + window ({n_sink + window})")
    prompts = _prompts(texts, tokenizer, context)
    records = record_windows(target, draft, prompts, gamma=config.max_draft, windows=windows, progress=progress)
    q_heads, kv_heads, _ = head_geometry(target)
    choice = choose(records, target.config.num_hidden_layers, draft.config.num_hidden_layers, budget=budget,
                    group_size=q_heads // kv_heads,
                    n_sink=n_sink, window=window, history_heads=history_heads, draft_layers=draft_layers,
                    draft_heads=draft_heads, max_dense_layers=max_dense_layers, worst_weight=worst_weight,
                    progress=progress)
    common = frequent_tokens(prompts, vocab_size(target))
    return DustinProfile(target_hash=config_hash(target), draft_hash=config_hash(draft), budget=budget,
                         frequent_tokens=common, **choice)


def choose(records, t_layers: int, d_layers: int, *, budget: int, n_sink: int, window: int, history_heads: int,
           draft_layers: int, draft_heads: int, max_dense_layers: int, worst_weight: float, group_size: int,
           progress: bool = False) -> dict:
    """The profile's choices from recorded windows (``WindowRecord``s): see the module docstring."""
    scorer = _Scorer(records, budget, n_sink, window, worst_weight)
    steps = tqdm(total=4, desc="calibrate", disable=not progress)
    # Target: per layer, the best heads of its best KV group (the estimation then reads one group's keys: on this
    # CPU 4 heads in one group cost 5.9 ms at 32k x 4 rows, spread over 4 groups 16 ms); the best layer wins.
    layer_heads = {}
    for layer in range(t_layers):
        ranked = scorer.rank_heads("hist", layer)
        groups = {h // group_size for h in ranked}
        candidates = [tuple(sorted([h for h in ranked if h // group_size == g][:history_heads])) for g in groups]
        layer_heads[layer] = max(candidates, key=lambda hs: scorer.objective(scorer.select(hist=("hist", layer, hs))))
    best_layer = max(range(t_layers), key=lambda l: scorer.objective(scorer.select(hist=("hist", l, layer_heads[l]))))
    hist = ("hist", best_layer, layer_heads[best_layer])
    steps.update()
    # Draft: greedily add layers (each with its best heads) while the draft-only selection improves.
    draft_best = {l: tuple(sorted(scorer.rank_heads("draft", l)[:draft_heads])) for l in range(d_layers)}
    order = sorted(range(d_layers), key=lambda l: -scorer.objective(scorer.select(draft=[("draft", l, draft_best[l])])))
    chosen: list = []
    best = float("-inf")
    for layer in order[:draft_layers]:
        trial = chosen + [("draft", layer, draft_best[layer])]
        value = scorer.objective(scorer.select(draft=trial))
        if value <= best:
            break
        chosen, best = trial, value
    steps.update()
    # m on a grid, with both signals.
    free = budget - n_sink - window
    m_fraction = max(M_GRID, key=lambda f: scorer.objective(scorer.select(chosen, hist, round(f * free))))
    per_layer = scorer.recovery(scorer.select(chosen, hist, round(m_fraction * free)))
    steps.update()
    # The worst layers stay dense, within the budget of max_dense_layers.
    dense = sorted(sorted(range(t_layers), key=lambda l: per_layer[l])[:max_dense_layers])
    final = [1.0 if l in dense else r for l, r in enumerate(per_layer)]
    steps.update()
    steps.close()
    return dict(history_layer=best_layer, history_heads=hist[2],
                draft_layers=tuple((l, heads) for _, l, heads in chosen), m_fraction=m_fraction,
                dense_layers=tuple(dense), recovery=[round(r, 4) for r in per_layer],
                objective=round(_objective(final, worst_weight), 4))


def _prompts(texts, tokenizer, context: int) -> list[torch.Tensor]:
    if not texts:
        raise ValueError("calibrate: `texts` is empty; pass a few long texts (strings with tokenizer=, or token ids)")
    prompts = []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            if tokenizer is None:
                raise ValueError("calibrate: `texts` are strings; pass tokenizer= to encode them")
            ids = tokenizer(text, return_tensors="pt").input_ids[0]
        else:
            ids = torch.as_tensor(text, dtype=torch.long).flatten()
        if len(ids) < 2:
            raise ValueError(f"calibrate: text {i} has {len(ids)} tokens; each needs at least 2")
        prompts.append(ids[:context])
    return prompts


def _objective(per_layer: list[float], worst_weight: float) -> float:
    return sum(per_layer) / len(per_layer) + worst_weight * min(per_layer)


class _Scorer:
    """Recovery of candidate selections against the recorded truth, over every recorded window."""

    def __init__(self, records, budget: int, n_sink: int, window: int, worst_weight: float = 0.5) -> None:
        self.records, self.budget, self.n_sink, self.window = records, budget, n_sink, window
        self.worst_weight = worst_weight

    def rank_heads(self, kind: str, layer: int) -> list[int]:
        """Heads of ``layer`` by the mean recovery of their own single-head selection (best first)."""
        heads = self.records[0].signal_heads(kind, layer)
        value = {h: self.objective(self.select(**({"hist": (kind, layer, (h,))} if kind == "hist"
                                                  else {"draft": [(kind, layer, (h,))]}))) for h in heads}
        return sorted(heads, key=lambda h: -value[h])

    def select(self, draft=None, hist=None, m: int = 0) -> list[torch.Tensor]:
        out = []
        for rec in self.records:
            d = sum(rec.signal(*s) for s in draft) if draft else None
            h = rec.signal(*hist) if hist else None
            out.append(select_tokens(d, h, rec.seq_lens, budget=self.budget, n_sink=self.n_sink,
                                     window=self.window, m=m if d is not None and h is not None else 0))
        return out

    def recovery(self, selections: list[torch.Tensor]) -> list[float]:
        """Per target layer: mean attention mass the selections keep (over heads, rows, windows)."""
        total = None
        for rec, indices in zip(self.records, selections):
            kept = rec.kept_mass(indices)
            total = kept if total is None else total + kept
        return (total / len(self.records)).tolist()

    def objective(self, selections: list[torch.Tensor]) -> float:
        return _objective(self.recovery(selections), self.worst_weight)
