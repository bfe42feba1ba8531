"""dustin.export: the exported programs hold the rewrite, equal the in-process steps, round-trip through
torch.export.save/load, and the runner decodes exactly what DustinModel.generate (and the target alone) decode."""

from __future__ import annotations

import os

import pytest
import torch

import dustin
from dustin import PassError
from dustin.exported import ExportedDustin
from dustin.tiny import TINY_CONFIG, tiny_pair
from helpers import hf_greedy, left_padded, random_prompts

GAMMA, NEW = 3, 12
SETTINGS = dict(backend="eager", gamma=GAMMA, budget=24, n_sink=2, window=6, exact_every=4, max_length=128)
CONFIG = {**TINY_CONFIG, "num_hidden_layers": 4}
OPS = torch.ops.dustin


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(3, CONFIG)


@pytest.fixture(scope="module")
def prompts():
    return left_padded(random_prompts([41, 29], vocab=CONFIG["vocab_size"], seed=5))


@pytest.fixture(scope="module")
def exported(pair, prompts):
    """One bundle per mode (exporting costs seconds per program), with the model it came from."""
    ids, mask = prompts
    found = {}

    def get(mode: str) -> tuple[dustin.DustinModel, ExportedDustin]:
        if mode not in found:
            model = dustin.compile(*pair, mode=mode, dense_layers=(1,), **SETTINGS)
            found[mode] = model, dustin.export(model, ids, mask, max_new_tokens=NEW)
        return found[mode]

    return get


def _targets(program: torch.export.ExportedProgram) -> list:
    """Op names (``dustin::sparse_attention``, ``aten::mm``, ...) of the program's calls."""
    return [n.target.name() if isinstance(n.target, torch._ops.OpOverload) else str(n.target)
            for n in program.graph.nodes if n.op == "call_function"]


def test_verify_program_holds_the_rewrite(exported):
    model, bundle = exported("sparse")
    targets = _targets(bundle.programs["verify"])
    layers = CONFIG["num_hidden_layers"]
    assert targets.count(OPS.sparse_attention.default.name()) == layers - 1  # layer 1 stays dense
    assert targets.count(OPS.dense_attention.default.name()) == 1
    assert not any("scaled_dot_product" in t for t in targets)
    allowed = {op.name() for op in dustin.passes.EXPORT_OPS}
    custom = {t for t in targets if "::" in t and not t.startswith("aten::")}
    assert custom <= allowed, f"only aten and dustin's export ops, found {custom - allowed}"
    # The saved IR keeps the writes as in-place aten ops on the inputs; functionalized (what TensorRT and
    # AOTInductor take), they become the signature's user-input mutations: every cache and the query tap.
    signature = bundle.programs["verify"].run_decompositions().graph_signature
    inputs = bundle.manifest["programs"]["verify"]["inputs"]
    placeholders = [spec.arg.name for spec in signature.input_specs if spec.kind.name == "USER_INPUT"]
    assert len(placeholders) == len(inputs)
    by_placeholder = dict(zip(placeholders, inputs))
    mutated = {by_placeholder[name] for name in signature.user_inputs_to_mutate.values()}
    assert mutated == {f"{k}_cache_{i}" for i in range(layers) for k in "kv"} | {"dustin_query_record"}
    assert "dustin_indices" in inputs
    draft_targets = _targets(bundle.programs["draft_1"])
    assert OPS.score_heads_t.default.name() in draft_targets  # the portable score tap, not the mutating one
    assert OPS.score_heads_into.default.name() not in draft_targets


def test_verify_program_equals_the_in_process_step(exported, prompts):
    """Random cache contents, selection and tokens: the exported program and the compiled in-process step give the
    same logits, write the same K/V and record the same queries."""
    model, bundle = exported("sparse")
    ids, mask = prompts
    model.generate(ids, mask, max_new_tokens=2)  # builds the in-process state and graphs at the same shapes
    generator = torch.Generator().manual_seed(0)
    mine, theirs = model.state, bundle.state
    for a, b in zip(mine.caches.target.layers, theirs.caches.target.layers):
        a.keys.copy_(torch.randn(a.keys.shape, generator=generator))
        a.values.copy_(torch.randn(a.values.shape, generator=generator))
        b.keys.copy_(a.keys), b.values.copy_(a.values)
    seq_lens = torch.tensor([70, 33])
    for state in (mine, theirs):
        state.indices.fill_(-1)
    for row, n in enumerate(seq_lens.tolist()):
        chosen = torch.randperm(n, generator=generator)[:20].sort().values
        mine.indices[row, :20] = chosen
    theirs.indices.copy_(mine.indices)
    tokens = torch.randint(0, CONFIG["vocab_size"], (2, GAMMA + 1), generator=generator)
    pos = seq_lens[:, None] + torch.arange(GAMMA + 1)
    with torch.no_grad():
        want = model.graph("verify", GAMMA + 1)(tokens, pos, seq_lens.clone())
        got = bundle.graph("verify", GAMMA + 1)(tokens, pos, seq_lens.clone())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(mine.caches.target.layers, theirs.caches.target.layers):
        torch.testing.assert_close(b.keys, a.keys, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bundle.query_record("verify", GAMMA + 1), model.query_record("verify", GAMMA + 1))
    mine.caches.prefilled = theirs.caches.prefilled = None  # the random contents are no prompt's: prefill again


@pytest.mark.parametrize("mode", ["dense", "sparse", "exact"])
def test_runner_decodes_what_generate_decodes(exported, prompts, pair, mode):
    """Ragged left-padded batch, greedy: the exported runner == DustinModel.generate, and in the lossless modes ==
    the target's own greedy decoding (transformers)."""
    model, bundle = exported(mode)
    ids, mask = prompts
    got = bundle.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences
    want = model.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences
    assert torch.equal(got, want)
    if mode != "sparse":
        assert torch.equal(got, hf_greedy(pair[0], ids, mask, NEW, eos_token_id=[]))


def test_save_load_round_trip(exported, prompts, tmp_path):
    model, bundle = exported("exact")
    ids, mask = prompts
    bundle.save(tmp_path / "bundle")
    names = sorted(os.listdir(tmp_path / "bundle"))
    assert names == sorted(["manifest.json", *(f"{role}.pt2" for role in bundle.programs)])
    loaded = dustin.load_exported(tmp_path / "bundle")
    assert sorted(loaded.programs) == sorted(bundle.programs)
    got = loaded.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences
    want = model.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences
    assert torch.equal(got, want)
    bundle.save(tmp_path / "bundle")  # overwriting a bundle is allowed
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # and leaves no temporary directory behind


def test_a_failed_save_leaves_nothing(exported, tmp_path, monkeypatch):
    _, bundle = exported("dense")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.export, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        bundle.save(tmp_path / "bundle")
    assert os.listdir(tmp_path) == []


def test_bad_paths_and_shapes_are_refused(exported, prompts, tmp_path):
    _, bundle = exported("dense")
    ids, mask = prompts
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        dustin.load_exported(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a dustin bundle"):
        bundle.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="exported for batch 2"):
        bundle.generate(ids[:1], mask[:1], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_length=128"):
        bundle.generate(ids, mask, max_new_tokens=100)


def test_export_arguments_are_checked(pair, prompts):
    ids, mask = prompts
    model = dustin.compile(*pair, mode="sparse", **SETTINGS)
    with pytest.raises(ValueError, match="`roles` must be a non-empty subset"):
        dustin.export(model, ids, mask, roles=("verify", "decode"))
    with pytest.raises(ValueError, match="`max_length`=16 cannot hold"):
        dustin.export(model, ids, mask, max_length=16)
    with pytest.raises(ValueError, match="selector='oracle' needs one"):
        dustin.export(model.with_config(selector="oracle"), ids, mask)
    partial = dustin.export(model, ids, mask, roles=("verify",))
    assert sorted(partial.programs) == ["verify", "verify_dense"]
    with pytest.raises(ValueError, match=r"has no \['draft_1', 'draft_2', 'prefill_draft', 'prefill_target'\] prog"):
        partial.generate(ids, mask, max_new_tokens=4)


def test_a_model_the_pass_refuses_is_refused_by_export_too(prompts):
    """A target switched to eager attention after compile (no SDPA left to rewrite): export raises the PassError
    generate raises."""
    target, draft = tiny_pair(1)
    ids, mask = prompts
    model = dustin.compile(target, draft, mode="sparse", **SETTINGS)
    target.set_attn_implementation("eager")
    with pytest.raises(PassError) as by_generate:
        model.generate(ids, mask, max_new_tokens=2)
    with pytest.raises(PassError) as by_export:
        dustin.export(model, ids, mask)
    assert "attn_implementation='sdpa'" in str(by_export.value)
    assert str(by_export.value).splitlines()[0] == str(by_generate.value).splitlines()[0]


def test_a_self_draft_bundle_shares_one_cache(prompts):
    """Self-speculation exported: the draft programs read and write the target's caches; tokens == generate."""
    target, _ = tiny_pair(4, CONFIG)
    ids, mask = prompts
    model = dustin.compile(target, mode="exact", draft_layers=(0, 2), **SETTINGS)
    bundle = dustin.export(model, ids, mask, max_new_tokens=NEW)
    assert "prefill_draft" not in bundle.programs  # the self-draft reads the target's prefilled cache
    got = bundle.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences
    assert bundle.state.caches.shared
    assert torch.equal(got, model.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences)
