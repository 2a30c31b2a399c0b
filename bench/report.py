"""Figures → the printed table, `bench/results.json` and `bench/chart.png`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import orjson

__all__ = ["Row", "summary", "print_table", "write_json", "write_chart", "markdown_table", "rows_from_json"]


def summary(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


@dataclass
class Row:
    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""
    available: bool = True

    @property
    def stats(self) -> dict:
        return summary(self.values)

    @property
    def verdict(self) -> str | None:
        med = self.stats["median"]
        if self.target is None or med is None:
            return None
        ok = med >= self.target if self.higher_is_better else med <= self.target
        return "met" if ok else "missed"

    @property
    def gap(self) -> str:
        """How far the median is from the target, as the factor to go."""
        med = self.stats["median"]
        if self.target is None or med is None or self.verdict == "met" or med == 0:
            return ""
        factor = self.target / med if self.higher_is_better else med / self.target
        return f"×{factor:.1f} short" if self.higher_is_better else f"×{factor:.1f} over"

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            **self.stats,
            "target": self.target,
            "target_is": (">=" if self.higher_is_better else "<=") if self.target is not None else None,
            "verdict": self.verdict,
            "gap": self.gap or None,
            "note": self.note or None,
            "available": self.available,
        }


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "×":
        return f"{v:.3f}" if v < 0.1 else f"{v:.2f}"
    if unit == "ms":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    return ("≥ " if row.higher_is_better else "≤ ") + _fmt(row.target, row.unit)


def print_table(rows: list[Row], title: str, caption: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title, caption=caption, caption_justify="left")
    for col, kw in (
        ("measure", {}),
        ("median", {"justify": "right"}),
        ("min", {"justify": "right"}),
        ("max", {"justify": "right"}),
        ("unit", {}),
        ("target", {"justify": "right"}),
        ("verdict", {}),
    ):
        table.add_column(col, **kw)
    for row in rows:
        s = row.stats
        if not row.available:
            table.add_row(row.label, "not available", "", "", row.unit, _target(row), row.note)
            continue
        verdict = row.verdict
        styled = (
            "" if verdict is None else ("[green]met[/green]" if verdict == "met" else f"[red]missed {row.gap}[/red]")
        )
        table.add_row(
            row.label,
            _fmt(s["median"], row.unit),
            _fmt(s["min"], row.unit),
            _fmt(s["max"], row.unit),
            row.unit,
            _target(row),
            styled,
        )
    console.print(table)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| measure | median | min | max | unit | target | verdict |", "|---|--:|--:|--:|---|--:|---|"]
    for row in rows:
        s = row.stats
        if not row.available:
            lines.append(f"| {row.label} | not available | | | {row.unit} | {_target(row)} | {row.note} |")
            continue
        verdict = "" if row.verdict is None else ("met" if row.verdict == "met" else f"missed ({row.gap})")
        lines.append(
            f"| {row.label} | {_fmt(s['median'], row.unit)} | {_fmt(s['min'], row.unit)} | "
            f"{_fmt(s['max'], row.unit)} | {row.unit} | {_target(row)} | {verdict} |"
        )
    return "\n".join(lines)


def rows_from_json(data: dict) -> list[Row]:
    """The table rows of a results.json, to re-print them (`python -m bench.report [FILE]`)."""
    rows = []
    for r in data["rows"]:
        rows.append(
            Row(
                r["key"],
                r["label"],
                r["unit"],
                r.get("runs") or [],
                target=r.get("target"),
                higher_is_better=r.get("target_is") != "<=",
                note=r.get("note") or "",
                available=r.get("available", True),
            )
        )
    return rows


def write_json(path: Path, data: dict) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def write_chart(path: Path, bars: list[Row], latency_samples: dict[str, list[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.25, 1]})
    shown = [r for r in bars if r.available and r.stats["median"]]
    names = [r.label.replace(": ", ":\n", 1) for r in shown]
    med = np.array([r.stats["median"] for r in shown])
    low = med - np.array([r.stats["min"] for r in shown])
    high = np.array([r.stats["max"] for r in shown]) - med
    colors = [
        "#8da0cb"
        if r.key.startswith(("limit", "framework"))
        else "#66c2a5"
        if r.key.startswith(("pipeline", "handlers"))
        else "#e78ac3"
        if r.key.startswith("projector")
        else "#fc8d62"
        for r in shown
    ]
    x = np.arange(len(shown))
    left.bar(x, med, yerr=[low, high], capsize=4, color=colors)
    for i, r in enumerate(shown):
        left.annotate(
            f"{med[i]:,.0f}", (x[i], med[i]), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8
        )
        if r.target is not None:
            left.plot([x[i] - 0.4, x[i] + 0.4], [r.target, r.target], color="red", linestyle="--", linewidth=1)
    left.set_yscale("log")
    left.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("per second, log scale")
    left.set_xlabel("bars: median; whiskers: min–max; red dashes: target", fontsize=8)
    left.set_title("Throughput")
    left.grid(axis="y", which="both", alpha=0.3)

    for label, samples in latency_samples.items():
        if not samples:
            continue
        s = np.sort(np.array(samples))
        right.plot(s, np.arange(1, len(s) + 1) / len(s), label=f"{label} (n={len(s)})")
    right.axvline(50, color="red", linestyle="--", linewidth=1, label="target p99 ≤ 50 ms")
    right.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    right.set_xscale("log")
    right.set_xlabel("latency, send → receipt (ms, log scale)")
    right.set_ylabel("fraction of messages")
    right.set_title("Latency CDF at 50% of the pipeline's maximum")
    right.grid(alpha=0.3, which="both")
    right.legend(loc="lower right", fontsize=8)
    import textwrap

    fig.suptitle("\n".join(textwrap.fill(line, 160) for line in title.splitlines()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.json"))
    print(markdown_table(rows_from_json(orjson.loads(source.read_bytes()))))
