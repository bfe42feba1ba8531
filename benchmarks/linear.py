"""What a multi-row step costs against a one-row step, per linear and per whole verification, plain vs packed.

    python benchmarks/linear.py --rows 2 5 --context 4096

Per linear: every distinct linear of the real pair (q/k/v/o, gate/up/down, lm_head of each model) run through all
of its model's layers in turn (the weights leave the cache as in a real step), 1 row with ``F.linear`` against
``--rows`` rows with ``F.linear`` and with MKL's packed GEMM (passes/linear.py); then each layer's q/k/v fused into
one packed GEMM (what the pass may run instead of the three, where it measures faster) against the three apart.
Per step: the target's compiled dense verification graph (``backend="eager"``) at ``--context`` cached tokens,
batch 1, 1 row against each of ``--rows`` rows, with ``linear="plain"`` and ``linear="auto"`` (what dustin does by
default). Every ratio is paired:
each of ``--repeats`` rounds times the one-row call and then each multi-row call back to back, and the ratio reported
is the median over rounds of that round's ratio (this host drifts by more than a small linear's 5-row margin between
two separate medians). Writes a CSV and a PNG under ``--out``. ``--dtype bfloat16`` measures the models in
bf16 (plain ``F.linear`` only: the packed GEMM is fp32; CPUs with AMX run bf16 multi-row GEMMs near one-row cost).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dustin  # noqa: E402
from dustin.kernels import pack_weight  # noqa: E402
from dustin.kernels.linear import packed_linear_cat_reference  # noqa: E402
from pair_args import add_pair_arguments, check_pair_arguments, load_pair  # noqa: E402
from texts import long_prompts  # noqa: E402

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p)
    p.add_argument("--rows", type=int, nargs="+", default=[2, 5])
    p.add_argument("--context", type=int, default=4096, help="cached tokens for the per-step measurement (0: skip)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-linears", action="store_true", help="only the per-step measurement")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="model dtype (bfloat16: plain F.linear only, no packed arm)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    check_pair_arguments(p, args)
    return args


def linear_groups(model) -> dict[str, list[torch.nn.Linear]]:
    """Linear name -> that linear of every layer (the LM head: one)."""
    groups = {name: [getattr(layer.self_attn if name[0] in "qkvo" else layer.mlp, name) for layer in
                     model.model.layers] for name in LINEARS}
    groups["lm_head"] = [model.lm_head]
    return groups


def paired_ms(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Wall milliseconds of every call in ``fns`` (name -> zero-argument callable), ``repeats`` rounds of each in turn.

    Two warm-up calls each first. Within a round the calls run back to back, so a ratio of two of them compares
    runs milliseconds apart, not the two ends of a drifting run.
    """
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def median_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s time over ``base``'s time in the same round."""
    return statistics.median(t / b for t, b in zip(times[name], times[base]))


def per_linear(name: str, model, rows: list[int], repeats: int) -> list[dict]:
    out = []
    for linear_name, mods in linear_groups(model).items():
        weights = [m.weight for m in mods]
        biases = [m.bias for m in mods]
        width, dtype = weights[0].shape[1], weights[0].dtype
        packed = [pack_weight(w) for w in weights] if dtype == torch.float32 else None  # MKL packs fp32 only

        def plain(x):
            for w, b in zip(weights, biases):
                torch.nn.functional.linear(x, w, b)

        def fast(x):
            for w, p, b in zip(weights, packed, biases):
                torch.ops.mkl._mkl_linear(x, p, w, b, x.shape[0])

        calls = {"one": lambda x=torch.randn(1, width, dtype=dtype): plain(x)}
        for r in rows:
            x = torch.randn(r, width, dtype=dtype)
            calls[f"plain_{r}"] = lambda x=x: plain(x)
            if packed:
                calls[f"packed_{r}"] = lambda x=x: fast(x)
        times = paired_ms(calls, repeats)
        one = statistics.median(times["one"]) / len(mods)
        row = {"model": name, "linear": linear_name, "shape": "x".join(map(str, weights[0].shape)),
               "one_row_ms": round(one, 3)}
        for r in rows:
            row[f"plain_{r}"] = round(median_ratio(times, f"plain_{r}", "one"), 2)
            row[f"packed_{r}"] = round(median_ratio(times, f"packed_{r}", "one"), 2) if packed else float("nan")
        out.append(row)
        print(f"  {name:6s} {linear_name:9s} {row['shape']:>11s} 1 row {one:7.2f} ms  " + "  ".join(
            f"{r} rows: plain {row[f'plain_{r}']:.2f}x packed {row[f'packed_{r}']:.2f}x".replace("nanx", "-")
            for r in rows), flush=True)
        del packed
    return out


def per_fused(name: str, model, rows: list[int], repeats: int) -> list[dict]:
    """Each layer's q/k/v as the multi-row graphs may run them (passes/linear.py, fusion): one packed GEMM of the
    three weights concatenated, against the three ``F.linear`` calls of a one-row step (``plain_R``: the three apart
    through ``F.linear`` at R rows; ``packed_R``: fused)."""
    layers = [[getattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj")] for layer in model.model.layers]
    width, dtype = layers[0][0].weight.shape[1], layers[0][0].weight.dtype
    if dtype != torch.float32:
        return []
    out_features = sum(m.weight.shape[0] for m in layers[0])
    fused = [(pack_weight(torch.cat([m.weight for m in mods])),
              torch.cat([m.bias for m in mods]) if mods[0].bias is not None else None) for mods in layers]

    def apart(x):
        for mods in layers:
            for m in mods:
                torch.nn.functional.linear(x, m.weight, m.bias)

    def together(x):
        for packed, bias in fused:
            packed_linear_cat_reference(x, packed, bias, out_features)

    calls = {"one": lambda x=torch.randn(1, width): apart(x)}
    for r in rows:
        x = torch.randn(r, width)
        calls[f"plain_{r}"], calls[f"packed_{r}"] = (lambda x=x: apart(x)), (lambda x=x: together(x))
    times = paired_ms(calls, repeats)
    one = statistics.median(times["one"]) / len(layers)
    row = {"model": name, "linear": "qkv fused", "shape": f"{out_features}x{width}", "one_row_ms": round(one, 3)}
    for r in rows:
        row[f"plain_{r}"] = round(median_ratio(times, f"plain_{r}", "one"), 2)
        row[f"packed_{r}"] = round(median_ratio(times, f"packed_{r}", "one"), 2)
    print(f"  {name:6s} {'qkv fused':9s} {row['shape']:>11s} 1 row {one:7.2f} ms  " + "  ".join(
        f"{r} rows: apart {row[f'plain_{r}']:.2f}x fused {row[f'packed_{r}']:.2f}x" for r in rows), flush=True)
    return [row]


def per_step(target, draft, tokenizer, rows: list[int], context: int, repeats: int) -> list[dict]:
    prompt = torch.tensor(long_prompts(tokenizer, context, 1))
    out = []
    base = dustin.compile(target, draft, mode="dense", backend="eager", linear="plain")
    base.generate(prompt, max_new_tokens=1)  # prefill once; the siblings share the cache
    for linear in ("plain", "auto") if target.dtype == torch.float32 else ("plain",):
        model = base.with_config(linear=linear)
        model.generate(prompt, max_new_tokens=1)  # builds this sibling's decode state (the prefill is shared)
        seq_lens = model._state.seq_lens

        def step(r):
            graph = model.graph("verify", r)
            pos = torch.arange(context - 1, context - 1 + r)[None]
            ids = prompt[:, -1:].expand(1, r).contiguous()
            return lambda: graph(ids, pos, seq_lens.copy_(pos[:, 0]))  # rewrites the same positions every call

        times = paired_ms({r: step(r) for r in [1, *rows]}, repeats)
        one = statistics.median(times[1])
        for r in rows:
            rows_ms, ratio = statistics.median(times[r]), median_ratio(times, r, 1)
            out.append({"linear": linear, "context": context, "rows": r, "one_row_ms": round(one, 1),
                        "rows_ms": round(rows_ms, 1), "ratio": round(ratio, 2)})
            print(f"  verify step, linear={linear}, {context} cached: 1 row {one:.0f} ms, {r} rows "
                  f"{rows_ms:.0f} ms ({ratio:.2f}x, median of paired rounds)", flush=True)
    return out


def plot(linears: list[dict], rows: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} {r['linear']}" for r in linears]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.6), 4))
    width = 0.8 / (2 * len(rows))
    for i, r in enumerate(rows):
        for j, kind in enumerate(("plain", "packed")):
            xs = [k + (2 * i + j) * width for k in range(len(labels))]
            ax.bar(xs, [row[f"{kind}_{r}"] for row in linears], width, label=f"{r} rows, {kind}")
    ax.axhline(1.5, color="k", linestyle="--", linewidth=0.8, label="1.5x target")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))], labels, rotation=60, ha="right")
    ax.set_ylabel("time / time of 1 row (F.linear)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse()
    torch.set_grad_enabled(False)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {args.dtype}", flush=True)
    dtype = getattr(torch, args.dtype)
    target, draft, tokenizer = load_pair(args.target, args.draft, dtype)
    linears = [] if args.skip_linears else [
        row for name, model in (("target", target), ("draft", draft))
        for row in per_linear(name, model, args.rows, args.repeats) + per_fused(name, model, args.rows, args.repeats)]
    steps = []
    if args.context:
        steps = per_step(target, draft, tokenizer, args.rows, args.context,
                         args.repeats)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for rows_, kind in ((linears, "linears"), (steps, "steps")):
        if rows_:
            with open(os.path.join(args.out, f"linear-{kind}-{stamp}.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows_[0]))
                writer.writeheader()
                writer.writerows(rows_)
    if linears:
        plot(linears, args.rows, os.path.join(args.out, f"linear-{stamp}.png"))
    print(f"wrote {args.out}/linear-*-{stamp}.csv and .png")


if __name__ == "__main__":
    main()
