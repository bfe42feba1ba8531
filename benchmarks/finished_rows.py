"""What a finished row, and a row out of step, costs: every decode step with all rows active at one position vs with
some rows finished, and vs rows at different positions (as after speculation, each row having accepted its own
number of tokens).

    python benchmarks/finished_rows.py                        # 8k context, batch 4, 3 finished rows (~3 min here)
    python benchmarks/finished_rows.py --context 4096 --finished 1 2 3

A row that has finished (eos or max_new_tokens, nothing provisional) keeps its batch slot — shapes stay static — but
the driver gives it seq_lens 0, so the attention ops read no cache for it: dense attention reads only its own T
rows, score taps nothing, sparse verification and the draft's window an empty selection. Its weight GEMM rows still
run. This times each compiled decode step of a random model with real-model layer geometry (Qwen2.5-1.5B: hidden
1536, 12 query / 2 KV heads, head dim 128, MLP 8960; ``--layers`` of them, a small vocabulary so the LM head does not
hide the attention) through ``DustinModel.graph``, with seq_lens as the driver sets them, median of ``--repeats``
after a warm-up. Rows out of step: "apart" puts row b at ``context - b`` (every start distinct), "pairs" alternates
two starts two positions apart (rows sharing a start are not side by side). Prints a table, writes CSV and a PNG
plot under ``--out``.
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

GEOMETRY = dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                vocab_size=4096, max_position_embeddings=65536, tie_word_embeddings=False)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--finished", type=int, nargs="+", default=[3], help="rows finished (besides the all-active run)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**GEOMETRY, num_hidden_layers=args.layers, attn_implementation="sdpa")
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(LlamaConfig(**GEOMETRY, num_hidden_layers=1, attn_implementation="sdpa")).eval()
    # exact mode, budget 512: every decode role of the product (draft, sparse verify, dense check) in one model
    model = dustin.compile(target, draft, mode="exact", budget=512, backend="eager", draft_kv="window")
    prompts = torch.randint(10, GEOMETRY["vocab_size"], (args.batch, args.context))
    model.warmup(prompts, max_new_tokens=16)  # prefill once; the caches then hold a real context per row
    return model


def layouts(args) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, settled [B] bool, start offsets [B]) of each batch layout timed, the baseline first."""
    batch, none = args.batch, torch.zeros(args.batch, dtype=torch.bool)
    b = torch.arange(batch)
    return [("in step", none, torch.zeros(batch, dtype=torch.long)),
            *((f"{k} finished", b >= batch - k, torch.zeros(batch, dtype=torch.long)) for k in args.finished),
            ("apart", none, -b), ("pairs", none, -2 * (b % 2))]


def time_step(model, role: str, rows: int, settled: torch.Tensor, offsets: torch.Tensor, context: int,
              repeats: int) -> float:
    """Median seconds of the ``role`` step at ``rows`` rows from positions ``context + offsets``, settled rows given
    seq_lens 0 (as the driver does)."""
    state, batch = model.state, settled.shape[0]
    pos = (context + offsets)[:, None] + torch.arange(rows)
    ids = torch.randint(10, GEOMETRY["vocab_size"], (batch, rows))
    seq_lens = pos[:, 0].masked_fill(settled, 0)
    state.indices.copy_(torch.arange(state.indices.shape[1]) * (context // state.indices.shape[1]))
    state.indices.masked_fill_(settled[:, None], -1)
    state.lookahead_seq_lens.copy_(seq_lens)
    from dustin.cache import window_indices

    window_indices(seq_lens, model.config.n_sink, model.config.draft_window, out=state.window_indices)
    graph = model.graph(role, rows)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            graph(ids, pos, seq_lens)
            if i:  # the first call is a warm-up
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    args = parse()
    os.makedirs(args.out, exist_ok=True)
    model = build(args)
    cfg = model.config
    # verify_dense at 1 row: a plain decoding step (gamma = 0 in dense mode, or the `ar` arm's)
    steps = [("draft_1", 1), ("verify", cfg.max_draft + 1), ("verify_dense", 1), ("verify_dense", cfg.max_draft + 1),
             ("check", cfg.exact_every + cfg.max_draft + 1)]
    rows = []
    for role, width in steps:
        base = None
        for layout, settled, offsets in layouts(args):
            seconds = time_step(model, role, width, settled, offsets, args.context, args.repeats)
            base = base or seconds
            rows.append(dict(step=role, rows=width, layout=layout, ms=1000 * seconds, vs_in_step=seconds / base))
            print(f"{role:13s} {width:3d} rows  {layout:12s}: {1000 * seconds:8.1f} ms ({seconds / base:.2f}x in step)",
                  flush=True)
    report(rows, args)
    return 0


def report(rows, args) -> None:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"finished-rows-{stamp}.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"# {machine}; context {args.context}, batch {args.batch}, {args.layers} layers of Qwen2.5-1.5B geometry, "
          f"fp32\n# csv: {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    def label(r):
        return f"{r['step']} ({r['rows']})"

    steps = list(dict.fromkeys(label(r) for r in rows))
    names = list(dict.fromkeys(r["layout"] for r in rows))
    width = 0.8 / len(names)
    for i, layout in enumerate(names):
        values = [next(r["ms"] for r in rows if label(r) == s and r["layout"] == layout) for s in steps]
        ax.bar([j + i * width for j in range(len(steps))], values, width, label=layout)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(steps))], steps)
    ax.set_ylabel("ms per step")
    ax.set_title(f"row layouts, context {args.context}, batch {args.batch} ({machine})", fontsize=8)
    ax.legend()
    fig.tight_layout()
    png = path.replace(".csv", ".png")
    fig.savefig(png, dpi=110)
    print(f"# plot: {png}")


if __name__ == "__main__":
    sys.exit(main())
