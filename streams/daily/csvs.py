"""The day's report as CSV files: one UTF-8 file per table, a header row of column keys, raw values
(seconds, shares as fractions, times in RFC 3339 UTC), plus `summary.csv` (key, value)."""

from __future__ import annotations

import csv
from pathlib import Path

from models.daily import DayFigures

from .view import Names, summary, tables

__all__ = ["write_csv"]


def write_csv(fig: DayFigures, names: Names, directory: Path, *, proof: str = "") -> list[Path]:
    """Write the files into `directory` (made if missing); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    path = directory / "summary.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["key", "value"])
        out.writerows((key, value) for key, _heading, value in summary(fig, names))
        if proof:
            out.writerow(["verified", proof])
    written.append(path)
    for table in tables(fig, names):
        path = directory / f"{table.key}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow([c.key for c in table.columns])
            out.writerows(table.rows)
        written.append(path)
    return written
