"""What ``python -m dustin eval`` leaves behind: CSV files (rewritten after every row, so an interrupted run keeps
what it measured), compact tables on stdout, and PNG plots (matplotlib, Agg backend, imported only here)."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

FILES = {"fidelity": "fidelity.csv", "fidelity_layers": "fidelity_layers.csv", "free": "free.csv",
         "needle": "needle.csv"}


class Results:
    """Rows per table, each prefixed with the run's ``settings`` (pair, machine, dtype, ...), written to ``out``."""

    def __init__(self, out: Path, settings: dict) -> None:
        self.out, self.settings = out, settings
        self.rows: dict[str, list[dict]] = defaultdict(list)
        out.mkdir(parents=True, exist_ok=True)
        (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")

    def add(self, table: str, row: dict) -> None:
        self.rows[table].append({**self.settings, **row})
        self._write(table)

    def _write(self, table: str) -> None:
        rows = self.rows[table]
        columns = list(dict.fromkeys(key for r in rows for key in r))
        with open(self.out / FILES[table], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    # ---- tables -----------------------------------------------------------------------------------------------
    def tables(self) -> str:
        parts = []
        if self.rows["fidelity"]:
            for name, key, fmt in (("agreement of sparse and dense argmax", "agreement", "{:.3f}"),
                                   ("PPL ratio sparse / dense", "ppl_ratio", "{:.4f}"),
                                   ("KL(dense || sparse), nats", "kl", "{:.2e}"),
                                   ("recovery, mean over sparse layers", "recovery_mean", "{:.3f}")):
                parts.append(_pivot(self.rows["fidelity"], "selector", key, fmt, f"fidelity: {name}"))
        if self.rows["free"]:
            lines = ["free-running (greedy; agreement = share of new tokens equal to ar's)",
                     f"{'context':>7s} {'arm':18s} {'tok/s':>7s} {'vs ar':>6s} {'tau':>5s} {'tok/pass':>8s}  agreement"]
            for r in self.rows["free"]:
                first = f" (first diff {r['first_divergence']})" if r["first_divergence"] != "" else ""
                lines.append(f"{r['context']:>7d} {r['arm']:18s} {r['decode_tokens_per_s']:7.2f} "
                             f"{_cell(r['speedup_vs_ar'], '{:.2f}x'):>6s} {r['tau']:5.2f} "
                             f"{r['tokens_per_target_pass']:8.2f}  {r['agreement_with_ar']:.3f}{first}")
            parts.append("\n".join(lines))
        if self.rows["needle"]:
            parts.append(_needle_table(self.rows["needle"]))
        return "\n\n".join(parts)

    # ---- plots ------------------------------------------------------------------------------------------------
    def plots(self) -> list[Path]:
        """PNG files: fidelity (agreement and PPL ratio vs budget, a line per selector, a column per context) and
        free-running speedup vs ``ar`` per arm (a panel per context)."""
        try:
            import matplotlib
        except ImportError as error:
            raise ImportError("python -m dustin eval draws its plots with matplotlib: pip install 'dustin[bench]' "
                              "(or matplotlib>=3.8), or pass --no-plots") from error
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        if self.rows["fidelity"]:
            written.append(self._fidelity_plot(plt))
        if self.rows["free"]:
            written.append(self._free_plot(plt))
            if len({r["context"] for r in self.rows["free"]}) > 1:
                written.append(self._context_plot(plt))
        return written

    def _context_plot(self, plt) -> Path:
        """Speedup over ``ar`` vs context, a line per arm: each point is a ratio measured within one run."""
        rows = [r for r in self.rows["free"] if r["kind"] != "ar" and r["speedup_vs_ar"] != ""]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for arm in dict.fromkeys(r["arm"] for r in rows):
            points = sorted((r["context"], r["speedup_vs_ar"]) for r in rows if r["arm"] == arm)
            ax.plot(*zip(*points), marker="o", label=arm)
        contexts = sorted({r["context"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.minorticks_off()
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode tokens/s vs ar")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"free-running speedup vs context, {self.settings['pair']}\n{self.settings['machine']}",
                     fontsize=10)
        fig.tight_layout()
        path = self.out / "free_vs_context.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def _fidelity_plot(self, plt) -> Path:
        rows = self.rows["fidelity"]
        contexts = sorted({r["context"] for r in rows})
        panels = (("agreement", "top-1 agreement with dense"), ("ppl_ratio", "PPL sparse / dense"),
                  ("recovery_mean", "recovery (mean, sparse layers)"))
        fig, axes = plt.subplots(len(panels), len(contexts), figsize=(5 * len(contexts), 10), squeeze=False)
        for col, context in enumerate(contexts):
            budgets = sorted({r["budget"] for r in rows if r["context"] == context})
            for row, (key, label) in enumerate(panels):
                ax = axes[row][col]
                for selector in dict.fromkeys(r["selector"] for r in rows):
                    points = sorted((r["budget"], r[key]) for r in rows
                                    if r["context"] == context and r["selector"] == selector and r[key] != "")
                    if points:
                        ax.plot(*zip(*points), marker="o", label=selector)
                ax.set_xscale("log", base=2)
                ax.set_xticks(budgets, [str(b) for b in budgets])
                ax.minorticks_off()
                ax.set_xlabel("budget (cached positions)")
                ax.set_ylabel(label)
                ax.set_title(f"context {context}")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"teacher-forced fidelity, {self.settings['pair']}")
        fig.tight_layout()
        path = self.out / "fidelity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def _free_plot(self, plt) -> Path:
        rows = self.rows["free"]
        contexts = sorted({r["context"] for r in rows})
        fig, axes = plt.subplots(1, len(contexts), figsize=(6 * len(contexts), 4), squeeze=False)
        for ax, context in zip(axes[0], contexts):
            mine = [r for r in rows if r["context"] == context]
            ax.bar(range(len(mine)), [r["speedup_vs_ar"] for r in mine],
                   color=["tab:green" if r["equals_ar"] else "tab:orange" for r in mine])
            ax.set_xticks(range(len(mine)), [r["arm"] for r in mine], rotation=45, ha="right", fontsize=8)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_ylabel("decode tokens/s vs ar")
            ax.set_title(f"context {context} (green: output equals ar's)")
        fig.suptitle(f"free-running speedup, {self.settings['pair']}\n{self.settings['machine']}", fontsize=10)
        fig.tight_layout()
        path = self.out / "free.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _pivot(rows: list[dict], row_key: str, value_key: str, fmt: str, title: str) -> str:
    """One block per context: ``row_key`` down, budgets across."""
    lines = [title]
    for context in sorted({r["context"] for r in rows}):
        mine = [r for r in rows if r["context"] == context]
        budgets = sorted({r["budget"] for r in mine})
        lines.append(f"  context {context:<6d}" + "".join(f"{b:>10d}" for b in budgets))
        for name in dict.fromkeys(r[row_key] for r in mine):
            cells = {r["budget"]: r[value_key] for r in mine if r[row_key] == name}
            lines.append(f"  {name:14s}" + "".join(f"{_cell(cells.get(b), fmt):>10s}" for b in budgets))
    return "\n".join(lines)


def _cell(value, fmt: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _needle_table(rows: list[dict]) -> str:
    lines = ["needle retrieval: correct answers / questions"]
    for context in sorted({r["context"] for r in rows}):
        mine = [r for r in rows if r["context"] == context]
        for arm in dict.fromkeys(r["arm"] for r in mine):
            hits = [r["correct"] for r in mine if r["arm"] == arm]
            by_depth = " ".join(f"{d}:{sum(r['correct'] for r in mine if r['arm'] == arm and r['depth'] == d)}"
                                for d in dict.fromkeys(r["depth"] for r in mine))
            lines.append(f"  context {context:<6d} {arm:18s} {sum(hits)}/{len(hits)}  (by depth {by_depth})")
    return "\n".join(lines)


# Settings that must agree for runs to be merged (what a row's numbers depend on, besides its own columns).
SAME_IN_MERGE = ("pair", "profile", "machine", "device", "dtype", "gamma", "n_sink", "window", "draft_kv", "backend")


def merge(dirs: list[Path], out: Path) -> Results:
    """The CSVs of several ``eval`` runs as one ``Results`` in ``out`` (tables and plots across runs, e.g. budgets
    or contexts measured separately). Every row keeps its own run's settings columns; runs whose settings differ
    in ``SAME_IN_MERGE`` are refused."""
    runs = [(d, json.loads((d / "settings.json").read_text(encoding="utf-8"))) for d in dirs]
    first = runs[0][1]
    for d, settings in runs[1:]:
        differ = {k: (first.get(k), settings.get(k)) for k in SAME_IN_MERGE if first.get(k) != settings.get(k)}
        if differ:
            raise ValueError(f"cannot merge {d} with {runs[0][0]}: their settings differ {differ}")
    results = Results(out, {**{k: first.get(k) for k in SAME_IN_MERGE}, "merged_from": [str(d) for d in dirs]})
    for d, _ in runs:
        for table, name in FILES.items():
            if (d / name).exists():
                with open(d / name, newline="", encoding="utf-8") as f:
                    results.rows[table] += [{k: _typed(v) for k, v in row.items()} for row in csv.DictReader(f)]
    for table in FILES:
        if results.rows[table]:
            results._write(table)
    return results


def _typed(value: str):
    """A CSV cell back to the value the run wrote: bool, int, float or text ("" stays "")."""
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
