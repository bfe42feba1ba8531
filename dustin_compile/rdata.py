"""Read R data without R: the XDR serialisation format, R's lazy-load databases, and Debian ``.deb`` archives.

Just enough of R's ``serialize()`` format (versions 2 and 3, XDR) to read the data R packages ship: vectors
(character, integer, logical, double, raw, list), pairlists, attributes, symbols and references. R objects come
back as :class:`RVector` (a ``list`` with ``rtype`` and ``attributes``); ``NA`` is ``None`` except in double
vectors, where it stays a NaN. A lazy-load database is the ``.rdx`` index (a compressed serialised list) plus the
``.rdb`` file of separately compressed records; :class:`LazyLoadDB` reads one object by name.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import io
import lzma
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

from .errors import DustinError


class RFormatError(DustinError, ValueError):
    """Bytes that are not R serialisation (or use a part of it this reader does not implement)."""


class RVector(list):
    """An R vector or pairlist: the elements as a Python list, plus R's type name and attributes."""

    def __init__(self, items: list, rtype: str, attributes: dict[str, Any] | None = None) -> None:
        super().__init__(items)
        self.rtype = rtype
        self.attributes = attributes or {}

    @property
    def names(self) -> list[str] | None:
        return self.attributes.get("names")

    def to_dict(self) -> dict[str, Any]:
        """A named list as a dict (``names`` attribute → elements)."""
        if self.names is None:
            raise RFormatError(f"this R {self.rtype} has no names attribute, so it cannot be read as a dict")
        return dict(zip(self.names, self))


class RSymbol(str):
    """An R symbol (a name), kept apart from character strings."""


NA_INTEGER = -(2**31)
_VECTOR_TYPES = {10: "logical", 13: "integer", 14: "double", 16: "character", 19: "list", 20: "expression",
                 24: "raw"}
_PAIRLIST_TYPES = {2: "pairlist", 6: "language", 3: "closure", 5: "promise", 17: "dots"}
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10
_UTF8, _LATIN1, _BYTES = 1 << 3, 1 << 2, 1 << 1


class _Reader:
    """One pass over one serialised object; ``refs`` is R's reference table (symbols, environments)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = memoryview(data), 0, []
        self.native = "utf-8"  # the encoding of strings flagged neither UTF-8 nor latin-1 (version 2 never says)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RFormatError(f"R serialisation ends early: wanted {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(chunk)

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper and lower halves
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RFormatError("not R XDR serialisation: expected the 'X\\n' header (ascii/native are not read)")
        version = self.int()
        if version not in (2, 3):
            raise RFormatError(f"R serialisation version {version} is not supported (2 and 3 are)")
        self.take(8)  # the writer's R version and the minimal reader version
        if version == 3:
            name = self.take(self.int()).decode("ascii", errors="replace")
            with contextlib.suppress(LookupError):
                self.native = codecs.lookup(name).name

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        if kind in _PAIRLIST_TYPES:
            return self.pairlist(flags)
        value = self.special(kind, flags) if kind >= 238 else self.plain(kind, flags)
        if flags & _HAS_ATTR and kind in _VECTOR_TYPES:
            value.attributes = self.attributes()
        return value

    def special(self, kind: int, flags: int) -> Any:
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP: index into the reference table, packed in the flags or following them
            index = (flags >> 8) or self.int()
            return self.refs[index - 1]
        if kind in (253, 252, 251, 250, 242, 241):  # global/base/empty env, unbound value, missing arg
            return RSymbol(f"<{kind}>")
        if kind in (249, 248, 247):  # namespace, package, persistent (lazy-load environment) references
            if self.int() != 0:
                raise RFormatError("unexpected flags in an R namespace/persistent reference")
            name = RSymbol("<ref " + " ".join(self.strings(self.int())) + ">")
            self.refs.append(name)
            return name
        if kind == 238:  # ALTREP_SXP: class info, state, attributes
            return self.altrep()
        raise RFormatError(f"R serialisation item type {kind} is not supported by this reader")

    def plain(self, kind: int, flags: int) -> Any:
        if kind == 1:  # SYMSXP: a CHARSXP follows; later uses are REFSXPs
            symbol = RSymbol(self.item())
            self.refs.append(symbol)
            return symbol
        if kind == 9:
            return self.charsxp(flags)
        if kind in (10, 13):
            values = struct.unpack(f">{(n := self.length())}i", self.take(4 * n))
            cast = bool if kind == 10 else int
            return RVector([None if v == NA_INTEGER else cast(v) for v in values], _VECTOR_TYPES[kind])
        if kind == 14:
            return RVector(list(struct.unpack(f">{(n := self.length())}d", self.take(8 * n))), "double")
        if kind == 16:
            return RVector(self.strings(self.length()), "character")
        if kind in (19, 20):
            return RVector([self.item() for _ in range(self.length())], _VECTOR_TYPES[kind])
        if kind == 24:
            return RVector(list(self.take(self.length())), "raw")
        raise RFormatError(f"R serialisation item type {kind} is not supported by this reader")

    def charsxp(self, flags: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        levels = flags >> 12
        if levels & _BYTES:
            return raw.decode("latin-1")  # raw bytes: keep every byte, one char each
        encoding = "utf-8" if levels & _UTF8 else "latin-1" if levels & _LATIN1 else self.native
        return raw.decode(encoding, errors="replace")

    def strings(self, n: int) -> list[str | None]:
        out = []
        for _ in range(n):
            flags = self.int()
            if flags & 0xFF != 9:
                raise RFormatError(f"a character vector holds item type {flags & 0xFF}, expected CHARSXP (9)")
            out.append(self.charsxp(flags))
        return out

    def pairlist(self, flags: int) -> RVector:
        # Read iteratively along the CDR chain: a long pairlist would overflow Python's stack if read recursively.
        items, tags, attributes, rtype = [], [], None, _PAIRLIST_TYPES[flags & 0xFF]
        while True:
            if flags & _HAS_ATTR:
                cell_attributes = self.attributes()
                attributes = attributes if attributes is not None else cell_attributes
            tags.append(str(self.item()) if flags & _HAS_TAG else "")
            items.append(self.item())
            flags = self.int()
            if flags & 0xFF not in _PAIRLIST_TYPES:
                self.pos -= 4
                tail = self.item()
                if tail is not None:
                    raise RFormatError("an R pairlist ends in something other than NULL (a dotted pair)")
                break
        out = RVector(items, rtype, attributes)
        if any(tags):
            out.attributes["names"] = tags
        return out

    def attributes(self) -> dict[str, Any]:
        attributes = self.item()
        if not isinstance(attributes, RVector) or attributes.names is None:
            raise RFormatError("R attributes are not a tagged pairlist")
        return {name: value for name, value in zip(attributes.names, attributes)}

    def altrep(self) -> RVector:
        info, state, attributes = self.item(), self.item(), self.item()
        name = str(info[0])
        if name == "compact_intseq":  # state: (length, start, step) as doubles
            n, start, step = (int(v) for v in state)
            value = RVector([start + i * step for i in range(n)], "integer")
        elif name in ("wrap_integer", "wrap_logical", "wrap_real", "wrap_string", "wrap_list", "deferred_string"):
            value = state[0]  # the wrapped vector (deferred_string keeps a number vector to format: not handled)
            if name == "deferred_string" and value.rtype != "character":
                raise RFormatError("R deferred_string ALTREP of numbers is not supported by this reader")
        else:
            raise RFormatError(f"R ALTREP class {name!r} is not supported by this reader")
        if isinstance(attributes, RVector) and attributes.names:
            value.attributes = dict(zip(attributes.names, attributes))
        return value


def unserialize(data: bytes) -> Any:
    """One R object from uncompressed XDR serialisation bytes (what ``serialize(x, NULL)`` writes)."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def decompress(data: bytes) -> bytes:
    """Undo the file compression R's ``saveRDS`` uses (gzip, bzip2, xz), or return plain bytes unchanged."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def read_rds(path: str | Path) -> Any:
    """The object an ``.rds`` file (``saveRDS``) holds."""
    return unserialize(decompress(Path(path).read_bytes()))


def decompress_record(record: bytes, compressed: int) -> bytes:
    """One ``.rdb`` record: a 4-byte big-endian length, then (for ``compress`` 2/3) a type byte, then the data."""
    size = struct.unpack(">I", record[:4])[0]
    if compressed in (2, 3):
        method, body = record[4:5], record[5:]
        data = {b"Z": lzma.decompress, b"2": bz2.decompress, b"0": bytes}[method](body)
    else:
        data = zlib.decompress(record[4:]) if compressed else record[4:]
    if len(data) != size:
        raise RFormatError(f"R lazy-load record has {len(data)} bytes, its header says {size}")
    return data


class LazyLoadDB:
    """An R lazy-load database: the ``.rdx`` index and the ``.rdb`` records (e.g. a package's ``data/Rdata``).

    ``LazyLoadDB.open("…/data/Rdata")`` reads the files; ``LazyLoadDB.from_deb(deb_bytes, "usr/lib/…/data/Rdata")``
    reads them out of a Debian package without unpacking it."""

    def __init__(self, rdx: bytes, rdb: bytes, where: str = "the .rdb") -> None:
        index = unserialize(decompress(rdx)).to_dict()
        self.rdb, self.where = rdb, where
        self.compressed = int((index.get("compressed") or [1])[0])
        self.variables = {name: tuple(int(v) for v in at) for name, at in index["variables"].to_dict().items()}

    @classmethod
    def open(cls, base: str | Path) -> "LazyLoadDB":
        return cls(Path(f"{base}.rdx").read_bytes(), Path(f"{base}.rdb").read_bytes(), f"{base}.rdb")

    @classmethod
    def from_deb(cls, deb: bytes, base: str) -> "LazyLoadDB":
        files = deb_files(deb, {f"{base}.rdx", f"{base}.rdb"})
        if len(files) != 2:
            raise RFormatError(f"the Debian package has no {base}.rdx/.rdb (an R package's lazy-load data)")
        return cls(files[f"{base}.rdx"], files[f"{base}.rdb"], f"{base}.rdb")

    def names(self) -> list[str]:
        """The object names the index lists."""
        return list(self.variables)

    def __getitem__(self, name: str) -> Any:
        if name not in self.variables:
            raise KeyError(f"{name!r} is not in {self.where}; it holds: {', '.join(self.variables)}")
        offset, length = self.variables[name]
        return unserialize(decompress_record(self.rdb[offset:offset + length], self.compressed))


def deb_members(deb: bytes) -> dict[str, bytes]:
    """The members of a Debian package's ``ar`` container (``debian-binary``, ``control.tar.*``, ``data.tar.*``)."""
    if deb[:8] != b"!<arch>\n":
        raise RFormatError("not a Debian package (no '!<arch>' ar header)")
    members, pos = {}, 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        members[name] = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def deb_files(deb: bytes, wanted: set[str]) -> dict[str, bytes]:
    """The files named in ``wanted`` (paths as in the package, e.g. ``usr/lib/...``) from a ``.deb``'s data."""
    data = next((v for k, v in deb_members(deb).items() if k.startswith("data.tar")), None)
    if data is None:
        raise RFormatError("the Debian package has no data.tar member")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:  # r:* handles gz, xz, bz2 (not zstd)
        for member in tar:
            path = member.name.removeprefix("./")
            if path in wanted and member.isfile():
                out[path] = tar.extractfile(member).read()
    return out
