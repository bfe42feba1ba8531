"""``dustin.compile`` and ``DustinModel``: a (target, draft) pair with compiled, rewritten step graphs."""

from __future__ import annotations

import torch

from dustin.passes import PassReport, RewritePlan

from .config import DustinConfig
from .driver import Generation, prefill_chunks
from .policy import make_policy
from .profile import DustinProfile, default_profile
from .steps import StepGraph
from .validate import check_pair, prompts_from, vocab_size
from .workspace import Workspace, head_geometry

TARGET_ROLES = ("prefill_target", "verify", "verify_dense", "verify_oracle", "verify_record", "check", "observe")
# Selectors whose score needs the draft's lookahead taps / the history query tap.
LOOKAHEAD_SELECTORS = ("dustin", "draft")
OBSERVE_ROWS = 16  # SnapKV's observation window: the last prompt positions


def compile(target: torch.nn.Module, draft: torch.nn.Module, config: DustinConfig | None = None, *,
            profile: DustinProfile | str | None = None, tokenizer=None, draft_tokenizer=None,
            **overrides) -> DustinModel:
    """Wrap an HF causal-LM pair sharing a tokenizer into a ``DustinModel``.

    ``overrides`` are ``DustinConfig`` fields (``dustin.compile(t, d, mode="sparse", budget=1024)``); an unknown
    key is a ``TypeError`` listing the valid ones. ``profile`` is a ``DustinProfile`` (or its JSON path) from
    ``dustin.calibrate``. Graphs are captured and rewritten on the first ``generate``.
    """
    config = (config or DustinConfig()).replace(**overrides)
    if config.dtype is not None:
        target.to(config.dtype)
        draft.to(config.dtype)
    check_pair(target, draft, tokenizer, draft_tokenizer)
    if isinstance(profile, str):
        profile = DustinProfile.load(profile)
    if profile is not None:
        profile.check(target, draft)
    return DustinModel(target, draft, config, profile)


class DustinModel:
    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, config: DustinConfig,
                 profile: DustinProfile | None = None) -> None:
        self.target, self.draft, self.config = target.eval(), draft.eval(), config
        self.vocab_size = vocab_size(target)
        self.device = next(target.parameters()).device
        layers = target.config.num_hidden_layers
        self.profile = profile or default_profile(target, draft, warn=config.mode != "dense")
        self.dense_layers = frozenset(config.dense_layers or self.profile.dense_layers)
        bad = sorted(i for i in self.dense_layers if i >= layers)
        if bad:
            raise ValueError(f"dense_layers {bad} out of range: the target has {layers} layers (0..{layers - 1})")
        free = config.budget - config.n_sink - config.window
        self.m = config.m if config.m is not None else int(round(self.profile.m_fraction * free))
        self.recording = False  # calibration: record every layer's queries
        self.policy_factory = None  # calibration installs its recorder here
        self._graphs: dict[tuple, StepGraph] = {}
        self._ws: Workspace | None = None

    # ---- plans and state ----------------------------------------------------------------------------------------
    def plan(self, role: str) -> RewritePlan:
        cfg, prof = self.config, self.profile
        all_target = tuple(range(self.target.config.num_hidden_layers))
        if role in ("draft_1", "draft_2"):
            taps = prof.draft_layers if cfg.mode != "dense" and cfg.selector in LOOKAHEAD_SELECTORS else ()
            record = tuple(range(self.draft.config.num_hidden_layers)) if self.recording else ()
            return RewritePlan(attention="dense", score_taps=taps, window_attention=cfg.draft_attention == "window",
                               query_taps=record)
        if role == "verify":
            if self.recording:
                return RewritePlan(attention="dense", query_taps=all_target)
            if cfg.mode == "dense":
                return RewritePlan(attention="dense")
            return RewritePlan(attention="sparse", dense_layers=self.dense_layers, query_taps=(prof.history_layer,))
        if role in ("verify_dense", "observe"):
            return RewritePlan(attention="dense", query_taps=(prof.history_layer,))
        if role == "verify_oracle":
            return RewritePlan(attention="dense", query_taps=all_target)
        return RewritePlan(attention="dense")  # prefill_*, check

    def state(self, role: str, rows: int) -> dict[str, torch.Tensor]:
        """The workspace tensors the ``role`` step at ``rows`` query rows reads (stable objects, filled in place)."""
        ws = self._ws
        return ws.state((role, rows, self.recording), lambda: self._build_state(ws, role, rows))

    def _build_state(self, ws: Workspace, role: str, rows: int) -> dict[str, torch.Tensor]:
        cfg, plan, batch, long = self.config, self.plan(role), ws.batch, torch.long
        model = self.target if role in TARGET_ROLES else self.draft
        q_heads, _, head_dim = head_geometry(model)
        dtype = next(model.parameters()).dtype
        shapes = {
            "seq_lens": ((role, rows, "seq_lens"), (batch,), long, 0),
            "indices": (("indices",), (batch, cfg.budget), long, -1),
            "window_indices": (("window_indices",), (batch, cfg.n_sink + cfg.draft_window), long, -1),
            "query_record": ((role, rows, "query_record", len(plan.query_taps)),
                             (len(plan.query_taps), batch, q_heads, rows, head_dim), dtype, 0),
            "lookahead": (("lookahead",), (batch, ws.capacity), torch.float32, 0),
            "lookahead_seq_lens": (("lookahead_seq_lens",), (batch,), long, 0),
        }
        return {name: ws.tensor(*shapes[name]) for name in plan.state_names()}

    def graph(self, role: str, rows: int) -> StepGraph:
        """The compiled step for ``role`` at ``rows`` query rows and the current workspace's shape (one code object
        per shape: no recompiles, and never a silent fallback to the un-rewritten model)."""
        ws = self._ws
        key = (role, rows, ws.batch, ws.capacity, self.recording)
        if key not in self._graphs:
            is_target = role in TARGET_ROLES
            model = self.target if is_target else self.draft
            get_cache = (lambda: self._ws.target_cache) if is_target else (lambda: self._ws.draft_cache)
            inductor = self.config.backend == "inductor" and not role.startswith(("prefill", "observe"))
            # A target whose table is padded past the shared tokenizer (Qwen2.5-7B: 152064 rows, its 0.5B draft:
            # 151936) may still emit an id the draft has no row for: the draft reads its last id instead. Only its
            # guesses suffer (the target verifies every token), and its graph never indexes out of range.
            draft_vocab = vocab_size(self.draft)
            id_max = draft_vocab - 1 if not is_target and draft_vocab < self.vocab_size else None
            self._graphs[key] = StepGraph(
                model, role, self.plan(role), get_cache, lambda: self.state(role, rows),
                inductor=inductor, strict=self.config.strict, logits=not role.startswith("prefill"), id_max=id_max,
            )
        return self._graphs[key]

    @property
    def reports(self) -> dict[str, PassReport]:
        """The pass report of every graph captured so far, by role (latest shape)."""
        return {key[0]: g.report for key, g in self._graphs.items() if g.report is not None}

    def rewritten_graph(self, role: str = "verify"):
        """The latest rewritten ``torch.fx.GraphModule`` of ``role`` (``None`` before it is captured)."""
        graphs = [g for key, g in self._graphs.items() if key[0] == role and g.backend.graph_modules]
        return graphs[-1].backend.graph_modules[-1] if graphs else None

    @property
    def report(self) -> PassReport | None:
        """The target verification graph's pass report (``None`` before the first ``generate``)."""
        return self.reports.get("verify")

    def _workspace(self, batch: int, needed: int) -> Workspace:
        capacity = self.config.max_length or _bucket(needed)
        ws = self._ws
        if ws is None or ws.batch != batch or ws.capacity != capacity:
            self._ws = None  # free the old caches before allocating new ones
            ws = self._ws = Workspace(self.target, self.draft, batch, capacity)
        return ws

    # ---- generate ---------------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, streamer=None, generator: torch.Generator | None = None,
                 generation_config=None, progress: bool = False, use_draft: bool = True):
        """Speculative decoding of ``input_ids`` (left-padded, like transformers). Returns ``GenerateOutput`` with
        ``sequences`` (prompt + new tokens, padded like ``generate``) and ``stats``.

        ``eos_token_id=None`` uses the target's ``generation_config``; pass ``[]`` for none. Knobs left at their
        defaults are taken from ``generation_config`` when one is given (its ``max_length``, prompt included as in
        transformers, stands in for a missing ``max_new_tokens``). ``progress=True`` shows progress bars.
        ``use_draft=False`` decodes with the target alone (one token per pass) through the same compiled graphs
        and, in sparse modes, the same selection (history signal only): the autoregressive baselines.
        """
        from .generate_args import resolve

        args = resolve(self, locals())
        prompts = prompts_from(input_ids, attention_mask, self.vocab_size)
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"`streamer` supports batch size 1 (as in transformers), got a batch of {len(prompts)}")
        ws = self._workspace(len(prompts), self._needed(max(len(p) for p in prompts), args.max_new_tokens))
        prompts = [p.to(self.device) for p in prompts]
        with torch.no_grad():
            gen = Generation(self, ws, prompts, args.max_new_tokens, args.sampling, args.eos_ids,
                             args.generator, streamer, progress, use_draft)
            out = gen.run()
        out.sequences = _hf_sequences(input_ids, gen, args.pad_token_id)
        return out

    def warmup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               max_new_tokens: int = 1, use_draft: bool = True) -> None:
        """Prefill ``input_ids`` and capture/compile every decode graph for this batch shape now, so that the next
        ``generate`` on these prompts (same ``max_new_tokens`` sizing) spends no time compiling or prefilling."""
        prompts = prompts_from(input_ids, attention_mask, self.vocab_size)
        ws = self._workspace(len(prompts), self._needed(max(len(p) for p in prompts), max_new_tokens))
        with torch.no_grad():
            from .sampling import Sampling

            gen = Generation(self, ws, [p.to(self.device) for p in prompts], max_new_tokens, Sampling(), [],
                             None, use_draft=use_draft)
            gen.prefill()
            gen.warm_up()

    def _needed(self, longest: int, max_new_tokens: int) -> int:
        """Cache positions one call needs: text + the widest forward past it (verify, or exact mode's check)."""
        cfg = self.config
        ahead = cfg.gamma + 1 + (cfg.exact_every + cfg.gamma if cfg.mode == "exact" else 0)
        needed = longest + max_new_tokens + ahead
        if longest > 1:
            needed = max(needed, sum(prefill_chunks(longest - 1, cfg.prefill_chunk)[-1]))
        if cfg.max_length is not None and needed > cfg.max_length:
            raise ValueError(
                f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) + {ahead} positions of lookahead "
                f"need a cache of {needed} positions, more than DustinConfig.max_length={cfg.max_length}; raise "
                "max_length or shorten the prompt"
            )
        return needed

    def make_policy(self, ws: Workspace):
        return make_policy(self, ws)


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
