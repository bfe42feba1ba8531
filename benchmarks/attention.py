"""Attention microbenchmark: dense verification attention vs dustin's sparse path, per layer.

    python benchmarks/attention.py --quick     # 7B geometry, batch 4, 8k/32k, all budgets, bf16+fp32 (~20 s here)
    python benchmarks/attention.py             # full grid: 8k/16k/32k x batch 1/4/8 x both geometries (~7 min here)
    python benchmarks/attention.py --quick --breakdown   # + where one sparse_attention call's time goes

Per configuration (geometry, dtype, context L, batch B; T = γ+1 query rows) it times, interleaved repeat by repeat
so that drift hits every arm alike (medians of --repeats after --warmup; a round during which another process used
the CPU is discarded and re-run, the CSV counts them):
  dense     SDPA over the whole cache, both ways, and the faster one is the baseline:
            "packed" (query heads of a KV head folded into rows, one [B, Hkv, G*T, S] call, bool mask) and
            "gqa" (SDPA(enable_gqa=True), bool mask [B, 1, T, S]); masks are built outside the timed region.
  estimate  score_heads of the history query q* (1 row) on 4 heads of one layer, once per iteration, two ways:
            "group" = 4 heads of one KV group (reads 1 group of K), "spread" = one head per KV group (reads 4)
  select    select_tokens(draft, history) once per iteration (draft scores given, as the draft computes them)
  attention dustin::sparse_attention with k = budget selected positions + the T new rows (the op, as compiled
            graphs call it: no eager validation; on the CPU its fused gather + attention kernel, sparse_attention.cpp,
            which the dispatcher reaches in C++ once it is built: kernels/cpu_ext.cpp)
  reference the ops' torch references on the same inputs (sparse attention: gather into a workspace + one packed
            SDPA; estimation: score_heads' reference, "group" heads): the CPU paths before the C++ kernels, and their
            fallback; reference_ratio = reference / attention, and speedup_group_reference = speedup_group with
            both references in place of the kernels (est_group_reference_ms)
  sparse per layer = attention + (estimate + select) / layers;  speedup = best dense / sparse per layer
            (the plot shows the "spread" speedup, the conservative one); speedup_group_vs_gqa = stock
            SDPA(enable_gqa=True) / sparse per layer (group estimation), the README's headline ratio.
--breakdown splits sparse_attention's torch reference into its two heavy steps (the gather of the K and V rows into
its workspace layout, and the packed SDPA over them; "op" is the op as called, on the CPU the fused kernel, which
does both in one pass), timed in two regimes: "cold",
each timed call right after the dense arm (as in the rounds, and as in a decode step, where a layer's K/V rows and
the op's workspaces were last touched a whole forward pass earlier), and "warm", the same call repeated back to back.
Bytes (GB/s): K and V rows read, 2 * B * Hkv * rows * D * sizeof(dtype), rows = L + T (dense) or k + T (sparse);
estimation reads B * groups * L * D * sizeof(dtype) of K. The machine's copy bandwidth is measured at start
(bytes copied / s of a 512 MB fp32 copy_). Triton timings are added only where CUDA exists.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import dustin.kernels  # noqa: F401  (registers the dustin ops)
from dustin.kernels import cpu_ext
from dustin.kernels.sparse import cpu as sparse_cpu
from dustin.kernels.scores import score_heads_reference as score_reference
from dustin.kernels.sparse import reference as sparse_reference

GEOMETRIES = {  # name: (query heads, KV heads, head dim, layers)
    "qwen2.5-7b": (28, 4, 128, 28),
    "qwen2.5-72b": (64, 8, 128, 80),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512, 2048])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    p.add_argument("--rows", type=int, default=5, help="T = gamma + 1 query rows (default 5)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-rounds", type=int, default=60, help="give up waiting for quiet rounds after this many")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="seconds to wait for other processes to leave the CPU before each configuration")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the sparse op's gather and SDPA apart, cold and warm (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="headline subset: 7B geometry, batch 4, 8k/32k, bf16+fp32")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.contexts, args.batches, args.geometries = [8192, 32768], [4], ["qwen2.5-7b"]
    return args


def _busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (/proc/stat, all CPUs)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def cpu_busy(seconds: float = 0.3) -> float:
    """Fraction of all CPU time used by other processes over a short window (we sleep meanwhile)."""
    busy0, start = _busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (_busy_seconds() - busy0) / ((time.monotonic() - start) * (os.cpu_count() or 1))


def wait_for_quiet(limit: float) -> float:
    """Timings on a shared 2-core box collapse when another job holds a core (OpenMP waits on it): wait a while."""
    deadline = time.monotonic() + limit
    busy = cpu_busy()
    while busy > 0.15 and time.monotonic() < deadline:
        time.sleep(2.0)
        busy = cpu_busy()
    return busy


def measure_rounds(arms: dict, warmup: int, repeats: int, max_rounds: int) -> tuple[dict[str, list[float]], int]:
    """Interleaved rounds (every arm once per round, so drift hits all arms alike). A round during which other
    processes used more than 10 % of one core is discarded: on 2 cores one foreign job makes every OpenMP region
    wait for a scheduler slice, which is noise, not a property of the kernels. Returns samples and discarded count."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    discarded = 0
    for _ in range(max_rounds):
        if len(next(iter(samples.values()))) >= repeats:
            break
        busy0, own0, wall0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        times = {}
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name] = (time.perf_counter() - start) * 1e3
        others = (_busy_seconds() - busy0) - (_own_seconds() - own0)
        if others > 0.1 * (time.perf_counter() - wall0):
            discarded += 1
            time.sleep(1.0)
            continue
        for name, t in times.items():
            samples[name].append(t)
    if not next(iter(samples.values())):  # never quiet: keep the last round rather than nothing
        samples = {name: [t] for name, t in times.items()}
    return samples, discarded


def copy_bandwidth() -> float:
    src = torch.randn(128 * 2**20)  # 512 MB: larger than the last-level cache
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return src.numel() * 4 / min(times) / 1e9


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def build_case(geometry: str, dtype: torch.dtype, context: int, batch: int, rows: int, device: str):
    q_heads, kv_heads, dim, _ = GEOMETRIES[geometry]
    groups, capacity = q_heads // kv_heads, context + rows
    g = torch.Generator().manual_seed(context + batch)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(device)  # noqa: E731
    case = dict(k=make(batch, kv_heads, capacity, dim), v=make(batch, kv_heads, capacity, dim),
                q=make(batch, q_heads, rows, dim), q_star=make(batch, q_heads, 1, dim),
                seq_lens=torch.full((batch,), context, dtype=torch.int64, device=device),
                draft=torch.rand(batch, capacity, generator=g).to(device))
    visible = torch.arange(capacity, device=device)[None, :] <= context + torch.arange(rows, device=device)[:, None]
    case["mask_gqa"] = visible[None, None].expand(batch, 1, rows, capacity).contiguous()
    case["mask_packed"] = visible.repeat(groups, 1)[None, None].expand(batch, 1, groups * rows, capacity).contiguous()
    return case


def history_heads(geometry: str, mode: str) -> list[int]:
    """4 query heads of one KV group (reads one group of K) or one head per group (reads up to 4 groups)."""
    q_heads, kv_heads, _, _ = GEOMETRIES[geometry]
    groups = q_heads // kv_heads
    return [0, 1, 2, 3] if mode == "group" else [i * groups for i in range(min(4, kv_heads))]


def make_arms(c: dict, geometry: str, budgets: list[int]) -> tuple[dict, dict]:
    """The timed callables (ops called as compiled graphs call them: torch.ops, no eager validation)."""
    q_heads, kv_heads, dim, _ = GEOMETRIES[geometry]
    batch, rows = c["q"].shape[0], c["q"].shape[2]
    packed_q = c["q"].reshape(batch, kv_heads, (q_heads // kv_heads) * rows, dim)
    ops = torch.ops.dustin
    arms = {
        "dense_packed": lambda: F.scaled_dot_product_attention(packed_q, c["k"], c["v"], attn_mask=c["mask_packed"]),
        "dense_gqa": lambda: F.scaled_dot_product_attention(c["q"], c["k"], c["v"], attn_mask=c["mask_gqa"],
                                                            enable_gqa=True),
    }
    for mode in ("group", "spread"):
        heads = history_heads(geometry, mode)
        arms[f"estimate_{mode}"] = lambda h=heads: ops.score_heads(c["q_star"], c["k"], c["seq_lens"], h, None)
    group_heads = history_heads(geometry, "group")
    arms["estimate_group_reference"] = lambda: score_reference(c["q_star"], c["k"], c["seq_lens"], group_heads)
    hist = arms["estimate_spread"]()
    indices = {}
    for budget in budgets:
        window, sink = budget // 4, 4
        pick = (lambda b=budget, w=window, s=sink:  # noqa: E731
                ops.select_tokens(c["draft"], hist, c["seq_lens"], b, s, w, b // 4))
        indices[budget] = pick()
        arms[f"select_{budget}"] = pick
        arms[f"attention_{budget}"] = (lambda b=budget:  # noqa: E731
                                       ops.sparse_attention(c["q"], c["k"], c["v"], indices[b], c["seq_lens"],
                                                            c["q"].shape[-1] ** -0.5, 0))
        arms[f"reference_{budget}"] = (lambda b=budget:  # noqa: E731
                                       sparse_reference.sparse_attention_reference(
                                           c["q"], c["k"], c["v"], indices[b], c["seq_lens"], c["q"].shape[-1] ** -0.5))
    return arms, indices


def op_steps(c: dict, geometry: str, indices: torch.Tensor) -> dict:
    """sparse_attention's two heavy steps on their own, as the op runs them (reference.py's helpers, same layout):
    the gather of the K and V rows (selection + new rows) and the packed SDPA over them."""
    q_heads, kv_heads, dim, _ = GEOMETRIES[geometry]
    batch, rows = c["q"].shape[0], c["q"].shape[2]
    groups, width = q_heads // kv_heads, indices.shape[1] + rows
    assert bool(indices.min() >= 0), "the benchmark's selections are full (context > budget)"
    positions = torch.cat([indices.to(torch.int64), c["seq_lens"][:, None] + torch.arange(rows)], dim=1)
    keys = torch.empty(batch, kv_heads, width, dim, dtype=c["k"].dtype)
    values = torch.empty_like(keys)
    mask = sparse_reference._causal_template(groups, rows, indices.shape[1], keys.dtype, keys.device)
    packed_q = c["q"].reshape(batch, kv_heads, groups * rows, dim)

    def gather():  # the row ids and both index_selects (a full selection: no padding)
        ids = sparse_reference._gather(c["k"], positions, keys, None)
        sparse_reference._gather(c["v"], positions, values, ids)

    def sdpa():
        F.scaled_dot_product_attention(packed_q, keys, values, attn_mask=mask, scale=dim**-0.5)

    return dict(gather=gather, sdpa=sdpa)


def breakdown(arms: dict, steps: dict, budget: int, repeats: int) -> dict[str, float]:
    """Medians (ms) of the op and of its steps, cold (each timed call right after the dense arm, which streams the
    whole cache through the CPU caches; the SDPA right after the gather, as inside the op) and warm (back to back)."""
    op, evict = arms[f"attention_{budget}"], arms["dense_packed"]
    cold: dict[str, list[float]] = {"gather": [], "sdpa": [], "op": []}
    for _ in range(repeats):
        evict()
        for name in ("gather", "sdpa"):
            start = time.perf_counter()
            steps[name]()
            cold[name].append((time.perf_counter() - start) * 1e3)
        evict()
        start = time.perf_counter()
        op()
        cold["op"].append((time.perf_counter() - start) * 1e3)
    result = {f"{name}_cold_ms": statistics.median(v) for name, v in cold.items()}
    for name, fn in (("gather", steps["gather"]), ("sdpa", steps["sdpa"]), ("op", op)):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        result[f"{name}_warm_ms"] = statistics.median(times)
    return result


def kernel_in_use(c: dict) -> str:
    """Which CPU path ``attention`` timed: the fused kernel or the reference (DUSTIN_CPU_KERNELS, build, gates)."""
    if c["q"].device.type != "cpu":
        return "triton"
    fused = cpu_ext.use_kernel("sparse_attention", sparse_cpu.supports(c["q"], c["k"], c["v"]), sparse_cpu.TAKES)
    return "fused" if fused else "reference"


def run_config(args, geometry: str, dtype_name: str, context: int, batch: int, copy_gbs: float) -> list[dict]:
    dtype = DTYPES[dtype_name]
    c = build_case(geometry, dtype, context, batch, args.rows, "cpu")
    budgets = [b for b in args.budgets if b < context]
    arms, indices = make_arms(c, geometry, budgets)
    busy = wait_for_quiet(args.quiet_wait)
    samples, discarded = measure_rounds(arms, args.warmup, args.repeats, max_rounds=args.max_rounds)
    med = {name: statistics.median(v) for name, v in samples.items()}
    triton_ms = triton_times(c, budgets, indices, args) if torch.cuda.is_available() else {}
    base = dict(geometry=geometry, dtype=dtype_name, context=context, batch=batch, rows=args.rows,
                threads=torch.get_num_threads(), copy_gbs=copy_gbs, cpu_busy_before=round(busy, 3),
                rounds=len(samples["dense_packed"]), rounds_discarded=discarded, sparse_kernel=kernel_in_use(c))
    rows = [summarize(base, med, budget, triton_ms.get(budget, float("nan"))) for budget in budgets]
    if args.breakdown:
        for row in rows:
            row.update(breakdown(arms, op_steps(c, geometry, indices[row["budget"]]), row["budget"], args.repeats))
    return rows


def summarize(base: dict, med: dict, budget: int, triton_ms: float) -> dict:
    """One result row: per-layer sparse time, speedups and bytes/s (formulas in the module docstring)."""
    q_heads, kv_heads, dim, layers = GEOMETRIES[base["geometry"]]
    batch, context, rows = base["batch"], base["context"], base["rows"]
    item = torch.finfo(DTYPES[base["dtype"]]).bits // 8
    dense_kind = min(("dense_packed", "dense_gqa"), key=med.get)
    dense, attention, select = med[dense_kind], med[f"attention_{budget}"], med[f"select_{budget}"]
    row = dict(base, budget=budget, layers=layers, dense_packed_ms=med["dense_packed"],
               dense_gqa_ms=med["dense_gqa"], dense_ms=dense, dense_kind=dense_kind.removeprefix("dense_"),
               select_ms=select, attention_ms=attention,
               dense_gbs=2 * batch * kv_heads * (context + rows) * dim * item / dense / 1e6,
               attention_gbs=2 * batch * kv_heads * (budget + rows) * dim * item / attention / 1e6)
    for mode in ("group", "spread"):
        estimate = med[f"estimate_{mode}"]
        groups_read = len({h // (q_heads // kv_heads) for h in history_heads(base["geometry"], mode)})
        sparse = attention + (estimate + select) / layers
        row.update({f"est_{mode}_ms": estimate, f"sparse_layer_{mode}_ms": sparse,
                    f"speedup_{mode}": dense / sparse, f"speedup_{mode}_vs_gqa": med["dense_gqa"] / sparse,
                    f"est_sel_{mode}_pct": 100 * (estimate + select) / (dense * layers),
                    f"est_{mode}_gbs": batch * groups_read * context * dim * item / estimate / 1e6})
    row["attention_only_speedup"] = dense / attention
    row["reference_ms"] = med[f"reference_{budget}"]
    row["reference_ratio"] = med[f"reference_{budget}"] / attention
    row["est_group_reference_ms"] = med["estimate_group_reference"]
    row["speedup_group_reference"] = dense / (med[f"reference_{budget}"]
                                              + (med["estimate_group_reference"] + select) / layers)
    row["sparse_kernel"] = base["sparse_kernel"]
    row["triton_attention_ms"] = triton_ms
    return row


def triton_times(c: dict, budgets: list[int], indices: dict, args) -> dict[int, float]:
    """The same sparse attention on CUDA (the Triton kernel), timed with device synchronisation."""
    g = {k: c[k].cuda() for k in ("q", "k", "v", "seq_lens")}
    result = {}
    for budget in budgets:
        idx = indices[budget].cuda()
        scale = g["q"].shape[-1] ** -0.5
        fn = lambda: torch.ops.dustin.sparse_attention(g["q"], g["k"], g["v"], idx, g["seq_lens"], scale, 0)  # noqa
        times = [timed(fn, torch.cuda.synchronize) for _ in range(args.warmup + args.repeats)][args.warmup:]
        result[budget] = statistics.median(times) * 1e3
    return result


COLUMNS = [("geometry", "{}"), ("dtype", "{}"), ("context", "{}"), ("batch", "{}"), ("budget", "{}"),
           ("dense_gqa_ms", "{:.1f}"), ("dense_ms", "{:.1f}"), ("dense_kind", "{}"), ("attention_ms", "{:.3f}"),
           ("reference_ms", "{:.3f}"), ("reference_ratio", "{:.2f}x"), ("select_ms", "{:.2f}"),
           ("est_group_ms", "{:.2f}"), ("est_group_reference_ms", "{:.2f}"), ("est_spread_ms", "{:.2f}"),
           ("attention_only_speedup", "{:.1f}x"), ("speedup_group_vs_gqa", "{:.1f}x"), ("speedup_group", "{:.1f}x"),
           ("speedup_group_reference", "{:.1f}x"), ("speedup_spread", "{:.1f}x"), ("est_sel_group_pct", "{:.2f}%"),
           ("est_sel_spread_pct", "{:.2f}%"),
           ("dense_gbs", "{:.1f}"), ("attention_gbs", "{:.1f}"), ("est_spread_gbs", "{:.1f}"), ("rounds", "{}")]


BREAKDOWN = [("geometry", "{}"), ("dtype", "{}"), ("context", "{}"), ("batch", "{}"), ("budget", "{}"),
             ("attention_ms", "{:.3f}"), ("op_cold_ms", "{:.3f}"), ("gather_cold_ms", "{:.3f}"),
             ("sdpa_cold_ms", "{:.3f}"), ("op_warm_ms", "{:.3f}"), ("gather_warm_ms", "{:.3f}"),
             ("sdpa_warm_ms", "{:.3f}")]


def print_row(row: dict, header: bool, columns: list[tuple[str, str]] = COLUMNS) -> None:
    if header:
        print("| " + " | ".join(name for name, _ in columns) + " |")
        print("|" + "---|" * len(columns))
    print("| " + " | ".join(fmt.format(row[name]) for name, fmt in columns) + " |", flush=True)


def plot(rows: list[dict], path: Path) -> None:
    """Speedup (spread estimation, the conservative one) vs context, one line per budget; a panel per
    (geometry, dtype) row and batch column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({(r["geometry"], r["dtype"]) for r in rows})
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(kinds), len(batches), figsize=(4 * len(batches), 3.2 * len(kinds)), squeeze=False)
    for i, (geometry, dtype) in enumerate(kinds):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            for budget in sorted({r["budget"] for r in rows}):
                pts = sorted((r["context"], r["speedup_spread"]) for r in rows if (r["geometry"], r["dtype"],
                             r["batch"], r["budget"]) == (geometry, dtype, batch, budget))
                if pts:
                    ax.plot([p[0] // 1024 for p in pts], [p[1] for p in pts], marker="o", label=f"k = {budget}")
            ax.set(title=f"{geometry} {dtype} B={batch}", xlabel="context (k tokens)", ylabel="speedup vs dense")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("dustin sparse attention per layer vs best dense SDPA\n"
                 "incl. (estimation on 4 KV groups + selection) / layers", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    copy_gbs = copy_bandwidth()
    print(f"# machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"copy bandwidth {copy_gbs:.1f} GB/s (512 MB fp32 copy_), CUDA: {torch.cuda.is_available()}")
    print(f"# command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    rows: list[dict] = []
    for geometry in args.geometries:
        for dtype_name in args.dtypes:
            for batch in args.batches:
                for context in args.contexts:
                    for row in run_config(args, geometry, dtype_name, context, batch, copy_gbs):
                        print_row(row, header=not rows)
                        rows.append(row)
    if args.breakdown:
        print("# sparse_attention split into its steps (ms; attention_ms = the rounds' median, as above; the rest of"
              " the op's time is its bookkeeping):")
        for i, row in enumerate(rows):
            print_row(row, header=i == 0, columns=BREAKDOWN)
    with open(args.out / "attention.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "attention_speedup.png")
    print(f"# wrote {args.out / 'attention.csv'} and {args.out / 'attention_speedup.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
