"""``PassReport``: what the pass did to one captured graph — a row per attention node: layer, node, action, reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from .rewrite import RewriteRecord


@dataclass
class PassReport:
    graph: str
    records: list[RewriteRecord] = field(default_factory=list)
    linears: dict[str, str] = field(default_factory=dict)  # linear node -> "packed" / "plain" (passes/linear.py)

    @property
    def rewritten(self) -> int:
        """Attention nodes replaced by a dustin op."""
        return sum(r.action.startswith(("sparse", "dense", "window")) for r in self.records)

    @property
    def declined(self) -> list[RewriteRecord]:
        return [r for r in self.records if r.action == "declined"]

    def count(self, action: str) -> int:
        return sum(r.action == action for r in self.records)

    def summary(self) -> str:
        """One line: how many attention nodes got each action (the table, counted)."""
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.action] = counts.get(r.action, 0) + 1
        line = f"{self.graph}: " + ", ".join(f"{n} {action}" for action, n in counts.items())
        packed = sum(choice == "packed" for choice in self.linears.values())
        return line + (f"; {packed}/{len(self.linears)} linears packed" if self.linears else "")

    def table(self) -> str:
        rows = [("layer", "node", "action", "reason")]
        rows += [(str(r.layer), r.node, r.action, r.reason) for r in sorted(self.records, key=lambda r: r.layer)]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [f"{self.graph}: {self.rewritten} attention node(s) rewritten, {len(self.declined)} declined"]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
