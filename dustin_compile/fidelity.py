"""Teacher-forced fidelity of sparse verification on held-out text: what the selection costs, without the cascade.

Free-running comparisons stop meaning much after the first differing token (from there the two runs read different
texts). Here every verification reads the same text. Per passage (a batch of equal-length passages), the first
``context`` tokens are prefilled; then each *window* verifies the next γ + 1 text tokens exactly as decoding would
if the draft had proposed the text's next γ tokens:

1. the draft runs its γ steps over the text tokens (``TeacherForced.propose``), so its score taps compute the
   lookahead signal on those very tokens;
2. the selection is made as in sparse mode (``Generation.select``, with the chosen selector);
3. the target verifies sparsely (role ``verify``), then densely on the same cache (role ``verify_oracle``: dense,
   with a query tap on every layer, which the recovery needs). Dense runs last, so the new positions keep dense
   K/V, as a dense decoding's cache would;
4. all γ + 1 text tokens are committed (every draft accepted, the bonus token = the text's), and ``q*`` is kept
   from the sparse verification, as sparse decoding keeps it.

The first window of a run is a burn-in: sparse mode's first verification is dense (nothing estimates a selection
before a ``q*`` exists), so it is not measured. Per measured window and row (γ + 1 rows per passage):
agreement of the sparse and dense argmax, KL(dense ‖ sparse) from the logits in fp64, the NLL of the true next token
under each, and per target layer the *recovery*: the share of the dense verification queries' attention (all heads
and rows, softmax over the history positions) that falls on the selected positions (``recording.kept_mass``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import SELECTORS
from .driver import Generation
from .model import DustinModel
from .recording import kept_mass, layer_attention
from .sampling import Sampling
from .selectors import LOOKAHEAD_SELECTORS

DENSE_ROLE = "verify_oracle"  # dense verification with query taps on every target layer


@dataclass
class Window:
    """One verification window of every passage. ``sparse``: whether the first pass was sparse (False for the
    burn-in). Logits ``[B, γ+1, V]`` fp32; ``targets [B, γ+1]`` the text tokens each row predicts; ``start`` the
    cache position of row 0 (the history is positions ``< start``); ``recovery [L]`` per target layer (mean over
    passages), ``estimated [B]`` the selection's history-score mass (None for the burn-in)."""

    start: int
    sparse: bool
    sparse_logits: torch.Tensor
    dense_logits: torch.Tensor
    targets: torch.Tensor
    recovery: torch.Tensor | None
    estimated: torch.Tensor | None


class TeacherForced(Generation):
    """A ``Generation`` whose draft proposes the text and whose every window is committed in full (module doc).

    ``selector`` replaces the model's selector for the selection only. This is sound because no graph depends on
    the selector except the draft's score taps, which a model built with a lookahead selector (``dustin``) carries
    and which change no logits: one sibling per budget then serves every selector (graph capture is the slow part
    on a large model).
    """

    def __init__(self, model: DustinModel, passages: torch.Tensor, context: int, windows: int,
                 selector: str | None = None) -> None:
        gamma = model.config.max_draft  # teacher forcing verifies fixed windows: no adaptive gamma
        state = model.decode_state(len(passages), context, (windows + 1) * (gamma + 1))
        passages = passages.to(model.device)
        super().__init__(model, state, list(passages[:, :context]), (windows + 1) * (gamma + 1), Sampling(), [],
                         None)
        self.text = passages
        if selector is not None:
            self.config = self.config.replace(selector=selector)

    def propose(self, logits: torch.Tensor, step: int):
        return self.text.gather(1, (self.n + step)[:, None]).squeeze(1), None

    def window(self) -> Window:
        drafted, _ = self.draft()
        selection = self.select(drafted)
        start = self.n - 1
        sparse_logits = self.verify(drafted, selection.role)
        dense_logits = self.verify(drafted, DENSE_ROLE)  # last: the new positions keep dense K/V
        recovery = self.recovery(selection.indices, start) if selection.sparse else None
        targets = self.text.gather(1, self.positions(self.n, self.verify_rows))
        accepted = torch.full_like(self.n, self.gamma)
        self.keep_history_query(selection.role, accepted)
        self.commit(accepted, targets)
        return Window(int(start[0]), selection.sparse, sparse_logits, dense_logits, targets, recovery,
                      selection.recovery if selection.sparse else None)

    def recovery(self, indices: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        queries = self.model.query_record(DENSE_ROLE, self.verify_rows)  # [L, B, Hq, γ+1, D]
        keys = [layer.keys for layer in self.state.caches.target.layers]
        return kept_mass(layer_attention(queries, keys, history), indices)


def teacher_forced(model: DustinModel, passages: torch.Tensor, context: int, windows: int, *,
                   selector: str | None = None, progress: bool = False) -> Iterator[Window]:
    """Every window (the burn-in first) of teacher-forced sparse verification of ``passages [B, L]`` (token ids,
    ``L >= context + (windows + 1) * (γ + 1)``) after a prefill of their first ``context`` tokens."""
    check_arguments(model, passages, context, windows, selector)  # now, not at the first window
    return _windows(model, passages, context, windows, selector, progress)


def _windows(model, passages, context, windows, selector, progress) -> Iterator[Window]:
    # no_grad per call, not around the yields: the caller's own grad mode stays as it was between windows
    with torch.no_grad():
        run = TeacherForced(model, passages, context, windows, selector)
        run.prefill()
    for _ in tqdm(range(windows + 1), desc=f"teacher-forced {selector or model.config.selector}",
                  unit="window", disable=not progress, leave=False):
        with torch.no_grad():
            window = run.window()
        yield window


def check_arguments(model: DustinModel, passages: torch.Tensor, context: int, windows: int,
                    selector: str | None) -> None:
    if model.config.mode != "sparse":
        raise ValueError(f"teacher_forced needs a sparse-mode model, got mode={model.config.mode!r}: pass "
                         "model.with_config(mode='sparse')")
    if not isinstance(passages, torch.Tensor) or passages.dim() != 2 or passages.dtype != torch.long:
        raise ValueError("passages must be a [B, L] int64 tensor of token ids (one passage per row)")
    if passages.numel() and not 0 <= int(passages.min()) <= int(passages.max()) < model.vocab_size:
        raise ValueError(f"passages hold token ids outside the target's vocabulary [0, {model.vocab_size}): "
                         "tokenize them with the pair's tokenizer")
    if not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be an integer >= 2 (tokens prefilled before the first window), got {context!r}")
    if not isinstance(windows, int) or windows < 1:
        raise ValueError(f"windows must be an integer >= 1, got {windows!r}")
    need = context + (windows + 1) * (model.config.max_draft + 1)
    if passages.shape[1] < need:
        raise ValueError(f"passages have {passages.shape[1]} tokens, but context {context} + (windows {windows} + 1 "
                         f"burn-in) x (gamma + 1 = {model.config.max_draft + 1}) needs {need}: use longer passages, a "
                         "smaller context or fewer windows")
    if selector is not None and selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    uses_lookahead = (selector or model.config.selector) in LOOKAHEAD_SELECTORS
    if uses_lookahead and model.config.selector not in LOOKAHEAD_SELECTORS:
        raise ValueError(f"selector {selector!r} reads the draft's lookahead, but the model was built with "
                         f"selector={model.config.selector!r}, whose draft graphs have no score taps: build it with "
                         "selector='dustin' (it serves every selector)")


@dataclass
class Fidelity:
    """Means over every measured window and passage row (rows = windows x passages x (γ + 1)).

    ppl_ratio = exp(mean NLL sparse − mean NLL dense) = PPL_sparse / PPL_dense. recovery: per target layer.
    """

    windows: int = 0
    rows: int = 0
    agreement: float = float("nan")
    kl: float = float("nan")
    nll_sparse: float = float("nan")
    nll_dense: float = float("nan")
    ppl_ratio: float = float("nan")
    estimated_recovery: float = float("nan")
    recovery: list[float] = field(default_factory=list)


def window_metrics(sparse_logits: torch.Tensor, dense_logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per row ``[B, T]``: agreement (0/1), KL(dense ‖ sparse), NLL of ``targets`` under each (fp64)."""
    log_s = torch.log_softmax(sparse_logits.double(), -1)
    log_d = torch.log_softmax(dense_logits.double(), -1)
    # kl_div(input=log q, target=log p, log_target) = p (log p − log q), 0 where p underflows to 0
    kl = torch.nn.functional.kl_div(log_s, log_d, reduction="none", log_target=True).sum(-1)
    return {"agreement": (sparse_logits.argmax(-1) == dense_logits.argmax(-1)).double(), "kl": kl,
            "nll_sparse": -log_s.gather(-1, targets[..., None]).squeeze(-1),
            "nll_dense": -log_d.gather(-1, targets[..., None]).squeeze(-1)}


def fidelity(model: DustinModel, passages: torch.Tensor, context: int, windows: int, *,
             selector: str | None = None, progress: bool = False) -> Fidelity:
    """Teacher-forced fidelity of ``model``'s sparse verification (means over measured windows; module doc)."""
    sums: dict[str, float] = {}
    recovery, estimated, count, rows = None, 0.0, 0, 0
    for window in teacher_forced(model, passages, context, windows, selector=selector, progress=progress):
        if not window.sparse:
            continue  # the burn-in: a dense verification seeds q*
        for name, values in window_metrics(window.sparse_logits, window.dense_logits, window.targets).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        rows += window.targets.numel()
        recovery = window.recovery.double() if recovery is None else recovery + window.recovery.double()
        estimated += float(window.estimated.double().mean())
        count += 1
    means = {name: total / rows for name, total in sums.items()}
    return Fidelity(windows=count, rows=rows, agreement=means["agreement"], kl=means["kl"],
                    nll_sparse=means["nll_sparse"], nll_dense=means["nll_dense"],
                    ppl_ratio=float(torch.tensor(means["nll_sparse"] - means["nll_dense"]).exp()),
                    estimated_recovery=estimated / count, recovery=(recovery / count).tolist())
