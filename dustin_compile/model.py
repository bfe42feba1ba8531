"""``dustin.compile`` and ``DustinModel``: a (target, draft) pair with compiled, rewritten step graphs."""

from __future__ import annotations

import torch

from dustin.passes import PassReport, RewritePlan

from .config import DustinConfig
from .driver import Generation, prefill_chunks
from .policy import DensePolicy, HistoryPolicy
from .sampling import Sampling
from .steps import StepGraph
from .validate import check_pair, prompts_from, vocab_size
from .workspace import Workspace, head_geometry


def compile(target: torch.nn.Module, draft: torch.nn.Module, config: DustinConfig | None = None, *,
            tokenizer=None, draft_tokenizer=None, **overrides) -> DustinModel:
    """Wrap an HF causal-LM pair sharing a tokenizer into a ``DustinModel``.

    ``overrides`` are ``DustinConfig`` fields (``dustin.compile(t, d, mode="sparse", budget=1024)``); an unknown
    key is a ``TypeError`` listing the valid ones. Graphs are captured and rewritten on the first ``generate``.
    """
    config = (config or DustinConfig()).replace(**overrides)
    if config.dtype is not None:
        target.to(config.dtype)
        draft.to(config.dtype)
    check_pair(target, draft, tokenizer, draft_tokenizer)
    return DustinModel(target, draft, config)


class DustinModel:
    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, config: DustinConfig) -> None:
        self.target, self.draft, self.config = target.eval(), draft.eval(), config
        self.vocab_size = vocab_size(target)
        self.device = next(target.parameters()).device
        layers = target.config.num_hidden_layers
        bad = [i for i in config.dense_layers if i >= layers]
        if bad:
            raise ValueError(f"DustinConfig.dense_layers {bad} out of range: the target has {layers} layers (0..{layers - 1})")
        q_heads, kv_heads, _ = head_geometry(target)
        # History signal until calibration lands: a middle layer, the query heads of its first KV group (<= 4).
        self.history_layer = layers // 2
        self.history_heads = tuple(range(min(4, q_heads // kv_heads)))
        self._graphs: dict[tuple, StepGraph] = {}
        self._ws: Workspace | None = None

    # ---- graphs -----------------------------------------------------------------------------------------------
    def _plan(self, role: str) -> RewritePlan:
        if role == "verify" and self.config.mode != "dense":
            return RewritePlan(attention="sparse", dense_layers=frozenset(self.config.dense_layers),
                               query_tap=self.history_layer)
        return RewritePlan(attention="dense")

    def graph(self, role: str, rows: int | None = None) -> StepGraph:
        """The compiled step for ``role`` at the current workspace's shape (one code object per shape: no
        recompiles, and never a silent fallback to the un-rewritten model)."""
        ws = self._ws
        key = (role, rows, ws.batch, ws.capacity)
        if key not in self._graphs:
            is_target = role in ("verify", "prefill_target")
            model = self.target if is_target else self.draft
            get_cache = (lambda: self._ws.target_cache) if is_target else (lambda: self._ws.draft_cache)
            inductor = self.config.backend == "inductor" and not role.startswith("prefill")
            self._graphs[key] = StepGraph(
                model, role, self._plan(role), get_cache, lambda: self._ws.state[role],
                inductor=inductor, strict=self.config.strict, logits=not role.startswith("prefill"),
            )
        return self._graphs[key]

    @property
    def reports(self) -> dict[str, PassReport]:
        """The pass report of every graph captured so far, by role (latest shape)."""
        return {key[0]: g.report for key, g in self._graphs.items() if g.report is not None}

    @property
    def report(self) -> PassReport | None:
        """The target verification graph's pass report (``None`` before the first ``generate``)."""
        return self.reports.get("verify")

    def make_policy(self, ws: Workspace):
        return (DensePolicy if self.config.mode == "dense" else HistoryPolicy)(self, ws)

    def _workspace(self, batch: int, needed: int) -> Workspace:
        capacity = self.config.max_length or _bucket(needed)
        ws = self._ws
        if ws is None or ws.batch != batch or ws.capacity != capacity:
            self._ws = None  # free the old caches before allocating new ones
            ws = self._ws = Workspace(self.target, self.draft, batch, capacity, self.config)
        return ws

    # ---- generate ---------------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, streamer=None, generator: torch.Generator | None = None,
                 generation_config=None, progress: bool = False):
        """Speculative decoding of ``input_ids`` (left-padded, like transformers). Returns ``GenerateOutput`` with
        ``sequences`` (prompt + new tokens, padded like ``generate``) and ``stats``.

        ``eos_token_id=None`` uses the target's ``generation_config``; pass ``[]`` for none. Knobs left at their
        defaults are taken from ``generation_config`` when one is given. ``progress=True`` shows progress bars.
        """
        from .generate_args import resolve

        args = resolve(self, locals())
        prompts = prompts_from(input_ids, attention_mask)
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"`streamer` supports batch size 1 (as in transformers), got a batch of {len(prompts)}")
        longest = max(len(p) for p in prompts)
        needed = max(longest + args.max_new_tokens + self.config.gamma + 1,
                     sum(prefill_chunks(longest - 1, self.config.prefill_chunk)[-1]) if longest > 1 else 0)
        if self.config.max_length is not None and needed > self.config.max_length:
            raise ValueError(
                f"longest prompt ({longest}) + max_new_tokens ({args.max_new_tokens}) + gamma + 1 needs a cache of "
                f"{needed} positions, more than DustinConfig.max_length={self.config.max_length}; raise max_length "
                "or shorten the prompt"
            )
        ws = self._workspace(len(prompts), needed)
        prompts = [p.to(self.device) for p in prompts]
        with torch.no_grad():
            gen = Generation(self, ws, prompts, args.max_new_tokens, args.sampling, args.eos_ids,
                             args.generator, streamer, progress)
            out = gen.run()
        out.sequences = _hf_sequences(input_ids, gen, args.pad_token_id)
        return out


def _bucket(needed: int) -> int:
    """Capacity for ``needed`` positions: a power of two up to 4096, then multiples of 4096 — few distinct shapes
    (each is a compile), and memory only: the attention ops read up to each row's length, not the capacity."""
    if needed <= 4096:
        return max(256, 1 << (needed - 1).bit_length())
    return -(-needed // 4096) * 4096


def _hf_sequences(input_ids: torch.Tensor, gen: Generation, pad_token_id: int) -> torch.Tensor:
    """Prompt as given (with its left padding) + each row's new tokens, right-padded with ``pad_token_id``."""
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    new = (gen.n - gen.prompt_lens).tolist()
    out = torch.full((ids.shape[0], ids.shape[1] + max(new)), pad_token_id, dtype=ids.dtype)
    out[:, : ids.shape[1]] = ids.cpu()
    for b, count in enumerate(new):
        start = int(gen.prompt_lens[b])
        out[b, ids.shape[1] : ids.shape[1] + count] = gen.seq[b, start : start + count].cpu()
    return out.to(ids.device)
