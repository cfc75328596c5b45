"""``tvls-data check|synth|binarize``: inspect a data set, write a fake one, or convert a real one.

``check`` prints what each split holds, the split policy (a natural set without a test split:
test = its official val, val = a share of its train images) with the effective splits, and every
problem found (counts plus the first few paths); it exits 1 when there is any error, 0 when the
set is clean (warnings allowed).
``synth`` writes a small synthetic set in the real on-disk layout and prints its folder.
``binarize cityscapes|voc SRC DST`` converts an official Cityscapes or PASCAL VOC 2012 folder to
the binarized natural layout (:mod:`tunevlseg.data.binarize`), resumably, and prints what each
split holds; exit 1 when any image failed (the others are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table

from tunevlseg.cli import _app

FORMATS = ("medvlsm", "natural")

CHECK_JSON_KEYS = {
    "root": "the data set folder, as given",
    "format": "medvlsm or natural",
    "ok": "true when there is no error (warnings allowed); the exit code is 0 then",
    "errors": "number of errors",
    "warnings": "number of warnings",
    "splits": "per on-disk split: split, samples, images, classes, prompt_keys",
    "split_policy": "policy (explicit or val_from_train), val_fraction, seed, sources (the "
    "on-disk split each of train, val, test is read from), description, and effective: the "
    "splits training reads (split, source, held_out, samples, images, classes, "
    "masks_per_class)",
    "problems": "per kind of problem: kind, severity (error or warning), count, and examples "
    "(the first few, each path and detail)",
}
"""The keys of ``tvls-data check --json``, documented in its ``--help``."""

CHECK_EXAMPLES = (
    "tvls-data check data/medvlsm/kvasir_polyp",
    "tvls-data check data/natural/pascal_voc --format natural --json",
)
SYNTH_EXAMPLES = ("tvls-data synth /tmp/synth-polyps --n-train 24 --image-size 96",)
BINARIZE_EXAMPLES = (
    "tvls-data binarize voc VOCdevkit/VOC2012 data/natural/pascal_voc --jobs 8",
    "tvls-data binarize cityscapes /data/cityscapes data/natural/cityscapes --split train",
)


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-data",
        "Check a data set, write a synthetic one, or binarize Cityscapes / VOC.",
        _app.examples(CHECK_EXAMPLES[0], SYNTH_EXAMPLES[0], BINARIZE_EXAMPLES[0])
        + "\n\n`tvls-data ACTION --help` shows the options of each action.",
    )
    commands = p.add_subparsers(dest="action", required=True, metavar="{check,synth,binarize}")

    check = commands.add_parser(
        "check",
        help="report missing, unreadable and inconsistent files (exit 1 on any error)",
        description="Check every split of a data set; exit 1 on any error, 0 when clean.",
        epilog=_app.examples(*CHECK_EXAMPLES) + "\n\n" + _app.json_keys_help(CHECK_JSON_KEYS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("root", help="the data set folder")
    check.add_argument("--format", choices=FORMATS, default="medvlsm", help="on-disk layout")
    check.add_argument(
        "--split",
        action="append",
        dest="splits",
        metavar="NAME",
        help="check only this on-disk split (repeatable; default: the splits training reads: "
        "train, val and test, or train and val for a natural set without annotations/test)",
    )
    check.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="X",
        help="the experiment's data.val_fraction: share of the train images held out for "
        "validation when a natural set has no test split (default 0.1)",
    )
    check.add_argument("--examples", type=int, default=5, help="paths shown per problem kind")
    check.add_argument(
        "--json", action="store_true", help="print the report as one JSON object (keys below)"
    )
    check.add_argument("--debug", action="store_true", help="show tracebacks")

    synth = commands.add_parser(
        "synth",
        help="write a small synthetic data set (the layout of real ones)",
        description="Write a synthetic data set; an existing identical one is left alone.",
        epilog=_app.examples(*SYNTH_EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("root", help="the folder to write (empty or written by synth)")
    synth.add_argument("--format", choices=FORMATS, default="medvlsm", help="on-disk layout")
    synth.add_argument("--n-train", type=int, default=24, metavar="N")
    synth.add_argument("--n-val", type=int, default=8, metavar="N")
    synth.add_argument(
        "--n-test",
        type=int,
        default=8,
        metavar="N",
        help="natural: 0 writes no test split, like binarize (default 8)",
    )
    synth.add_argument("--image-size", type=int, default=96, metavar="S", help="pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--classes", default=None, help="comma-separated class names (default: one class)"
    )
    synth.add_argument("--debug", action="store_true", help="show tracebacks")

    binarize = commands.add_parser(
        "binarize",
        help="convert official Cityscapes or PASCAL VOC 2012 to the natural layout",
        description=_app.wrap(
            "Write one 0/255 mask per (image, class present) under DST/annotations/<split>/"
            "<class>/ and the images under DST/images/<split>/. A re-run skips finished images."
        ),
        epilog=_app.examples(*BINARIZE_EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    binarize.add_argument("dataset", choices=("cityscapes", "voc"), help="the source layout")
    binarize.add_argument(
        "src", help="the official folder (with leftImg8bit/ and gtFine/, or JPEGImages/ ...)"
    )
    binarize.add_argument("dst", help="the natural-layout folder to write (created if needed)")
    binarize.add_argument(
        "--split",
        action="append",
        dest="splits",
        metavar="NAME",
        help="an official split to convert (repeatable; default: train and val)",
    )
    binarize.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes")
    binarize.add_argument("--json", action="store_true", help="print JSON for scripts")
    binarize.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunevlseg.data.check import check_dataset, iter_problem_rows
    from tunevlseg.data.natural import DEFAULT_VAL_FRACTION

    if args.examples < 0:
        raise _app.CommandError("--examples must be >= 0", _app.EXIT_USAGE)
    val_fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
    if not 0.0 < val_fraction < 1.0:
        raise _app.CommandError("--val-fraction must be in (0, 1)", _app.EXIT_USAGE)
    root = Path(args.root)
    if not root.is_dir():
        raise _app.CommandError(f"data set root {root} is not a folder", _app.EXIT_USAGE)
    messages = _app.messages()
    report = check_dataset(
        root,
        args.format,
        splits=tuple(dict.fromkeys(args.splits)) if args.splits else None,
        max_examples=args.examples,
        val_fraction=val_fraction,
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
        _print_policy(out, report)
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


def binarize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from tunevlseg.data.binarize import DEFAULT_SPLITS, BinarizeError, plan_binarize, run_plan
    from tunevlseg.data.natural import class_prompt

    src, dst = Path(args.src), Path(args.dst)
    if args.jobs < 1:
        raise _app.CommandError("--jobs must be >= 1", _app.EXIT_USAGE)
    if not src.is_dir():
        raise _app.CommandError(f"source folder {src} is not a folder", _app.EXIT_USAGE)
    if dst.resolve() == src.resolve():
        raise _app.CommandError("DST must differ from SRC", _app.EXIT_USAGE)
    splits = tuple(dict.fromkeys(args.splits or DEFAULT_SPLITS))
    messages = _app.messages()
    try:
        plan = plan_binarize(args.dataset, src, dst, splits)
    except BinarizeError as error:
        raise _app.CommandError(str(error)) from error
    for split in splits:
        listed = sum(1 for job in plan.jobs if job.split == split)
        todo = sum(1 for job in plan.todo if job.split == split)
        messages.print(
            f"{args.dataset} {split}: {listed} image(s), {listed - todo} already written, "
            f"{todo} to write"
        )
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=messages,
        disable=not plan.todo,
    ) as progress:
        task = progress.add_task(f"binarizing {args.dataset}", total=len(plan.todo))
        report = run_plan(plan, jobs=args.jobs, advance=lambda: progress.advance(task))
    classes = list(plan.scheme.classes.values())
    out = _app.data()
    if args.json:
        out.print_json(json.dumps(report.to_dict(classes)))
    else:
        table = Table(title=f"{args.dataset} -> {dst}", title_justify="left")
        table.add_column("class folder")
        table.add_column("prompt")
        for s in report.splits:
            table.add_column(f"{s.split} masks", justify="right")
        table.add_row("(images)", "", *(str(s.images) for s in report.splits))
        for name in classes:
            table.add_row(name, class_prompt(name), *(str(s.masks[name]) for s in report.splits))
        out.print(table)
    empty = sum(s.without_class for s in report.splits)
    note = f"; {empty} image(s) without any class left out" if empty else ""
    messages.print(
        f"wrote {report.written} image(s), skipped {report.skipped} already written{note}"
    )
    if not report.ok:
        shown = "\n  ".join(report.failures[:5])
        more = f"\n  ... and {len(report.failures) - 5} more" if len(report.failures) > 5 else ""
        raise _app.CommandError(
            f"{len(report.failures)} image(s) failed (the others are kept; fix these and run "
            f"again):\n  {shown}{more}"
        )
    # Without --split the check reads what training reads: for binarize's train and val, test =
    # the official val and val = a share of train (it prints the effective splits).
    split_flags = (
        "" if set(splits) == set(DEFAULT_SPLITS) else " " + " ".join(f"--split {s}" for s in splits)
    )
    messages.print(f"check it with: tvls-data check {dst} --format natural{split_flags}")
    return _app.EXIT_OK


def _print_policy(out: Any, report: Any) -> None:
    """The split policy, and (when it is not the folders as they are) the effective splits.

    Printed because the policy decides which images model selection sees: a reader of the
    check must not have to know the rule to tell what a trial will validate and test on.
    """
    policy = report.policy
    out.print(f"split policy: {policy.describe()}")
    if policy.kind == "explicit" or not report.effective:
        return
    parts = []
    for e in report.effective:
        origin = f"held out from {e.source}" if e.held_out else f"from official {e.source}"
        parts.append(f"{e.split} {e.images} image{'' if e.images == 1 else 's'} ({origin})")
    out.print("effective splits: " + " / ".join(parts))
    table = Table(title="Effective splits (what training reads)", title_justify="left")
    for column, justify in (
        ("split", "left"),
        ("from", "left"),
        ("samples", "right"),
        ("images", "right"),
        ("classes", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for e in report.effective:
        origin = f"{e.source} (held out)" if e.held_out else e.source
        table.add_row(e.split, origin, str(e.samples), str(e.images), _short(e.classes))
    out.print(table)


def _short(names: list[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, … ({len(names)})"


def command(args: argparse.Namespace) -> int:
    return {"check": check, "synth": synth, "binarize": binarize}[args.action](args)


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
