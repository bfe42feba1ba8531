"""Property test over many seeded random model configurations.

For each family (llama, qwen2, mistral, qwen3, phi3, olmo2) and seed, one random (target, draft) pair is drawn:
query heads and KV heads (GQA ratio 1..8), head dim (32..128), hidden size, layers, vocabulary, RoPE theta and
scaling variant (default, linear, dynamic, yarn, llama3, longrope: the ones transformers 5.23 runs for the family),
tied or untied embeddings, sliding windows where the family has them; then a random left-padded ragged batch,
gamma, budgets, ``exact_every``, ``max_new_tokens``. The properties, greedy, eos disabled:

- ``dense``  == ``target.generate``, token for token;
- ``exact``  == ``target.generate`` (any budget, any selector);
- ``sparse`` with a budget covering the whole context == ``dense``.

Anything else (a different token, any exception) fails and names the case, the mode, the first mismatching new
token per row and transformers' top-2 logit gap there (a tiny gap would mean a numerical tie, not a bug). The one
accepted alternative to equal output is a clear refusal: a ``dustin.DustinError`` naming the RoPE variant, for the
variants in ``MAY_REFUSE`` (frequencies that depend on the length each forward sees).

The seed is in the test id, and every failure message prints the drawn case (``draw_case(family, seed)`` rebuilds
it). The default share runs ``N_FAST`` seeds per family plus the pinned ``REGRESSIONS``; ``-m slow`` runs ten times
as many fresh seeds.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import dustin
from dustin.config import SELECTORS
from helpers import hf_greedy, left_padded, random_prompts

FAMILIES = ("llama", "qwen2", "mistral", "qwen3", "phi3", "olmo2")
# RoPE variants transformers 5.23 runs for each family (Phi3Config.validate_rope accepts only these two).
ROPE_TYPES = {family: ("default", "linear", "dynamic", "yarn", "llama3", "longrope") for family in FAMILIES}
ROPE_TYPES["phi3"] = ("default", "longrope")
HEAD_DIMS = (32, 48, 64, 96, 128)
# Families whose config takes ``head_dim`` (else it is hidden_size // num_attention_heads).
EXPLICIT_HEAD_DIM = ("llama", "mistral", "qwen3")
SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)

N_FAST = 3  # seeds per family in the default run
N_SLOW = 10 * N_FAST  # fresh seeds per family under -m slow
# Cases the slow run found failing, kept in the default run until fixed.
REGRESSIONS = [  # (family, seed, the RoPE variant that seed draws: re-pin if the draws ever change)
    ("olmo2", 3, "dynamic"),  # any context: torch._dynamo Unsupported "Data-dependent branching" in generate
    ("llama", 11, "longrope"),  # original 64, rows of 5 and 55 + 14 new: verification runs ahead of the threshold
    ("qwen3", 11, "longrope"),  # original 48, longest prompt 48: the prefill's padded rows cross the threshold
]
# RoPE variants whose frequencies depend on the length a forward sees (modeling_rope_utils.dynamic_rope_update):
# dustin may refuse them with its own error naming the variant (dustin.DustinError) instead of matching transformers.
MAY_REFUSE = ("dynamic", "longrope")


# ---- drawing ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    family: str
    seed: int
    target: dict
    draft: dict
    lengths: list[int]
    max_new_tokens: int
    gamma: int
    prefill_chunk: int
    exact: dict  # exact mode's knobs (budget from tiny to large)
    sparse: dict  # sparse mode's knobs (budget covering the context)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"case {self.family}/seed={self.seed}:",
                 f"  target: {self.target}",
                 f"  draft:  {self.draft}",
                 f"  prompts: lengths={self.lengths} max_new_tokens={self.max_new_tokens} gamma={self.gamma} "
                 f"prefill_chunk={self.prefill_chunk}",
                 f"  exact:  {self.exact}",
                 f"  sparse: {self.sparse}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _geometry(rng: random.Random, family: str) -> dict:
    """Heads, KV heads (GQA ratio 1..8), head dim, hidden size."""
    ratio = rng.randint(1, 8)
    kv = rng.choice((1, 2)) if ratio <= 4 else 1
    heads, head_dim = kv * ratio, rng.choice(HEAD_DIMS)
    geometry = dict(num_attention_heads=heads, num_key_value_heads=kv, hidden_size=heads * head_dim)
    if family in EXPLICIT_HEAD_DIM:
        geometry["head_dim"] = head_dim
        if rng.random() < 0.4:  # o_proj maps heads * head_dim back to a hidden size of its own
            geometry["hidden_size"] = heads * 16 * rng.randint(1, 4) if family != "qwen3" else rng.choice((64, 96, 160))
    return geometry


def _rotary_dim(cfg: dict) -> int:
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return int(head_dim * cfg.get("partial_rotary_factor", 1.0))


def _rope(rng: random.Random, family: str, kind: str, cfg: dict, max_pos: int) -> dict:
    """``rope_parameters`` as transformers 5.23 expects them for ``kind`` (modeling_rope_utils.py)."""
    theta = rng.choice((100.0, 10_000.0, 500_000.0, 1_000_000.0, float(rng.randint(1_000, 100_000))))
    rope = {"rope_type": kind, "rope_theta": theta}
    if kind in ("linear", "dynamic"):
        rope["factor"] = rng.choice((1.5, 2.0, 4.0, 8.0))
    elif kind == "yarn":
        rope["factor"] = rng.choice((2.0, 4.0, 8.0))
        rope["original_max_position_embeddings"] = max(8, int(max_pos / rope["factor"]))
        if rng.random() < 0.5:
            rope["beta_fast"], rope["beta_slow"] = rng.choice(((32, 1), (16, 2), (8, 1)))
        if rng.random() < 0.3:
            rope["attention_factor"] = rng.choice((0.8, 1.0, 1.3))
        if rng.random() < 0.3:
            rope["truncate"] = False
    elif kind == "llama3":
        rope.update(factor=rng.choice((2.0, 8.0, 32.0)), low_freq_factor=1.0, high_freq_factor=rng.choice((2.0, 4.0)),
                    original_max_position_embeddings=max(8, max_pos // rng.choice((2, 4, 8))))
    elif kind == "longrope":
        half = _rotary_dim(cfg) // 2
        rope["short_factor"] = [round(rng.uniform(1.0, 2.0), 3) for _ in range(half)]
        rope["long_factor"] = [round(rng.uniform(1.0, 16.0), 3) for _ in range(half)]
        original = rng.choice((16, 32, 48, max_pos))
        if family == "phi3":  # Phi3Config keeps it at the top level, and standardize_rope_params gives it priority
            cfg["original_max_position_embeddings"] = original
        else:
            rope["original_max_position_embeddings"] = original
        if rng.random() < 0.5:
            rope["factor"] = rng.choice((2.0, 4.0))
        if rng.random() < 0.3:
            rope["attention_factor"] = rng.choice((1.0, 1.2))
    if family == "phi3":
        rope["partial_rotary_factor"] = cfg.get("partial_rotary_factor", 1.0)
    return rope


def _windows(rng: random.Random, family: str, layers: int, longest: int) -> dict:
    """Sliding windows where the family has them: sometimes smaller than the longest prompt."""
    def size():
        return rng.choice((rng.randint(2, max(2, longest - 1)), rng.randint(2, 80), 4096))

    if family in ("mistral", "phi3"):
        return {"sliding_window": size() if rng.random() < 0.6 else None}
    if family in ("qwen2", "qwen3"):
        if rng.random() < 0.6:
            return dict(use_sliding_window=True, sliding_window=size(), max_window_layers=rng.randint(0, layers))
        return dict(use_sliding_window=False)
    return {}


def draw_case(family: str, seed: int) -> Case:
    """The case of ``(family, seed)``. Each part draws from its own seeded stream, so that changing how one part is
    drawn leaves the others (and the pinned ``REGRESSIONS``) as they were."""
    def stream(part: str) -> random.Random:
        return random.Random(f"{family}/{seed}/{part}")

    notes = []
    rng = stream("prompts")
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 4))]
    longest, max_new = max(lengths), rng.randint(5, 15)

    rng = stream("target")
    vocab = rng.choice((64, 96, 128, 200, 256))
    max_pos = rng.choice((32, 64, 128, 2048))
    target_layers = rng.randint(1, 3)
    common = dict(vocab_size=vocab, max_position_embeddings=max_pos, **SPECIAL)
    target = dict(common, num_hidden_layers=target_layers, intermediate_size=rng.choice((32, 64, 128)),
                  tie_word_embeddings=rng.random() < 0.5, **_geometry(rng, family))
    if family == "phi3" and rng.random() < 0.4:
        target["partial_rotary_factor"] = rng.choice((0.5, 0.75))
    kind = rng.choice(ROPE_TYPES[family])
    target["rope_parameters"] = _rope(rng, family, kind, target, max_pos)
    target.update(_windows(rng, family, target_layers, longest))

    rng = stream("draft")  # same family, vocabulary, special tokens and RoPE; fewer layers
    draft = dict(common, num_hidden_layers=rng.randint(1, max(1, target_layers - 1)),
                 intermediate_size=rng.choice((32, 64)), tie_word_embeddings=rng.random() < 0.5)
    if rng.random() < 0.5:
        draft.update({k: target[k] for k in ("num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
                                             "partial_rotary_factor") if k in target})
    else:
        draft.update(_geometry(rng, family))
        if "partial_rotary_factor" in target:
            draft["partial_rotary_factor"] = target["partial_rotary_factor"]
        notes.append("draft with its own head geometry")
    draft_rope = dict(target["rope_parameters"])
    if kind == "longrope":  # same factors as far as the draft's rotary dimension goes
        half = _rotary_dim(draft) // 2
        for key in ("short_factor", "long_factor"):
            draft_rope[key] = (draft_rope[key] * (half // len(draft_rope[key]) + 1))[:half]
        if family == "phi3":
            draft["original_max_position_embeddings"] = target["original_max_position_embeddings"]
    draft["rope_parameters"] = draft_rope
    draft.update(_windows(rng, family, draft["num_hidden_layers"], longest))

    rng = stream("decode")
    gamma = rng.randint(1, 5)
    prefill_chunk = rng.choice((512, 512, rng.randint(1, 24)))
    n_sink, window = rng.randint(0, 4), rng.randint(1, 8)
    tiny = n_sink + window + 1  # the smallest budget with a free slot past the sink and the window
    budget = rng.choice((tiny, rng.randint(tiny, max(tiny, longest + 8)), rng.randint(tiny, 2 * longest + 32)))
    exact = dict(budget=budget, n_sink=n_sink, window=window, exact_every=rng.randint(1, 8),
                 selector=rng.choice(("dustin",) * 3 + SELECTORS), draft_window=rng.choice((1, 4, 16, 512)))
    sparse = dict(n_sink=rng.randint(0, 4), window=rng.randint(1, 8),
                  selector=rng.choice(("dustin", "history", "streaming")))
    # budget >= every context a verification reads (longest prompt + max_new_tokens), and >= n_sink + window
    sparse["budget"] = max(longest + max_new + rng.choice((0, 1, 7, 100)), sparse["n_sink"] + sparse["window"])
    return Case(family, seed, target, draft, lengths, max_new, gamma, prefill_chunk, exact, sparse, notes)


def build(family: str, cfg: dict, seed: int):
    config = AutoConfig.for_model(family, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


# ---- checking ---------------------------------------------------------------------------------------------------
def _margin(model, sequence: torch.Tensor, mask: torch.Tensor, row: int, col: int) -> float:
    """The gap between the top two logits transformers gives at ``sequence[row, col]`` (a tiny gap means the
    mismatch may be a numerical tie, not a bug)."""
    with torch.no_grad():
        full_mask = torch.cat([mask, torch.ones(mask.shape[0], sequence.shape[1] - mask.shape[1],
                                                dtype=mask.dtype)], 1)
        position_ids = (full_mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(sequence[row:row + 1, :col], attention_mask=full_mask[row:row + 1, :col],
                       position_ids=position_ids[row:row + 1, :col]).logits[0, -1]
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


def _mismatch(name: str, got: torch.Tensor, want: torch.Tensor, width: int, target, mask) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if torch.equal(got, want):
        return None
    rows = []
    for b in range(got.shape[0]):
        diff = (got[b] != want[b]).nonzero().flatten()
        if diff.numel():
            col = int(diff[0])
            rows.append(f"row {b}: first mismatch at new token {col - width} (got {int(got[b, col])}, want "
                        f"{int(want[b, col])}; transformers' top-2 logit gap there "
                        f"{_margin(target, want, mask, b, col):.2e})")
    return f"{name} differs: " + "; ".join(rows)


def _error(name: str, exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-3:]
    frames = " <- ".join(f"{f.filename.split('/site-packages/')[-1].split('/work/main/')[-1]}:{f.lineno} {f.name}"
                         for f in reversed(where))
    return f"{name} raised {type(exc).__name__}: {str(exc).strip()[:600]} [at {frames}]"


def _refusal(case: Case, exc: BaseException) -> bool:
    """A clear refusal: dustin's own error, for a RoPE variant it may refuse, naming that variant."""
    kind = case.target["rope_parameters"]["rope_type"]
    return isinstance(exc, dustin.DustinError) and kind in MAY_REFUSE and kind in str(exc)


def check_case(family: str, seed: int) -> None:
    case = draw_case(family, seed)
    target = build(family, case.target, seed)
    draft = build(family, case.draft, seed + 10_000)
    ids, mask = left_padded(random_prompts(case.lengths, vocab=case.target["vocab_size"], seed=seed))
    width, new = ids.shape[1], case.max_new_tokens
    expected = hf_greedy(target, ids, mask, new, eos_token_id=[])
    failures = []

    def run(name, make, want):
        try:
            out = make().generate(ids, mask, max_new_tokens=new, eos_token_id=[], pad_token_id=0).sequences
        except Exception as exc:  # noqa: BLE001 - reported below with the case, never swallowed
            if not _refusal(case, exc):
                failures.append(_error(name, exc))
            return None
        problem = _mismatch(name, out, want, width, target, mask)
        if problem:
            failures.append(problem)
        return out

    try:
        dense = dustin.compile(target, draft, mode="dense", gamma=case.gamma, backend="eager",
                               prefill_chunk=case.prefill_chunk)
    except Exception as exc:  # noqa: BLE001
        if _refusal(case, exc):
            return
        pytest.fail(f"{_error('dustin.compile', exc)}\n{case.describe()}")
    dense_out = run("dense", lambda: dense, expected)
    run("exact", lambda: dense.with_config(mode="exact", **case.exact), expected)
    run("sparse (budget covers the context)", lambda: dense.with_config(mode="sparse", **case.sparse),
        dense_out if dense_out is not None else expected)
    assert not failures, "\n".join(failures) + "\n" + case.describe()


# ---- tests ------------------------------------------------------------------------------------------------------
def _ids(seeds):
    return [pytest.param(family, seed, id=f"{family}-seed{seed}") for family in FAMILIES for seed in seeds]


@pytest.mark.parametrize("family, seed", _ids(range(N_FAST)))
def test_random_configs(family, seed):
    check_case(family, seed)


@pytest.mark.parametrize("family, seed, kind", [pytest.param(*r, id=f"{r[0]}-seed{r[1]}-{r[2]}") for r in REGRESSIONS])
def test_regressions(family, seed, kind):
    """Cases the slow run found failing (dynamic and longrope RoPE), kept in the default run: now refused with
    dustin's own error (MAY_REFUSE) or equal to target.generate, never different."""
    assert draw_case(family, seed).target["rope_parameters"]["rope_type"] == kind, "the draws changed: re-pin"
    check_case(family, seed)


@pytest.mark.slow
@pytest.mark.parametrize("family, seed", _ids(range(N_FAST, N_FAST + N_SLOW)))
def test_random_configs_slow(family, seed):
    check_case(family, seed)


def test_draws_are_reproducible_and_cover_the_ranges():
    """The same (family, seed) draws the same case; the draws span the ranges the property is about."""
    assert draw_case("llama", 3).describe() == draw_case("llama", 3).describe()
    cases = [draw_case(f, s) for f in FAMILIES for s in range(200)]
    ratios = {c.target["num_attention_heads"] // c.target["num_key_value_heads"] for c in cases}
    assert ratios == set(range(1, 9))
    rope = {(c.family, c.target["rope_parameters"]["rope_type"]) for c in cases}
    assert rope == {(f, k) for f in FAMILIES for k in ROPE_TYPES[f]}
    assert {c.target["tie_word_embeddings"] for c in cases} == {True, False}
    assert any(c.target.get("sliding_window") and c.target["sliding_window"] < max(c.lengths) for c in cases
               if c.family in ("mistral", "phi3", "qwen2", "qwen3"))
