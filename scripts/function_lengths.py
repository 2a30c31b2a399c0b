"""`make lint`'s size check: no function longer than LIMIT lines (def to last line, docstring
included) in the product (streams/, models/, routing/) and the bench. Alembic migrations are
exempt: a migration is a record of a schema, not code to split. Tests are exempt: a test reads
best as one story, setup to assertion. Prints the longest functions either way."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60
CHECKED = ("streams", "models", "routing", "bench")
EXEMPT = ("models/store/migrations/",)


def lengths(root: Path):
    for folder in CHECKED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if any(rel.startswith(e) for e in EXEMPT):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    found = sorted(lengths(root), reverse=True)
    over = [f for f in found if f[0] > LIMIT]
    for n, where in found[:5]:
        print(f"{n:4d} lines  {where}")
    if over:
        print(f"{len(over)} function(s) over {LIMIT} lines: split them by job", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
