"""The vLLM plugin skeleton (examples/serving/dustin_vllm_plugin.py, docs/serving.md): it imports without vLLM, says
clearly that vLLM is missing when asked for the plugin, its pure-torch paged-cache helpers agree with dustin's ops on
the same K/V laid out contiguously (random block tables, CPU), and its vLLM-facing classes, built on stand-ins for
vLLM's base classes (not vLLM), run one prefill → draft → sparse verification step that dustin's ops reproduce."""

from __future__ import annotations

import ast
import enum
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import dustin.kernels as dk

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "serving" / "dustin_vllm_plugin.py"
HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("dustin_vllm_plugin", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_vllm_is_imported_only_inside_functions():
    tree = ast.parse(PLUGIN.read_text(encoding="utf-8"))
    for node in tree.body:  # module level, including try/if blocks at module level
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            names = ([a.name for a in sub.names] if isinstance(sub, ast.Import)
                     else [sub.module or ""] if isinstance(sub, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "vllm" for n in names), f"module-level vllm import at line {sub.lineno}"


def test_imports_and_exposes_the_entry_point(plugin):
    assert callable(plugin.register)
    assert issubclass(plugin.VLLMNotInstalled, ImportError)
    doc = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    assert '"vllm.general_plugins"' in doc and "dustin_vllm_plugin:register" in doc


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the missing-vLLM message cannot be shown")
def test_without_vllm_the_plugin_says_so(plugin):
    with pytest.raises(plugin.VLLMNotInstalled, match="vLLM is not installed"):
        plugin.register()
    with pytest.raises(ImportError, match="pip install vllm"):
        plugin.DustinAttentionBackend  # noqa: B018 (the lazy class lookup is what is tested)
    with pytest.raises(AttributeError):
        plugin.NoSuchThing  # noqa: B018


def _paged_layout(generator, requests, max_blocks, block_size, spare=3):
    """A random block table: every request gets max_blocks distinct physical blocks, shuffled, with spare blocks
    nobody owns."""
    num_blocks = requests * max_blocks + spare
    order = torch.randperm(num_blocks, generator=generator)
    return order[: requests * max_blocks].view(requests, max_blocks).to(torch.int32), num_blocks


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_logical_to_slots_matches_a_loop(plugin, block_size):
    g = torch.Generator().manual_seed(block_size)
    table, _ = _paged_layout(g, 4, 5, block_size)
    positions = torch.randint(0, 5 * block_size, (4, 9), generator=g)
    positions[torch.rand(4, 9, generator=g) < 0.3] = -1
    slots = plugin.logical_to_slots(positions, table, block_size)
    for r in range(4):
        for k in range(9):
            p = int(positions[r, k])
            expected = -1 if p < 0 else int(table[r, p // block_size]) * block_size + p % block_size
            assert int(slots[r, k]) == expected
    with pytest.raises(ValueError, match="block table"):
        plugin.logical_to_slots(torch.tensor([[5 * block_size]]), table[:1], block_size)


def _filled_paged_cache(plugin, g, k_cont, v_cont, lengths, block_size):
    """Write the contiguous caches ``[R, Hkv, S, D]`` (positions < lengths) into a paged cache via slot mapping."""
    requests, heads, span, dim = k_cont.shape
    max_blocks = -(-span // block_size)
    table, num_blocks = _paged_layout(g, requests, max_blocks, block_size)
    k_paged = torch.full((num_blocks, block_size, heads, dim), float("nan"))
    v_paged = torch.full_like(k_paged, float("nan"))
    for r in range(requests):
        n = int(lengths[r])
        slots = plugin.logical_to_slots(torch.arange(n)[None], table[r:r + 1], block_size)[0]
        mapping = torch.cat([slots, torch.tensor([-1])])  # a padded token (slot -1) is skipped
        rows_k = torch.cat([k_cont[r, :, :n].transpose(0, 1), torch.zeros(1, heads, dim)])
        rows_v = torch.cat([v_cont[r, :, :n].transpose(0, 1), torch.zeros(1, heads, dim)])
        plugin.write_kv_to_paged_cache(rows_k, rows_v, k_paged, v_paged, mapping)
    return k_paged, v_paged, table


def test_write_then_gather_round_trip(plugin):
    g = torch.Generator().manual_seed(1)
    k_cont, v_cont = torch.randn(3, 2, 20, 4, generator=g), torch.randn(3, 2, 20, 4, generator=g)
    lengths = torch.tensor([20, 7, 13])
    k_paged, v_paged, table = _filled_paged_cache(plugin, g, k_cont, v_cont, lengths, 4)
    positions = torch.tensor([[0, 19, 5, -1], [6, -1, 0, 3], [12, 1, 2, 11]])
    slots = plugin.logical_to_slots(positions, table, 4)
    got = plugin.gather_paged(k_paged, slots)  # [R, Hkv, K, D]
    for r in range(3):
        for k in range(4):
            p = int(positions[r, k])
            expected = torch.zeros(2, 4) if p < 0 else k_cont[r, :, p]
            torch.testing.assert_close(got[r, :, k], expected, rtol=0, atol=0)


def _verification_batch(g, q_lens, starts, hq=4, hkv=2, dim=8, span=40):
    requests = len(q_lens)
    k_cont = torch.randn(requests, hkv, span, dim, generator=g)
    v_cont = torch.randn(requests, hkv, span, dim, generator=g)
    query_start_loc = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()])
    padding = 2  # vLLM pads the token axis; those rows must come back as zeros
    query = torch.randn(int(query_start_loc[-1]) + padding, hq, dim, generator=g)
    starts = torch.tensor(starts)
    seq_lens = starts + torch.tensor(q_lens)  # vLLM's convention: cached + new
    return k_cont, v_cont, query, query_start_loc, seq_lens, starts


@pytest.mark.parametrize("dense", [False, True])
def test_paged_sparse_attention_matches_dustin_on_a_contiguous_cache(plugin, dense):
    g = torch.Generator().manual_seed(2 + dense)
    q_lens, starts = [3, 1, 3, 5, 2], [17, 30, 9, 4, 0 if dense else 12]
    k_cont, v_cont, query, qsl, seq_lens, starts_t = _verification_batch(g, q_lens, starts)
    k_paged, v_paged, table = _filled_paged_cache(plugin, g, k_cont, v_cont, seq_lens, 4)
    budget = 6
    indices = torch.full((len(q_lens), budget), -1)
    for r, start in enumerate(starts):
        chosen = torch.randperm(start, generator=g)[: min(start, budget - 1)]
        slots = torch.randperm(budget, generator=g)[: chosen.numel()]  # padding anywhere, unsorted
        indices[r, slots] = chosen
    out = plugin.paged_sparse_attention(query, k_paged, v_paged, table, qsl, seq_lens,
                                        None if dense else indices, scale=0.3)
    for r, t in enumerate(q_lens):
        q = query[int(qsl[r]):int(qsl[r]) + t].permute(1, 0, 2)[None]  # [1, Hq, t, D]
        start = starts_t[r:r + 1]
        if dense:
            ref = dk.dense_attention(q, k_cont[r:r + 1], v_cont[r:r + 1], start, scale=0.3)
        else:
            ref = dk.sparse_attention(q, k_cont[r:r + 1], v_cont[r:r + 1], indices[r:r + 1], start, scale=0.3)
        torch.testing.assert_close(out[int(qsl[r]):int(qsl[r]) + t], ref[0].permute(1, 0, 2), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[int(qsl[-1]):], torch.zeros_like(out[int(qsl[-1]):]))


def test_slot_score_buffers_follow_the_block_table(plugin):
    g = torch.Generator().manual_seed(4)
    table, num_blocks = _paged_layout(g, 3, 4, 5)
    lengths = torch.tensor([20, 3, 11])
    scores = torch.rand(3, 20, generator=g)
    buffer = torch.zeros(num_blocks * 5)
    plugin.add_slot_scores(buffer, scores, table, lengths, 5)
    plugin.add_slot_scores(buffer, scores, table, lengths, 5)  # accumulates, like the γ draft steps
    mask = torch.arange(20)[None] < lengths[:, None]
    expected = torch.where(mask, 2 * scores, torch.zeros(()))
    torch.testing.assert_close(plugin.gather_slot_scores(buffer, table, lengths, 5, 20, clear=True), expected)
    assert torch.count_nonzero(buffer) == 0  # read once, then cleared


def test_slot_state_selects_what_dustin_selects_on_contiguous_scores(plugin):
    g = torch.Generator().manual_seed(5)
    q_lens, starts = [5, 5, 5], [37, 12, 26]
    hq, hkv, dim, block_size = 4, 2, 8, 4
    k_cont, _, _, _, seq_lens, starts_t = _verification_batch(g, q_lens, starts, hq, hkv, dim, span=48)
    k_paged, _, table = _filled_paged_cache(plugin, g, k_cont, k_cont, seq_lens, block_size)
    settings = plugin.ServingSettings(budget=16, n_sink=2, window=4, m=4, history_heads=[2, 3])
    state = plugin.SlotState(settings)
    assert state.select(table, starts_t, block_size) is None  # nothing recorded yet: dense
    state.ensure(k_paged.shape[0] * block_size, 2, dim, None, torch.float32)
    state.history_keys, state.history_group = k_paged, 1  # query heads 2 and 3 read KV head 1
    q_full = torch.zeros(3, hq, 1, dim)
    q_full[:, 2:] = torch.randn(3, 2, 1, dim, generator=g)
    last = plugin.logical_to_slots((starts_t - 1)[:, None], table, block_size)[:, 0]
    state.qstar[last] = q_full[:, 2:, 0]
    lookahead = torch.rand(3, 48, generator=g)
    plugin.add_slot_scores(state.lookahead, lookahead, table, starts_t, block_size)
    selection = state.select(table, starts_t, block_size, clear_until=seq_lens)

    history = dk.score_heads(q_full, k_cont, starts_t, [2, 3])
    masked = torch.where(torch.arange(48)[None] < starts_t[:, None], lookahead, torch.zeros(()))
    expected = dk.select_tokens(masked, history, starts_t, budget=16, n_sink=2, window=4, m=4)
    assert torch.equal(selection, expected)
    assert torch.count_nonzero(state.lookahead) == 0  # lookahead is used once
    assert state.select(table, torch.tensor([9, 3, 16]), block_size) is None  # every row within budget: dense


def _stub_vllm(monkeypatch):
    """Stand-ins for the few vLLM names the sketch imports (the newer module layout). They are NOT vLLM: they let the
    sketch's classes be built and run on CPU; whether they fit the real vLLM is what the sketch does not claim."""
    registered = []
    abstract = types.ModuleType("vllm.v1.attention.backend")
    abstract.AttentionBackend = type("AttentionBackend", (), {})
    abstract.AttentionImpl = type("AttentionImpl", (), {})
    abstract.AttentionMetadataBuilder = type("AttentionMetadataBuilder", (), {})
    abstract.AttentionCGSupport = enum.Enum("AttentionCGSupport", "NEVER ALWAYS")
    registry = types.ModuleType("vllm.v1.attention.backends.registry")
    registry.AttentionBackendEnum = enum.Enum("AttentionBackendEnum", "FLASH_ATTN CUSTOM")
    registry.register_backend = lambda backend, class_path=None: registered.append((backend.name, class_path))
    for name in ("vllm", "vllm.v1", "vllm.v1.attention", "vllm.v1.attention.backends"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, abstract.__name__, abstract)
    monkeypatch.setitem(sys.modules, registry.__name__, registry)
    return registered


def _metadata_input(q_lens, starts, table, block_size):
    q_lens, starts = torch.tensor(q_lens), torch.tensor(starts)
    qsl = torch.cat([torch.zeros(1, dtype=torch.long), q_lens.cumsum(0)])
    positions = [torch.arange(int(s), int(s) + int(t)) for s, t in zip(starts, q_lens)]
    slots = torch.cat([torch.tensor([int(table[r, p // block_size]) * block_size + p % block_size
                                     for p in pos.tolist()]) for r, pos in enumerate(positions)])
    return types.SimpleNamespace(query_start_loc=qsl, query_start_loc_cpu=qsl, seq_lens=starts + q_lens,
                                 block_table_tensor=table, slot_mapping=slots, num_actual_tokens=int(qsl[-1]),
                                 max_query_len=int(q_lens.max()))


def test_sketch_classes_run_a_verification_step_against_stand_ins(monkeypatch):
    """Prefill (dense) → draft forward (lookahead tap) → verification (selection in the builder, sparse attention in
    every layer's forward), through the sketch's builder and impl, compared with dustin's ops on contiguous K/V."""
    registered = _stub_vllm(monkeypatch)
    monkeypatch.setenv("DUSTIN_VLLM_CONFIG", json.dumps({
        "budget": 8, "n_sink": 2, "window": 2, "m": 2, "history_layer": 0, "history_heads": [2, 3],
        "draft_score_layers": {"0": [0]}}))
    spec = importlib.util.spec_from_file_location("dustin_vllm_plugin_stubbed", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, plugin)
    spec.loader.exec_module(plugin)
    plugin.register()
    assert registered == [("CUSTOM", "dustin_vllm_plugin_stubbed.DustinAttentionBackend")]
    backend = plugin.DustinAttentionBackend
    assert backend.get_name() == "CUSTOM" and backend.get_kv_cache_shape(10, 4, 2, 8) == (2, 10, 4, 2, 8)

    g = torch.Generator().manual_seed(6)
    hq, hkv, dim, bs, gamma, prompts = 4, 2, 8, 4, 3, [20, 13]
    table = torch.randperm(20, generator=g)[:16].view(2, 8).to(torch.int32)
    config = types.SimpleNamespace(speculative_config=types.SimpleNamespace(num_speculative_tokens=gamma))
    kv_spec = types.SimpleNamespace(block_size=bs)
    target_name, draft_name = "model.layers.0.self_attn.attn", "draft_model.model.layers.0.self_attn.attn"
    target_builder = backend.get_builder_cls()(kv_spec, [target_name], config, "cpu")
    draft_builder = backend.get_builder_cls()(kv_spec, [draft_name], config, "cpu")
    impl = backend.get_impl_cls()(num_heads=hq, head_size=dim, scale=0.35, num_kv_heads=hkv)
    caches = {name: torch.zeros(2, 20, bs, hkv, dim) for name in (target_name, draft_name)}
    contiguous = {name: torch.zeros(2, 2, hkv, 32, dim) for name in (target_name, draft_name)}  # [K/V, R, Hkv, S, D]

    def run(name, builder, q_lens, starts):
        md = builder.build(0, _metadata_input(q_lens, starts, table, bs))
        n = sum(q_lens)
        q, k, v = (torch.randn(n, h, dim, generator=g) for h in (hq, hkv, hkv))
        for r, (s, t) in enumerate(zip(starts, q_lens)):  # the same K/V, laid out contiguously
            rows = slice(sum(q_lens[:r]), sum(q_lens[:r]) + t)
            contiguous[name][0, r, :, s:s + t] = k[rows].transpose(0, 1)
            contiguous[name][1, r, :, s:s + t] = v[rows].transpose(0, 1)
        out = torch.zeros(n + 1, hq, dim)  # one padded token row, as vLLM allocates
        impl.forward(types.SimpleNamespace(layer_name=name), q, k, v, caches[name], md, out)
        return md, q, out

    _, q_prefill, out = run(target_name, target_builder, prompts, [0, 0])
    keys, values = contiguous[target_name]
    for r, s in enumerate([0, 20]):
        q = q_prefill[s:s + prompts[r]].permute(1, 0, 2)[None]
        ref = dk.dense_attention(q, keys[r:r + 1], values[r:r + 1], torch.tensor([0]), scale=0.35)
        torch.testing.assert_close(out[s:s + prompts[r]], ref[0].permute(1, 0, 2), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[-1], torch.zeros(hq, dim))  # the padded token row is left alone
    _, q_draft, _ = run(draft_name, draft_builder, prompts, [0, 0])
    md, q_verify, out = run(target_name, target_builder, [gamma + 1] * 2, prompts)

    starts = torch.tensor(prompts)
    visible = starts - 1  # the draft's last prompt row scored the positions before it
    lookahead = dk.score_heads(q_draft[[19, 32]][:, :, None], contiguous[draft_name][0], visible, [0])
    lookahead = torch.where(torch.arange(32)[None] < starts[:, None], lookahead, torch.zeros(()))
    qstar = torch.zeros(2, hq, 1, dim)
    qstar[:, 2:, 0] = q_prefill[[19, 32]][:, 2:]
    history = dk.score_heads(qstar, contiguous[target_name][0], starts, [2, 3])
    expected = dk.select_tokens(lookahead, history, starts, budget=8, n_sink=2, window=2, m=2)
    assert md.selection is not None and torch.equal(md.selection, expected)
    ref = dk.sparse_attention(q_verify.view(2, gamma + 1, hq, dim).transpose(1, 2), contiguous[target_name][0],
                              contiguous[target_name][1], expected, starts, scale=0.35)
    torch.testing.assert_close(out[:2 * (gamma + 1)], ref.transpose(1, 2).reshape(-1, hq, dim), rtol=1e-5, atol=1e-5)
