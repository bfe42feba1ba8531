"""Exact mode under sampling with selections that read this iteration's drafted tokens (docs/design.md, "Why exact
is lossless"): a hand-built pair on which such a selection biases the output unless it is held back one iteration.

The pair (8 tokens, one layer, weights set by hand, rotary made inert by a huge ``rope_theta``):

- ``FILL`` → ``Z1`` → ``Z2`` → ``Z3`` is deterministic (target and draft), ``Z3`` → an answer ``A0..A3``, an
  answer → ``FILL``. So the new tokens are ``Z1 Z2 Z3 a FILL Z1 Z2 Z3 a'``: positions 4 and 9 are random.
- Target head 0 (the *reader*): a constant query that attends to the cached answer tokens and writes their identity
  into the answer logits. Densely it reads every answer of the prompt (A0 four times, A1..A3 once: p ≈ .39/.20/.20/
  .20); when the sparse selection shows it a single answer A_b, it predicts A_b with p~ ≈ 0.6.
- Head 1 (the *pointer*, in the target and the draft; its value is zero): the query of answer A_b attends to the
  cached copies of A_b; the other tokens' queries are zero (uniform attention). It is the draft's only score head,
  and part of the oracle's sum.
- The draft proposes an answer after ``Z3`` from a fixed q = (.55, .15, .15, .15).

With gamma 2 the first (dense) iteration commits ``Z1 Z2 Z3``; the next drafts d1 = an answer. The budget leaves a
single free position (n_sink=1, window=1, budget=3): the lookahead (rows ``Z2``, ``Z3`` uniform, row d1 pointing at
A_{d1}) and the oracle (verification rows ``Z3, d1, FILL``) both select the position of A_{d1}. Without the
hold-back the proposal therefore chooses the view that confirms it: d1 is accepted with p~_{d1}(d1)/q(d1) ≥ 1, and
the dense check, which takes it for a draw from p~_{d1}, only partly undoes that (``_biased_law``: answer A0 at
≈ 0.55 instead of 0.39, total variation 0.16). Held back, the selection of that iteration is fixed before d1 is
drawn, and the next answer (position 9) is verified under a selection held from earlier iterations.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoConfig, AutoModelForCausalLM

import dustin
import dustin.driver
from dustin.profile import DustinProfile, config_hash

VOCAB = 8
FILL, Z1, Z2, Z3 = 0, 1, 2, 3
ANSWERS = [4, 5, 6, 7]
A0, A1, A2, A3 = ANSWERS
PROMPT = [FILL, A0, FILL, A1, A0, FILL, A2, A0, FILL, A3, A0, FILL, FILL]
NEW = 9  # Z1 Z2 Z3 a FILL Z1 Z2 Z3 a'
RANDOM = (3, 8)  # 0-based indices of the answer positions among the new tokens (tokens 4 and 9)
DETERMINISTIC = {0: Z1, 1: Z2, 2: Z3, 4: FILL, 5: Z1, 6: Z2, 7: Z3}
N = 1000  # rows of one generate call: the pre-fix bias moves the chi-square statistic by ~0.11 N (~108 here)
GAMMA = 2
Q = (0.55, 0.15, 0.15, 0.15)  # the draft's proposal after Z3
LOOKAHEAD_SELECTORS = ["dustin", "draft", "oracle"]

# Hidden dimensions of the hand-built models (every embedding has norm 2, so RMSNorm multiplies it by exactly 2).
CONST, ANSWER_ID, INFO, READ, NEXT, PAD = 0, 1, 5, 6, 10, 15  # ANSWER_ID..+3, READ..+3, NEXT..+4 (→FILL..→answer)
HEAD_DIM = 8
POINTER_DIMS = [2, 3, 6, 7]  # rotary pairs (2, 6) and (3, 7) turn by at most 1e-15 rad per position: inert
READER_DIM = 2


def _build_pair():
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=16, intermediate_size=4, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, head_dim=HEAD_DIM, rope_theta=1e30,
                               max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=FILL,
                               eos_token_id=None, pad_token_id=FILL)
    torch.manual_seed(0)
    target = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float().eval()
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()  # the MLP stays zero
        for norm in (target.model.layers[0].input_layernorm, target.model.layers[0].post_attention_layernorm,
                     target.model.norm):
            norm.weight.fill_(1.0)
        emb = target.model.embed_tokens.weight
        emb[:, CONST] = 1.0
        for i, t in enumerate([FILL, Z1, Z2, Z3]):  # "what comes next": FILL→Z1, Z1→Z2, Z2→Z3, Z3→an answer
            emb[t, NEXT + 1 + i] = 1.0
            emb[t, PAD] = math.sqrt(2)
        for b, t in enumerate(ANSWERS):
            emb[t, ANSWER_ID + b] = emb[t, INFO] = emb[t, NEXT] = 1.0  # answer b, "is an answer", →FILL
        attn = target.model.layers[0].self_attn
        # Attention logit = (2 w)(2 * 1) / sqrt(HEAD_DIM) for a query weight w on a normalised feature of value 2.
        beta, pointer = 12.0, 20.0  # logits: the reader's on any answer, the pointer's on the matching answer
        attn.q_proj.weight[READER_DIM, CONST] = beta * math.sqrt(HEAD_DIM) / 4  # head 0: constant query
        attn.k_proj.weight[READER_DIM, INFO] = 1.0
        for b in range(len(ANSWERS)):
            attn.v_proj.weight[b, ANSWER_ID + b] = 1.0  # head 0 reads the answer's identity ...
            attn.o_proj.weight[READ + b, b] = 0.1  # ... into the READ dims (small: RMSNorm stays ~linear)
        for b, d in enumerate(POINTER_DIMS):  # head 1: answer b's query meets answer b's key; value 0
            attn.q_proj.weight[HEAD_DIM + d, ANSWER_ID + b] = pointer * math.sqrt(HEAD_DIM) / 4
            attn.k_proj.weight[HEAD_DIM + d, ANSWER_ID + b] = 1.0
        lm = target.lm_head.weight
        for i, t in enumerate([FILL, Z1, Z2, Z3]):
            lm[t, NEXT + i] = 30.0
            lm[t, CONST] = -10.0
        for b, t in enumerate(ANSWERS):
            lm[t, READ + b] = 1.5 / 0.4  # logit 1.5 for the answer the reader sees alone
        draft = copy.deepcopy(target)
        draft.model.layers[0].self_attn.o_proj.weight.zero_()  # the draft reads nothing; its pointer still scores
        for b, t in enumerate(ANSWERS):
            draft.lm_head.weight[t, READ + b] = 0.0
            draft.lm_head.weight[t, NEXT + 4] = math.log(Q[b]) / 2  # after Z3: q, whatever the context
    return target, draft


@functools.cache
def _pair():
    return _build_pair()


def _compile(selector: str):
    target, draft = _pair()
    # The pointer head is the draft's only score head; the target's history head is the reader.
    profile = DustinProfile(config_hash(target), config_hash(draft), history_layer=0, history_heads=(0,),
                            draft_layers=((0, (1,)),))
    return dustin.compile(target, draft, profile=profile, mode="exact", gamma=GAMMA, budget=3, n_sink=1, window=1,
                          m=1, exact_every=1, selector=selector, backend="eager", max_length=32)


def _marginals(model, steps: int, prompt: list[int]) -> list[torch.Tensor]:
    """Exact marginal of each of the first ``steps`` tokens the dense model samples, by enumerating prefixes (those
    of probability below 1e-12 pruned: the deterministic tokens leave 4 branches per answer)."""
    out, joint = [], {(): 1.0}
    with torch.no_grad():
        for _ in range(steps):
            prefixes = list(joint)
            probs = model(torch.tensor([prompt + list(p) for p in prefixes])).logits[:, -1].double().softmax(-1)
            marginal, new_joint = torch.zeros(VOCAB, dtype=torch.float64), {}
            for i, prefix in enumerate(prefixes):
                marginal += joint[prefix] * probs[i]
                for tok in range(VOCAB):
                    weight = joint[prefix] * float(probs[i, tok])
                    if weight > 1e-12:
                        new_joint[prefix + (tok,)] = weight
            out.append(marginal)
            joint = new_joint
    return out


def _laws():
    """(p, q, sparse): at token 4, the dense target's distribution over the answers, the draft's, and ``sparse[b]``
    the target's when the selection shows it the latest A_b (sink, that position, the window, the pending Z3)."""
    target, draft = _pair()
    prefix = PROMPT + [Z1, Z2, Z3]
    with torch.no_grad():
        p = target(torch.tensor([prefix])).logits[0, -1].double().softmax(-1)[ANSWERS]
        q = draft(torch.tensor([prefix])).logits[0, -1].double().softmax(-1)[ANSWERS]
        sparse = []
        for t in ANSWERS:
            latest = max(i for i, tok in enumerate(PROMPT) if tok == t)
            ids = torch.tensor([[FILL, t, Z2, Z3]])
            pos = torch.tensor([[0, latest, len(prefix) - 2, len(prefix) - 1]])
            sparse.append(target(ids, position_ids=pos).logits[0, -1].double().softmax(-1)[ANSWERS])
    return p / p.sum(), q / q.sum(), [s / s.sum() for s in sparse]


def _biased_law(p: torch.Tensor, q: torch.Tensor, sparse: list[torch.Tensor]) -> torch.Tensor:
    """The law of token 4 when the selection is chosen from d1 (before the fix): d1 = a ~ q is verified against
    p~_a = sparse[a] (accept with min(1, p~_a(a)/q(a)), else resample from max(p~_a - q, 0)); the dense check then
    takes the committed x for a draw from p~_a: keep it with min(1, p(x)/p~_a(x)), else draw from max(p - p~_a, 0)."""
    k = len(p)
    eye = torch.eye(k, dtype=torch.float64)
    law = torch.zeros(k, dtype=torch.float64)
    for a in range(k):
        pt = sparse[a]
        accept = min(1.0, float(pt[a] / q[a]))
        residual = (pt - q).clamp_min(0)
        committed = accept * eye[a] + (1 - accept) * residual / residual.sum()
        correction = (p - pt).clamp_min(0)
        correction = correction / correction.sum()
        for x in range(k):
            keep = min(1.0, float(p[x] / pt[x]))
            law += q[a] * committed[x] * (keep * eye[x] + (1 - keep) * correction)
    return law


def _chi2_pvalue(samples: torch.Tensor, expected: torch.Tensor) -> float:
    """Chi-square goodness of fit of ``samples`` (token ids) to ``expected`` over the answers; 0 if a sample is not
    an answer. Cells expected below 5 are pooled (none are here)."""
    if not bool(torch.isin(samples, torch.tensor(ANSWERS)).all()):
        return 0.0
    counts = torch.bincount(samples - ANSWERS[0], minlength=len(ANSWERS)).double()
    expected = expected / expected.sum()
    keep = expected * len(samples) >= 5
    obs = torch.cat([counts[keep], counts[~keep].sum()[None]]).numpy()
    exp = torch.cat([expected[keep], expected[~keep].sum()[None]]).numpy() * len(samples)
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)


@functools.cache
def _expected() -> tuple[torch.Tensor, torch.Tensor]:
    """The dense target's exact marginals over the answers at tokens 4 and 9."""
    marginals = _marginals(_pair()[0], NEW, PROMPT)
    return tuple(marginals[k][ANSWERS] for k in RANDOM)


@pytest.fixture(scope="module", params=LOOKAHEAD_SELECTORS)
def compiled(request):
    """One compiled model per selector, shared by its tests (same batch shape: the graphs are captured once)."""
    return request.param, _compile(request.param)


def _sample(model) -> tuple[torch.Tensor, object]:
    ids = torch.tensor([PROMPT] * N)
    out = model.generate(ids, max_new_tokens=NEW, do_sample=True, eos_token_id=[],
                         generator=torch.Generator().manual_seed(2026))
    return out.sequences[:, len(PROMPT):], out.stats


def test_the_construction_makes_the_selection_decisive():
    """Enumeration, no dustin: which answer the selection shows decides the sparse distribution, and the pre-fix
    procedure's law of token 4 is many standard errors (at N rows) away from the target's."""
    p, q, sparse = _laws()
    torch.testing.assert_close(p, _expected()[0], atol=1e-9, rtol=0)  # the same dense law two ways
    for b, pt in enumerate(sparse):
        assert pt[b] > 0.55 and 0.5 * float((pt - p).abs().sum()) > 0.2  # the view decides
    assert p[0] < 0.4 and q[0] > p[0]  # the draft over-proposes A0, whose view confirms it
    biased = _biased_law(p, q, sparse)
    torch.testing.assert_close(biased.sum(), torch.tensor(1.0, dtype=torch.float64))
    tv = 0.5 * float((biased - p).abs().sum())
    noncentrality = N * float(((biased - p) ** 2 / p).sum())  # the chi-square statistic's mean shift, 3 dof
    assert tv > 0.12 and noncentrality > 100, (tv, noncentrality)
    # With a selection fixed before the proposal (any fixed view b), the same formula gives the target back.
    for b in range(len(ANSWERS)):
        torch.testing.assert_close(_biased_law(p, q, [sparse[b]] * len(ANSWERS)), p)


def test_exact_sampling_with_a_lookahead_selection_follows_the_target(compiled):
    selector, model = compiled
    samples, stats = _sample(model)
    assert stats.sparse_passes >= 2 and stats.rolled_back > 0  # sparse iterations ran and the check corrected them
    for k, tok in DETERMINISTIC.items():
        assert bool((samples[:, k] == tok).all()), f"token {k + 1}"
    for k, expected in zip(RANDOM, _expected()):
        assert _chi2_pvalue(samples[:, k], expected) > 1e-3, f"{selector}: token {k + 1} does not follow the target"
    # Power, on the same samples: they clearly do not follow what the pre-fix procedure produces.
    assert _chi2_pvalue(samples[:, RANDOM[0]], _biased_law(*_laws())) < 1e-6


def test_exact_greedy_with_a_lookahead_selection_equals_the_target(compiled):
    """Greedy needs no hold-back: the same selectors, prompts with different majority answers (the draft's
    argmax A0 points the selection at A0, so every other majority is corrected by the check)."""
    selector, model = compiled
    target, _ = _pair()
    g = torch.Generator().manual_seed(7)
    prompts = []
    while len(prompts) < 8:
        middle = [ANSWERS[int(i)] if int(i) < 4 else FILL for i in torch.randint(0, 6, (11,), generator=g)]
        counts = [middle.count(t) for t in ANSWERS]
        if sorted(counts)[-1] > sorted(counts)[-2]:  # a unique majority: no ties for the argmax to break
            prompts.append([FILL, *middle, FILL])
    distinct = torch.tensor(prompts)
    ids = distinct.repeat(N // len(prompts) + 1, 1)[:N]  # the sampling test's batch shape: no new graphs
    out = model.generate(ids, max_new_tokens=5, eos_token_id=[])  # Z1 Z2 Z3, the corrected answer, FILL
    with torch.no_grad():
        want = target.generate(distinct, attention_mask=torch.ones_like(distinct), max_new_tokens=5,
                               do_sample=False, pad_token_id=FILL, eos_token_id=None)
    assert out.stats.sparse_passes > 0 and out.stats.rolled_back > 0
    assert torch.equal(out.sequences[: len(prompts)], want), selector
    assert torch.equal(out.sequences, want.repeat(N // len(prompts) + 1, 1)[:N])


@pytest.mark.slow
def test_without_the_hold_back_the_same_test_fails(compiled, monkeypatch):
    """The pre-fix behaviour (signals of this iteration's drafted tokens used at once): token 4 follows the
    predicted biased law, not the target's."""
    selector, model = compiled
    monkeypatch.setattr(dustin.driver.Generation, "hold_back", lambda self, name, scores: scores)
    samples, _ = _sample(model)
    k = RANDOM[0]
    assert _chi2_pvalue(samples[:, k], _expected()[0]) < 1e-6, selector
    assert _chi2_pvalue(samples[:, k], _biased_law(*_laws())) > 1e-3, selector
