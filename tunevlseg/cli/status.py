"""``tvls-status FILE``: one row per study with its trial counts and best value."""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from tunevlseg.cli import _app

COLUMNS = ("complete", "running", "waiting", "failed", "pruned", "remaining")


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser("tvls-status", "Show the progress of every study of a sweep.")
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    return p


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.launch import current_plan
    from tunevlseg.config.loader import load_experiment

    experiment = load_experiment(args.experiment)
    plan = current_plan(experiment, read_only=True)
    rows = [study.progress.to_dict() for study in plan.studies]
    totals = {key: sum(row[key] for row in rows) for key in ("n_trials", *COLUMNS)}
    out = _app.data()
    if args.json:
        out.print_json(json.dumps({"sweep": experiment.spec.name, "studies": rows, "totals": totals}))
        return _app.EXIT_OK
    table = Table(title=f"Sweep {experiment.spec.name}", title_justify="left")
    table.add_column("study")
    for column in ("trials", *COLUMNS, "best"):
        table.add_column(column, justify="right")
    for row in rows:
        best = "–" if row["best_value"] is None else f"{row['best_value']:.4f}"
        table.add_row(row["name"], str(row["n_trials"]), *(str(row[c]) for c in COLUMNS), best)
    table.add_section()
    table.add_row("total", str(totals["n_trials"]), *(str(totals[c]) for c in COLUMNS), "")
    out.print(table)
    state = "complete" if totals["remaining"] == 0 else f"{totals['remaining']} trial(s) remaining"
    _app.messages().print(f"{len(rows)} studies: {state}")
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
