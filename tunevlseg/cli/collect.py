"""``tvls-collect FILE``: the result tables of a sweep, complete or partial."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunevlseg.cli import _app


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser("tvls-collect", "Write the result tables of a sweep from its study storage.")
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--out", type=Path, help="folder for the tables (default: <output_dir>/results)")
    return p


def command(args: argparse.Namespace) -> int:
    from tunevlseg.collect.report import write_reports
    from tunevlseg.config.loader import load_experiment

    experiment = load_experiment(args.experiment)
    try:
        report = write_reports(experiment, args.out)
    except FileNotFoundError as error:
        raise _app.CommandError(str(error)) from None
    _app.data().print(report.main_markdown, markup=False)
    _app.messages().print(f"wrote {', '.join(str(f) for f in report.files)}")
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
