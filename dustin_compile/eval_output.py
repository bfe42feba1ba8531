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
        return written

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
