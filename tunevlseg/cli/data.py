"""``tvls-data check ROOT`` and ``tvls-data synth ROOT``: inspect a data set, or write a fake one.

``check`` prints what each split holds and every problem found (counts plus the first few
paths), and exits 1 when there is any error, 0 when the set is clean (warnings allowed).
``synth`` writes a small synthetic set in the real on-disk layout and prints its folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from tunevlseg.cli import _app

FORMATS = ("medvlsm", "natural")


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser("tvls-data", "Check a data set, or write a synthetic one.")
    commands = p.add_subparsers(dest="action", required=True, metavar="{check,synth}")

    check = commands.add_parser(
        "check",
        help="report missing, unreadable and inconsistent files (exit 1 on any error)",
        description="Check every split of a data set; exit 1 on any error, 0 when clean.",
    )
    check.add_argument("root", help="the data set folder")
    check.add_argument("--format", choices=FORMATS, default="medvlsm", help="on-disk layout")
    check.add_argument(
        "--split",
        action="append",
        dest="splits",
        metavar="NAME",
        help="check only this split (repeatable; default: train, val and test)",
    )
    check.add_argument("--examples", type=int, default=5, help="paths shown per problem kind")
    check.add_argument("--json", action="store_true", help="print JSON for scripts")
    check.add_argument("--debug", action="store_true", help="show tracebacks")

    synth = commands.add_parser(
        "synth",
        help="write a small synthetic data set (the layout of real ones)",
        description="Write a synthetic data set; an existing identical one is left alone.",
    )
    synth.add_argument("root", help="the folder to write (empty or written by synth)")
    synth.add_argument("--format", choices=FORMATS, default="medvlsm", help="on-disk layout")
    synth.add_argument("--n-train", type=int, default=24, metavar="N")
    synth.add_argument("--n-val", type=int, default=8, metavar="N")
    synth.add_argument("--n-test", type=int, default=8, metavar="N")
    synth.add_argument("--image-size", type=int, default=96, metavar="S", help="pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--classes", default=None, help="comma-separated class names (default: one class)"
    )
    synth.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunevlseg.data.check import check_dataset, iter_problem_rows
    from tunevlseg.data.medvlsm import SPLITS

    if args.examples < 0:
        raise _app.CommandError("--examples must be >= 0", _app.EXIT_USAGE)
    root = Path(args.root)
    if not root.is_dir():
        raise _app.CommandError(f"data set root {root} is not a folder", _app.EXIT_USAGE)
    messages = _app.messages()
    report = check_dataset(
        root,
        args.format,
        splits=tuple(args.splits or SPLITS),
        max_examples=args.examples,
        progress=lambda split, n: messages.print(f"checking {split}: {n} entries"),
    )
    out = _app.data()
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        summary = Table(title=f"{report.format} data set {root}", title_justify="left")
        for column, justify in (
            ("split", "left"),
            ("samples", "right"),
            ("images", "right"),
            ("classes", "left"),
            ("prompt keys", "left"),
        ):
            summary.add_column(column, justify=justify)  # type: ignore[arg-type]
        for s in report.splits:
            summary.add_row(
                s.split,
                str(s.samples),
                str(s.images),
                _short(s.classes),
                ", ".join(s.prompt_keys),
            )
        out.print(summary)
        if report.problems:
            problems = Table(title="Problems", title_justify="left")
            problems.add_column("kind")
            problems.add_column("severity")
            problems.add_column("count", justify="right")
            problems.add_column("first examples", overflow="fold")
            for kind, severity, count, examples in iter_problem_rows(report):
                problems.add_row(kind, severity, str(count), examples)
            out.print(problems)
    if report.ok:
        warned = f" ({report.n_warnings} warning(s))" if report.n_warnings else ""
        messages.print(f"clean{warned}")
        return _app.EXIT_OK
    kinds = sum(1 for g in report.problems.values() if g.is_error)
    messages.print(f"{report.n_errors} error(s) of {kinds} kind(s)")
    return _app.EXIT_FAILED


def synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural

    write = write_synthetic_medvlsm if args.format == "medvlsm" else write_synthetic_natural
    kwargs: dict[str, object] = {
        "n_train": args.n_train,
        "n_val": args.n_val,
        "n_test": args.n_test,
        "image_size": args.image_size,
        "seed": args.seed,
    }
    if args.classes is not None:
        kwargs["classes"] = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    try:
        root = write(Path(args.root), **kwargs)  # type: ignore[arg-type]
    except (ValueError, FileExistsError) as error:
        raise _app.CommandError(str(error), _app.EXIT_USAGE) from error
    _app.data().print(str(root))
    _app.messages().print(f"synthetic {args.format} data set ready")
    return _app.EXIT_OK


def _short(names: list[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, … ({len(names)})"


def command(args: argparse.Namespace) -> int:
    return check(args) if args.action == "check" else synth(args)


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
