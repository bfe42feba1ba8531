"""Fake wheels for the dustin.assets tests: built in tmp_path, fetched by copying (no network)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path


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


class LocalWheels:
    """A wheel fetcher that copies from a local folder and records what it was asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.calls = folder, []

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append(package)
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", dest))


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")

