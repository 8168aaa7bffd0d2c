"""The figures of every benchmark in one table (``make bench``); not a test.

Each benchmark run by ``make bench`` writes its summary rows (``--summary FILE``: a JSON list of
``{"figure", "ours", "peer", "ratio", "goal"}``) into one directory; this prints them together:
the figure, our value, the peer's value or the limit it is held to, their ratio and whether the
goal is met.

    python3 tests/bench/bench_table.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(figure: str, ours: str, peer: str, ratio: float | None = None, limit: float | None = None) -> dict:
    """One summary row; ``limit`` is the highest ``ratio`` that meets the goal (None: no goal)."""
    goal = "" if limit is None or ratio is None else ("met" if ratio <= limit else "NOT met") + f" (<= {limit:g})"
    return {"figure": figure, "ours": ours, "peer": peer, "ratio": ratio, "goal": goal}


def write(path: str | None, rows: list) -> None:
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))


def render(rows: list) -> str:
    header = ["figure", "ours", "peer or limit", "ratio", "goal"]
    cells = [[r["figure"], r["ours"], r["peer"], "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["goal"]]
             for r in rows]
    widths = [max(len(line[i]) for line in [header] + cells) for i in range(len(header))]
    lines = [" | ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in [header] + cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list) -> int:
    directory = Path(argv[1])
    rows, missing = [], []
    for name in ("agent", "vm", "thin"):
        path = directory / f"{name}.json"
        if path.exists():
            rows.extend(json.loads(path.read_text()))
        else:
            missing.append(name)
    print(render(rows))
    if missing:
        print(f"no figures from: {', '.join(missing)} (its benchmark failed or did not run)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
