"""What the demo's main table must look like, wherever the demo ran (locally or on SLURM)."""

from __future__ import annotations

import re

DEMO_ROWS = [
    "| clipseg | CoOp |",
    "|  | CoCoOp |",
    "|  | VPT |",
    "|  | Shared Attention |",
    "| cris | CoOp |",
    "|  | CoCoOp |",
]


def assert_demo_main_table(table: str) -> None:
    """Every model + learner row of the demo, in order, each with a value and its mean."""
    rows = [line for line in table.splitlines() if re.match(r"^\| (clipseg|cris|) +\|", line)]
    assert [row[: len(prefix)] for row, prefix in zip(rows, DEMO_ROWS, strict=True)] == DEMO_ROWS
    for row in rows:
        assert re.search(r"\| \d+\.\d\d \| \d+\.\d\d \|$", row), row  # one data set: no "± 0.00"
    assert "–" not in table
