"""``dustin.compile`` and ``DustinModel``: a (target, draft) pair with compiled, rewritten step graphs."""

from __future__ import annotations

import os
import warnings

import torch

from dustin.kernels.linear import int8 as int8_kernel
from dustin.passes import LinearChooser, PassReport, RewritePlan

from .adaptive import GammaPlanner
from .asset_cache import cache_root
from .cache import prefill_chunks
from .config import DustinConfig
from .driver import Generation
from .generate_args import UNSET, resolve
from .masks import mask_spec
from .profile import DustinProfile, default_profile
from .sampling import Sampling
from .selectors import LOOKAHEAD_SELECTORS
from .state import CacheStore, DecodeState
from .steps import StepGraph
from .errors import ModelPairError
from .draftquant import auto_convertible, check_draft, convertible, int8_draft, kernel_mismatches, resolve_quant
from .selfdraft import is_self_draft, self_draft
from .draftvocab import restricted_draft
from .validate import check_dense_layers, check_model, check_pair, longrope_limit, prompts_from, vocab_size

TARGET_ROLES = ("prefill_target", "verify", "verify_dense", "verify_oracle", "check", "observe")


def compile(target: torch.nn.Module, draft: torch.nn.Module | str | None = None, config: DustinConfig | None = None,
            *, profile: DustinProfile | str | os.PathLike | None = None, tokenizer=None, draft_tokenizer=None,
            **overrides) -> DustinModel:
    """Wrap an HF causal-LM pair sharing a tokenizer into a ``DustinModel``.

    ``draft=None`` (or ``"self"``): self-speculation, no draft model. The target drafts for itself through a view
    that shares its weights and KV cache, attends to a StreamingLLM window (``n_sink`` + ``draft_window`` recent
    positions) and runs ``config.draft_layers`` (all by default); see selfdraft.py.

    ``overrides`` are ``DustinConfig`` fields (``dustin.compile(t, d, mode="sparse", budget=1024)``); an unknown
    key is a ``TypeError`` listing the valid ones. ``profile`` is a ``DustinProfile`` (or its JSON path) from
    ``dustin.calibrate``. Graphs are captured and rewritten on the first ``generate``.

    Every check runs before the models are touched: a refused pair keeps its dtype, device, weights and train/eval
    mode. Then ``config.dtype`` casts both in place and ``DustinModel`` puts them in eval mode.
    """
    config = (config or DustinConfig()).replace(**overrides)
    if draft is None or (isinstance(draft, str) and draft == "self"):
        check_model(target, "target")  # before building the view, which reads its layers
        draft = self_draft(target, config.draft_layers)
    elif config.draft_layers:
        raise ValueError("`draft_layers` selects the layers of a self-draft; with a draft model, leave it empty "
                         "(or drop the draft: dustin.compile(target, draft_layers=...))")
    check_pair(target, draft, tokenizer, draft_tokenizer, dtype=config.dtype)  # as the pair will be after the cast
    if isinstance(profile, (str, os.PathLike)):
        profile = DustinProfile.load(os.fspath(profile))
    if profile is not None:
        profile.check(target, draft)  # the config hashes leave the dtype out: the cast does not change them
    check_dense_layers(target, config.dense_layers or (profile.dense_layers if profile is not None else ()))
    if config.dtype is not None:
        target.to(config.dtype)
        draft.to(config.dtype)
    return DustinModel(target, draft, config, profile)


class DustinModel:
    """A validated (target, draft) pair, its configuration, and the step graphs compiled for it.

    ``with_config`` gives a sibling with another configuration that shares this model's KV caches; ``generate``
    decodes. ``record_queries`` (calibration) taps every layer's queries in the dense decode graphs.
    """

    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, config: DustinConfig,
                 profile: DustinProfile | None = None, *, caches: CacheStore | None = None,
                 record_queries: bool = False, linear: LinearChooser | None = None,
                 draft_views: dict | None = None) -> None:
        self.target, self.draft, self.config = target.eval(), draft.eval(), config
        self.vocab_size = vocab_size(target)
        self.self_draft = is_self_draft(draft)
        # A self-draft's window is the point of it: a full-attention, all-layer self-draft is the target itself.
        self.draft_attention = "window" if self.self_draft and config.draft_kv == "auto" else config.draft_attention
        self.device = next(target.parameters()).device
        self.target_masks, self.draft_masks = mask_spec(target, "target"), mask_spec(draft, "draft")
        layers = target.config.num_hidden_layers
        sparse = config.mode != "dense"
        self.profile = profile or default_profile(target, draft, warn=sparse)
        if sparse and self.profile.budget is not None and self.profile.budget != config.budget:
            warnings.warn(f"dustin: the profile was calibrated at budget {self.profile.budget}, but budget is "
                          f"{config.budget}: its choices may not fit; recalibrate with budget={config.budget}",
                          stacklevel=3)
        # draft_vocab: the draft's decode steps run a view whose LM head holds only the profile's K most frequent
        # token ids (draftvocab.py); the driver maps its logits back to the full vocabulary.
        self.draft_ids, self._draft_view = None, None
        if config.draft_vocab is not None:
            self.draft_ids = _draft_ids(self.profile, config.draft_vocab, vocab_size(draft), self.device)
            self._draft_view = restricted_draft(draft, self.draft_ids)
        # draft_quant: the draft's decode steps run a view with int8 linears (draftquant.py); its prefill keeps the
        # float draft, faster at prefill sizes. One view per draft_vocab and int8 kernel (dustin's where built, else
        # torch's: DUSTIN_CPU_KERNELS when the model is made), shared with with_config siblings.
        # "auto": int8 for a separate float32 CPU draft, only its weights large enough to be streamed (measured).
        self._draft_views = {} if draft_views is None else draft_views
        self._draft_decode = self._draft_view or draft
        self.draft_quant = resolve_quant(config.draft_quant, draft, self.self_draft)
        if self.draft_quant is not None:
            if config.draft_quant == "int8":
                check_draft(draft, self.self_draft)
            key = (config.draft_quant, config.draft_vocab, int8_kernel.available())
            if key not in self._draft_views:
                self._draft_views[key] = _checked_int8_view(self._draft_decode, config.draft_quant)
            self._draft_decode = self._draft_views[key] or self._draft_decode
            if self._draft_views[key] is None:  # "auto", and the kernel failed its check on this machine
                self.draft_quant = None
        self.dense_layers = frozenset(config.dense_layers or self.profile.dense_layers)
        check_dense_layers(target, self.dense_layers)
        free = config.budget - config.n_sink - config.window
        # Positions of the selection chosen by the draft's lookahead; the rest of the free budget by history.
        self.draft_share = config.m if config.m is not None else int(round(self.profile.m_fraction * free))
        self.record_queries = record_queries
        self._caches = caches or CacheStore()
        # Packed weights of multi-row linears (passes/linear.py), shared with with_config siblings like the caches.
        self._linear = linear or LinearChooser(cache_root() / "linear-choices.json")
        # gamma="auto": step costs and acceptance measured as decoding runs (adaptive.py); one per configuration.
        every = config.exact_every if config.mode == "exact" else 0
        self.planner = GammaPlanner(config.gamma_max, every) if config.adaptive else None
        self._state: DecodeState | None = None
        self._graphs: dict[tuple, StepGraph] = {}
        self._plans: dict[str, RewritePlan] = {}

    def with_config(self, config: DustinConfig | None = None, **overrides) -> DustinModel:
        """The same pair under another configuration (``config``, or this one with ``overrides``), sharing this
        model's KV caches: a prompt one of them prefilled is not prefilled again by the other. This is how to
        compare modes on one long prompt::

            dense = dustin.compile(target, draft, mode="dense")
            exact = dense.with_config(mode="exact")
            dense.generate(ids, max_new_tokens=64); exact.generate(ids, max_new_tokens=64)  # one prefill
        """
        config = (config or self.config).replace(**overrides)
        if config.draft_layers != self.config.draft_layers:
            raise ValueError("with_config shares the draft; a self-draft with other draft_layers is another model: "
                             "call dustin.compile(target, draft_layers=...) instead")
        dtype = next(self.target.parameters()).dtype
        if config.dtype is not None and config.dtype != dtype:
            raise ValueError(f"with_config shares the models, which are {dtype}; it cannot cast them to "
                             f"{config.dtype}: call dustin.compile(target, draft, dtype={config.dtype}) instead")
        return DustinModel(self.target, self.draft, config, self.profile, caches=self._caches, linear=self._linear,
                           draft_views=self._draft_views)

    # ---- plans, graphs and state ------------------------------------------------------------------------------
    def plan(self, role: str) -> RewritePlan:
        """What the pass makes of the ``role`` step's attention (see docs/design.md, "Roles")."""
        if role not in self._plans:
            self._plans[role] = self._make_plan(role)
        return self._plans[role]

    def _make_plan(self, role: str) -> RewritePlan:
        cfg, prof = self.config, self.profile
        all_target = tuple(range(self.target.config.num_hidden_layers))
        if role.startswith("draft_"):  # draft_1, draft_2, and the catch-up steps after gamma=0 iterations
            taps = prof.draft_layers if cfg.mode != "dense" and cfg.selector in LOOKAHEAD_SELECTORS else ()
            record = tuple(range(self.draft.config.num_hidden_layers)) if self.record_queries else ()
            return RewritePlan(attention="dense", score_taps=taps, window_attention=self.draft_attention == "window",
                               query_taps=record)
        if role == "verify":
            if self.record_queries:
                return RewritePlan(attention="dense", query_taps=all_target)
            if cfg.mode == "dense":
                return RewritePlan(attention="dense")
            return RewritePlan(attention="sparse", dense_layers=self.dense_layers, query_taps=(prof.history_layer,))
        if role in ("verify_dense", "observe"):
            return RewritePlan(attention="dense", query_taps=(prof.history_layer,))
        if role == "verify_oracle":
            return RewritePlan(attention="dense", query_taps=all_target)
        return RewritePlan(attention="dense")  # prefill_*, check

    def graph(self, role: str, rows: int) -> StepGraph:
        """The compiled step for ``role`` at ``rows`` query rows and the current caches' shape (one code object
        per shape: no recompiles, and never a silent fallback to the un-rewritten model)."""
        caches = self._state.caches
        key = (role, rows, caches.batch, caches.capacity)
        if key not in self._graphs:
            is_target = role in TARGET_ROLES
            if is_target:
                model = self.target
            else:  # draft_quant: int8 decode steps; the prefill (hundreds of rows) stays float, where it is faster
                model = (self._draft_view or self.draft) if role.startswith("prefill") else self._draft_decode
            plan = self.plan(role)
            names = plan.state_names()
            get_cache = (lambda: self._state.caches.target) if is_target else (lambda: self._state.caches.draft)
            inductor = self.backend == "inductor" and not role.startswith(("prefill", "observe"))
            # A target whose table is padded past the shared tokenizer (Qwen2.5-7B: 152064 rows, its 0.5B draft:
            # 151936) may still emit an id the draft has no row for: the draft reads its last id instead. Only its
            # guesses suffer (the target verifies every token), and its graph never indexes out of range.
            draft_vocab = vocab_size(self.draft)
            id_max = draft_vocab - 1 if not is_target and draft_vocab < self.vocab_size else None
            self._graphs[key] = StepGraph(
                model, role, plan, get_cache,
                lambda: self._state.inputs(names, self.query_record(role, rows) if plan.query_taps else None),
                masks=self.target_masks if is_target else self.draft_masks, inductor=inductor,
                strict=self.config.strict, logits=not role.startswith("prefill"), id_max=id_max,
                linear=self._linear if self.config.linear == "auto" else None,
            )
        return self._graphs[key]

    def query_record(self, role: str, rows: int) -> torch.Tensor:
        """``[taps, B, Hq, rows, D]``: the queries the ``role`` step's query taps copied out on its last run."""
        model = self.target if role in TARGET_ROLES else self.draft
        return self._state.query_record(role, rows, len(self.plan(role).query_taps), model)

    def decode_state(self, batch: int, longest: int, max_new_tokens: int) -> DecodeState:
        """The state for ``batch`` rows whose longest prompt has ``longest`` tokens (caches shared with siblings)."""
        needed = self._needed(longest, max_new_tokens)
        caches = self._caches.get(self.target, self.draft, batch, self.config.max_length or _bucket(needed))
        if self._state is None or self._state.caches is not caches:
            self._state = DecodeState.build(self.config, caches)
        return self._state

    @property
    def backend(self) -> str:
        """How decode graphs run: the configured backend, ``"auto"`` resolved by device (Inductor on a GPU, eager
        on a CPU: on the real pair Inductor measured no faster on a CPU, and compiles a minute per graph)."""
        if self.config.backend != "auto":
            return self.config.backend
        return "inductor" if self.device.type == "cuda" else "eager"

    @property
    def state(self) -> DecodeState | None:
        """The decode state of the latest call (caches, selection, tap buffers); None before the first."""
        return self._state

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

    # ---- generate ---------------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = UNSET, do_sample: bool | None = UNSET, temperature: float | None = UNSET,
                 top_k: int | None = UNSET, top_p: float | None = UNSET,
                 eos_token_id: int | list[int] | torch.Tensor | None = UNSET, pad_token_id: int | None = UNSET,
                 streamer=None, generator: torch.Generator | None = None, generation_config=None,
                 progress: bool = False, use_draft: bool = True):
        """Speculative decoding of ``input_ids`` (left-padded, like transformers). Returns ``GenerateOutput`` with
        ``sequences`` (prompt + new tokens, padded like ``generate``) and ``stats``.

        The generation arguments mean what they mean in transformers' ``target.generate``: an argument not passed
        comes from ``generation_config`` (where set), then the target's own ``generation_config`` (a checkpoint that
        samples by default samples here too), then transformers' defaults (greedy; ``top_k=50`` when sampling). A
        ``None`` passed is a value: ``eos_token_id=None`` (or ``[]``) never stops, ``top_k=None`` disables top-k.
        ``max_length`` (in a ``generation_config``) counts the prompt, as in transformers; ``max_new_tokens`` beats
        it. Unlike transformers there is no default length. ``progress=True`` shows progress bars.
        ``use_draft=False`` decodes with the target alone (one token per pass) through the same compiled graphs
        and, in sparse modes, the same selection (history signal only): the autoregressive baselines.
        """
        return decode(self, resolve(self, locals()), input_ids, attention_mask, streamer, progress, use_draft)

    @property
    def generation_config(self):
        """The target's ``generation_config``: what ``generate`` falls back to for arguments not passed."""
        return getattr(self.target, "generation_config", None)

    def warmup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               max_new_tokens: int = 1, use_draft: bool = True, progress: bool = False, graphs: bool = True) -> None:
        """Prefill ``input_ids`` and capture/compile every decode graph for this batch shape now, so that the next
        ``generate`` on these prompts (same ``max_new_tokens`` sizing) spends no time compiling or prefilling.
        ``graphs=False`` only prefills (the caches are shared with ``with_config`` siblings: time a long prefill
        once, apart from any compile). ``progress=True`` shows progress bars (prefill chunks, graphs)."""
        prompts = prompts_from(input_ids, attention_mask, self.vocab_size)
        state = self.decode_state(len(prompts), max(len(p) for p in prompts), max_new_tokens)
        with torch.no_grad():
            gen = Generation(self, state, [p.to(self.device) for p in prompts], max_new_tokens, Sampling(), [],
                             None, progress=progress, use_draft=use_draft)
            gen.prefill()
            if graphs:
                gen.warm_up()

    def _needed(self, longest: int, max_new_tokens: int) -> int:
        """Cache positions one call needs: text + the widest forward past it (verify, or exact mode's check)."""
        cfg = self.config
        ahead = cfg.positions_ahead
        needed = longest + max_new_tokens + ahead
        if longest > 1:
            needed = max(needed, sum(prefill_chunks(longest - 1, cfg.prefill_chunk)[-1]))
        limit = min((n for n in map(longrope_limit, (self.target, self.draft)) if n is not None), default=None)
        if limit is not None and needed > limit:
            raise ModelPairError(
                f"longrope: this call touches {needed} cache positions (longest prompt {longest} + max_new_tokens "
                f"{max_new_tokens} + {ahead} of lookahead), past original_max_position_embeddings={limit}, where "
                "transformers switches every position of a forward to the long factors depending on how the forward "
                "is cut: dustin cannot reproduce that. Shorten the prompt or max_new_tokens"
            )
        if cfg.max_length is not None and needed > cfg.max_length:
            raise ValueError(
                f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) + {ahead} positions of lookahead "
                f"need a cache of {needed} positions, more than DustinConfig.max_length={cfg.max_length}; raise "
                "max_length or shorten the prompt"
            )
        return needed


def decode(model, args, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, streamer, progress: bool,
           use_draft: bool, rules=None, stream_prompt: bool = True):
    """The body of ``generate`` for anything the driver can run (``DustinModel``, an ``ExportedDustin``): prompts,
    state, one ``Generation``, transformers-shaped sequences. ``rules`` and ``stream_prompt``: see ``Generation``
    (transformers' ``custom_generate`` path, hf_generate.py)."""
    prompts = prompts_from(input_ids, attention_mask, model.vocab_size)
    if streamer is not None and len(prompts) != 1:
        raise ValueError(f"`streamer` supports batch size 1 (as in transformers), got a batch of {len(prompts)}")
    state = model.decode_state(len(prompts), max(len(p) for p in prompts), args.max_new_tokens)
    prompts = [p.to(model.device) for p in prompts]
    with torch.no_grad():
        gen = Generation(model, state, prompts, args.max_new_tokens, args.sampling, args.eos_ids,
                         args.generator, streamer, progress, use_draft, rules=rules, stream_prompt=stream_prompt)
        out = gen.run()
    out.sequences = _hf_sequences(input_ids, gen, args.pad_token_id)
    return out


def _draft_ids(profile: DustinProfile, k: int, draft_vocab: int, device: torch.device) -> torch.Tensor:
    """The profile's ``k`` most frequent token ids, sorted: the rows of the restricted draft head."""
    if k > draft_vocab:
        raise ValueError(f"DustinConfig.draft_vocab ({k}) exceeds the draft's vocabulary ({draft_vocab}): lower it, "
                         "or leave it None for the full vocabulary")
    if len(profile.frequent_tokens) < k:
        raise ValueError(f"draft_vocab={k} needs the {k} most frequent token ids from a profile, which holds "
                         f"{len(profile.frequent_tokens)}: pass profile= from dustin.calibrate (it counts its texts), or "
                         "dataclasses.replace(profile, frequent_tokens=dustin.frequent_tokens(token_ids, vocab_size))")
    ids = torch.tensor(sorted(profile.frequent_tokens[:k]), dtype=torch.long)
    if int(ids[-1]) >= draft_vocab:
        raise ValueError(f"the profile's frequent_tokens hold ids past the draft's vocabulary ({draft_vocab})")
    return ids.to(device)


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


def _checked_int8_view(draft: torch.nn.Module, choice: str) -> torch.nn.Module | None:
    """The int8 view of ``draft`` (``choice``: ``"int8"``, every convertible linear; ``"auto"``, the large float32
    ones), checked once against a float reference: a kernel that returns wrong numbers on this machine refuses
    ``"int8"`` and makes ``"auto"`` keep the float draft (``None``), with a warning that says so."""
    view = int8_draft(draft, auto_convertible if choice == "auto" else convertible)
    bad = kernel_mismatches(view)
    if not bad:
        return view
    kernel = "dustin's int8 CPU kernel" if any(getattr(m, "kernel", False) for m in view.modules()) else (
        "torch's int8 CPU kernel (_weight_int8pack_mm)")
    message = (f"{kernel} disagrees with a float reference on this machine for draft weights shaped "
               f"{', '.join(bad)} (out x in)")
    if choice == "int8":
        raise ValueError(f"draft_quant='int8': {message}; drop draft_quant (None)")
    warnings.warn(f"dustin: draft_quant='auto' keeps the float draft: {message}", stacklevel=4)
    return None
