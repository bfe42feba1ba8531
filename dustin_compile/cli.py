"""``python -m dustin``: generate with a local checkpoint pair, calibrate a profile, run the demo (the main job), or
evaluate a pair (fidelity, free-running, needle retrieval)."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .config import DustinConfig
from .demo import add_demo_arguments, run_demo
from .evaluate import add_eval_arguments, run_eval
from .flags import add_config_arguments, config_overrides

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dustin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="speculative decoding with local Hugging Face checkpoints (offline)")
    gen.add_argument("--target", required=True, help="target checkpoint directory (config, weights, tokenizer)")
    gen.add_argument("--draft", required=True, help="draft checkpoint directory (same tokenizer)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", help="file holding the prompt text")
    gen.add_argument("--max-new-tokens", type=int, required=True)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    gen.add_argument("--dtype", choices=tuple(DTYPES), default="auto", help="load both models in this dtype")
    # Sampling flags not given are not passed: generate() then follows the checkpoint's generation_config, as
    # transformers does (a checkpoint that samples by default samples here too).
    sampling = gen.add_argument_group("sampling (default: the checkpoint's generation_config)")
    sampling.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
    sampling.add_argument("--temperature", type=float, default=argparse.SUPPRESS)
    sampling.add_argument("--top-k", type=int, default=argparse.SUPPRESS)
    sampling.add_argument("--top-p", type=float, default=argparse.SUPPRESS)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming it")
    gen.add_argument("--profile", help="calibration profile JSON from `python -m dustin calibrate` (sparse modes)")
    add_config_arguments(gen)
    cal = sub.add_parser("calibrate", help="calibrate a selection profile for a checkpoint pair (JSON)")
    cal.add_argument("--target", required=True)
    cal.add_argument("--draft", required=True)
    cal.add_argument("--text-file", nargs="+", required=True, help="long text files to calibrate on")
    cal.add_argument("--out", required=True, help="where to write the profile JSON")
    cal.add_argument("--context", type=int, default=4096, help="tokens of each text to calibrate on")
    cal.add_argument("--windows", type=int, default=8, help="verification windows recorded per text")
    cal.add_argument("--dtype", choices=tuple(DTYPES), default="auto")
    add_config_arguments(cal, ("gamma", "budget", "n_sink", "window"))
    demo = sub.add_parser("demo", help="the main job: ar, dense, sparse and exact on a real pair and a long passage "
                                        "(--tiny: small random models, no downloads)")
    add_demo_arguments(demo)
    add_config_arguments(demo)
    evaluate = sub.add_parser("eval", help="the evaluation protocol on a pair: teacher-forced fidelity, free-running "
                                           "arms, needle retrieval; CSV, tables, plots (--tiny: no downloads)")
    add_eval_arguments(evaluate)  # with the DustinConfig flags the harness does not set per arm
    return parser


def _load(path: str, dtype: torch.dtype | None, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(path):
        raise SystemExit(f"--{name}: {path!r} is not a directory (expected a local Hugging Face checkpoint)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", attn_implementation="sdpa",
                                                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def run_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from .model import compile as compile_pair

    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompt = f.read()
    else:
        prompt = args.prompt
    if not prompt:
        raise SystemExit("the prompt is empty: pass --prompt TEXT or a non-empty --prompt-file")
    dtype = DTYPES[args.dtype]
    target, tokenizer = _load(args.target, dtype, "target")
    draft, draft_tokenizer = _load(args.draft, dtype, "draft")
    if args.profile and not os.path.isfile(args.profile):
        raise SystemExit(f"--profile: {args.profile!r} is not a file (expected a JSON from `python -m dustin calibrate`)")
    model = compile_pair(target, draft, tokenizer=tokenizer, draft_tokenizer=draft_tokenizer,
                           profile=args.profile, **config_overrides(args))
    if args.chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    print(f"prompt: {input_ids.shape[1]} tokens; mode={model.config.mode}, gamma={model.config.gamma}",
          file=sys.stderr)
    streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True)
    sampling = {k: getattr(args, k) for k in ("do_sample", "temperature", "top_k", "top_p") if hasattr(args, k)}
    out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, streamer=streamer,
                         generator=torch.Generator().manual_seed(args.seed), progress=True, **sampling)
    if args.no_stream:
        print(tokenizer.decode(out.sequences[0, input_ids.shape[1]:], skip_special_tokens=True))
    print("\n" + out.stats.table(), file=sys.stderr)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

    target, tokenizer = _load(args.target, DTYPES[args.dtype], "target")
    draft, _ = _load(args.draft, DTYPES[args.dtype], "draft")
    texts = []
    for path in args.text_file:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    profile = calibrate(target, draft, texts, DustinConfig(**config_overrides(args)), tokenizer=tokenizer,
                               context=args.context, windows=args.windows)
    profile.save(args.out)
    print(f"wrote {args.out}: history layer {profile.history_layer} heads {list(profile.history_heads)}, draft "
          f"layers {[layer for layer, _ in profile.draft_layers]}, m {profile.m_fraction:.2f} of the free budget, "
          f"dense layers {list(profile.dense_layers)}, objective {profile.objective}")
    print("recovery per target layer: " + " ".join(f"{r:.2f}" for r in profile.recovery))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "calibrate":
        return run_calibrate(args)
    if args.command == "eval":
        return run_eval(args, config_overrides(args))
    return run_demo(args, config_overrides(args))
