"""``tvls-train FILE --study NAME``: one training of one study at fixed parameters, no sweep.

For trying a configuration by hand, debugging a learner, or re-running a sweep's best point:
nothing is read from or written to the study storage. Parameters not given take the fixed value
of the study's space or the default point (:mod:`tunevlseg.tuning.describe` states the rule),
and every value is printed with where it came from.

The run folder defaults to ``<output_dir>/train/<study folder>/run-<hash>``, the hash covering
the study's resolved settings, the parameters and the seed. The same command therefore finds
its own folder again: an interrupted run resumes from its last checkpoint, and a finished one
shows its stored result instead of training again.

While it trains, each epoch is one line on stderr: the epoch of ``max_epochs``, the training
loss, the validation Dice, IoU and loss, and the time since the start. A resumed run first lists
the epochs its checkpoint records, marked ``(from checkpoint)``.

``--describe`` trains nothing: it prints each learner's trainable-parameter count and its share
of the model, for the models as configured or (``--real-size``) for the real CLIPSeg sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tunevlseg.cli import _app

if TYPE_CHECKING:
    from tunevlseg.config.grid import StudySpec
    from tunevlseg.train.fit import EpochEnd
    from tunevlseg.tuning.describe import ChosenParams, ParamCount


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-train",
        "Train one study of an experiment file at fixed parameters (no sweep, no storage), "
        "or describe its learners' parameter counts.",
        _app.examples(
            "tvls-train experiments/demo.yaml --study clipseg-coop/synthetic-polyps "
            "--params lr=0.005 prompt_depth=2",
            "tvls-train experiments/medical.yaml --describe --real-size",
        ),
    )
    p.add_argument("experiment", nargs="?", help="the experiment YAML file")
    p.add_argument(
        "--study", help="study name, or a unique end of it (e.g. clipseg-coop/kvasir-seg)"
    )
    p.add_argument(
        "--params",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="parameter values (others: the space's fixed value or the default point)",
    )
    p.add_argument(
        "--out", type=Path, help="run folder (default: <output_dir>/train/<study>/run-<hash>)"
    )
    p.add_argument("--seed", type=int, help="random seed (default: training.seed)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--describe",
        action="store_true",
        help="print trainable-parameter counts per learner instead of training",
    )
    p.add_argument(
        "--real-size",
        action="store_true",
        help="with --describe: count on random models of the real sizes (CLIPSeg rd64, CRIS "
        "R50); no download",
    )
    return p


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["lr=0.005", "prompt_depth=2"]`` -> ``{"lr": "0.005", "prompt_depth": "2"}``."""
    given: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise _app.CommandError(f"--params takes KEY=VALUE, got {item!r}", _app.EXIT_USAGE)
        if key in given:
            raise _app.CommandError(f"--params: {key} given twice", _app.EXIT_USAGE)
        given[key] = value
    return given


def pick_study(studies: Sequence[StudySpec], query: str) -> StudySpec:
    """The study named ``query``, or the only one whose name ends with ``/<query>``."""
    query = query.strip("/")
    for spec in studies:
        if spec.name == query:
            return spec
    matches = [spec for spec in studies if spec.name.endswith("/" + query)]
    if len(matches) == 1:
        return matches[0]
    names = "\n  ".join(spec.name for spec in (matches or studies))
    what = f"{query!r} matches {len(matches)} studies" if matches else f"no study {query!r}"
    raise _app.CommandError(f"{what}; studies:\n  {names}", _app.EXIT_USAGE)


def run_folder(spec: StudySpec, params: dict[str, Any], seed: int) -> Path:
    """``<output_dir>/<sweep>/train/<study folder>/run-<digest of the run's identity>``."""
    from tunevlseg.paths import SweepPaths
    from tunevlseg.train.run_folder import identity_digest
    from tunevlseg.tuning.identity import trial_identity

    digest = identity_digest(trial_identity(spec, params, 0, seed))
    return (
        SweepPaths(Path(spec.output_dir), spec.sweep).sweep_dir
        / "train"
        / spec.folder
        / f"run-{digest[:10]}"
    )


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _params_table(chosen: ChosenParams, spec: StudySpec) -> Table:
    table = Table(title=f"Parameters of {spec.name}", title_justify="left")
    for column in ("parameter", "value", "source", "space"):
        table.add_column(column)
    space = spec.param_space
    for name, value in chosen.values.items():
        table.add_row(name, _format(value), chosen.sources[name], space[name].describe())
    if not chosen.values:
        table.add_row("(none)", "", "", "")
    return table


EPOCH_METRICS = (
    ("train_loss", "train loss"),
    ("val_dice", "val dice"),
    ("val_iou", "iou"),
    ("val_loss", "loss"),
)
"""What an epoch line shows, in order: the logged metric and its label."""


def epoch_line(end: EpochEnd, max_epochs: int, elapsed: float | None = None) -> str:
    """``epoch 2/5: train loss 0.6123, val dice 0.4123, iou 0.3012, loss 0.7012 (0:00:12)``.

    An epoch of an earlier attempt, passed again when a run resumes, ends in ``(from
    checkpoint)`` instead of a time (its checkpoint keeps the validation metrics only).
    """
    from tunevlseg.cluster.running import clock_text

    shown = [
        f"{label} {end.metrics[key]:.4f}" for key, label in EPOCH_METRICS if key in end.metrics
    ]
    line = f"epoch {end.completed}/{max_epochs}: {', '.join(shown) or 'no metrics'}"
    if end.replayed:
        return f"{line} (from checkpoint)"
    return line if elapsed is None else f"{line} ({clock_text(elapsed)})"


class EpochLines:
    """The fit's ``on_epoch_end`` hook of ``tvls-train``: one line per epoch, each once.

    ``elapsed`` counts from the hook's creation, just before the model is built.
    """

    def __init__(
        self, console: Console, max_epochs: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console
        self.max_epochs = max_epochs
        self.clock = clock
        self.started = clock()
        self.shown: set[int] = set()

    def __call__(self, end: EpochEnd) -> None:
        if end.completed in self.shown:
            return
        self.shown.add(end.completed)
        line = epoch_line(end, self.max_epochs, self.clock() - self.started)
        self.console.print(line, markup=False, highlight=False)


def _metrics_table(result: dict[str, Any]) -> Table:
    chosen = "best validation checkpoint" if result.get("epochs_run") else "no training"
    table = Table(title=f"Metrics ({chosen})", title_justify="left")
    for column in ("split", "dice", "iou"):
        table.add_column(column, justify="left" if column == "split" else "right")
    table.add_row("validation", f"{result['val_dice']:.4f}", f"{result['val_iou']:.4f}")
    table.add_row("test", f"{result['test_dice']:.4f}", f"{result['test_iou']:.4f}")
    return table


def _train(args: argparse.Namespace, studies: Sequence[StudySpec]) -> int:
    from tunevlseg.tuning.describe import ParamError, choose_params

    if not args.study:
        names = "\n  ".join(spec.name for spec in studies)
        raise _app.CommandError(f"--study is required (or --describe); studies:\n  {names}", 2)
    spec = pick_study(studies, args.study)
    try:
        chosen = choose_params(spec.param_space, parse_assignments(args.params), spec.learner)
    except ParamError as error:
        raise _app.CommandError(str(error), _app.EXIT_USAGE) from None
    seed = spec.training.seed if args.seed is None else args.seed
    out, err = _app.data(), _app.messages()
    _prepare(err, [spec])
    run_dir = args.out.resolve() if args.out else run_folder(spec, chosen.values, seed)

    from tunevlseg.train.paths import RunPaths
    from tunevlseg.tuning.objective import run_trial

    if RunPaths(run_dir).result.is_file():
        err.print(f"a finished run is in {run_dir}: showing its result (remove it to train again)")
    else:
        shown = ", ".join(f"{k}={_format(v)}" for k, v in chosen.values.items()) or "no parameters"
        err.print(f"training {spec.name} with {shown} (seed {seed}) in {run_dir}")
    from tunevlseg.tuning.identity import trial_identity

    identity = trial_identity(spec, chosen.values, 0, seed)
    epoch_lines = EpochLines(err, spec.training.max_epochs)
    result = run_trial(spec, chosen.values, run_dir, seed, identity, on_epoch_end=epoch_lines)
    if args.json:
        record = {
            "study": spec.name,
            "params": chosen.values,
            "sources": chosen.sources,
            "seed": seed,
            "run_dir": str(run_dir),
            "result": result,
        }
        out.print_json(json.dumps(record, default=str))
        return _app.EXIT_OK
    out.print(_params_table(chosen, spec))
    out.print(_metrics_table(result))
    epochs = result.get("epochs_run", 0)
    trainable, total = result.get("trainable_params", 0), result.get("total_params", 0)
    out.print(
        f"epochs run: {epochs}, best epoch: {result.get('best_epoch')}, trainable parameters: "
        f"{trainable:,} of {total:,}, run folder: {run_dir}"
    )
    return _app.EXIT_OK


def _prepare(err: Any, studies: Sequence[StudySpec]) -> None:
    """Write the synthetic assets the studies use, then fail early on missing data or models."""
    from tunevlseg.assets import preflight, prepare_synthetic

    for written in prepare_synthetic(studies):
        err.print(f"wrote {written}")
    problems = preflight(studies)
    if problems:
        raise _app.CommandError("\n  ".join(["missing inputs:", *problems]))


def _count_table(rows: Sequence[ParamCount], title: str) -> Table:
    from tunevlseg.catalog import LEARNERS
    from tunevlseg.config.spaces import TRAINING_PARAMS

    table = Table(title=title, title_justify="left")
    numbers = ("trainable", "total", "share")
    for column in ("model", "learner", "prompt depth", "settings", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for row in rows:
        hidden = ("prompt_depth", *TRAINING_PARAMS)
        others = {k: v for k, v in row.params.items() if k not in hidden}
        others.update(
            {k: v for k, v in row.settings.items() if k not in ("n_ctx", "use_upsampler")}
        )
        if LEARNERS[row.learner].trains and not row.settings.get("use_upsampler", True):
            others["upsampler"] = False
        if row.settings.get("n_ctx", 4) != 4:
            others["n_ctx"] = row.settings["n_ctx"]
        table.add_row(
            row.model,
            row.learner,
            "–" if row.prompt_depth is None else str(row.prompt_depth),
            " ".join(f"{k}={_format(v)}" for k, v in others.items()),
            f"{row.trainable:,}",
            f"{row.total:,}",
            f"{100 * row.share:.4f} %",
        )
    return table


def _describe(args: argparse.Namespace, studies: Sequence[StudySpec]) -> int:
    from tunevlseg.tuning.describe import ParamError, describe_studies

    if args.study:
        studies = [pick_study(studies, args.study)]
    given = parse_assignments(args.params)
    out, err = _app.data(), _app.messages()
    if args.real_size:
        from tunevlseg.tuning.describe import REAL_SIZE

        skipped = sorted({spec.model.key for spec in studies if spec.model.name not in REAL_SIZE})
        if skipped:
            err.print(f"no real-size build for: {', '.join(skipped)} (not counted)")
        err.print("building random models of the real sizes (no download) ...")
    else:
        _prepare(err, studies)
    try:
        rows = describe_studies(studies, given, real_size=args.real_size)
    except ParamError as error:
        raise _app.CommandError(str(error), _app.EXIT_USAGE) from None
    if not rows:
        raise _app.CommandError("no study to count")
    if args.json:
        out.print_json(json.dumps([row.to_dict() for row in rows], default=str))
        return _app.EXIT_OK
    scale = "real sizes (CLIPSeg rd64, CRIS R50)" if args.real_size else "models as configured"
    out.print(_count_table(rows, f"Trainable parameters, {scale}"))
    depths = " (real size: also at prompt depths 1 and 11)" if args.real_size else ""
    err.print(
        "default point: fixed values, first choices, middles of ranges (geometric for log "
        f"ranges){depths}; --params changes it"
    )
    return _app.EXIT_OK


def command(args: argparse.Namespace) -> int:
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment

    if args.real_size and not args.describe:
        raise _app.CommandError("--real-size only goes with --describe", _app.EXIT_USAGE)
    studies = expand(load_experiment(args.experiment)).studies
    if args.describe:
        return _describe(args, studies)
    return _train(args, studies)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; the file may also come after ``--params k=v ...``.

    ``--params`` takes every following word, so ``tvls-train --params lr=0.01 FILE`` would
    swallow the file: a word without ``=`` at the end of the list is taken as the file.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.experiment is None:
        files = [item for item in args.params if "=" not in item]
        if len(files) == 1 and args.params[-1] == files[0]:
            args.experiment = args.params.pop()
        else:
            parser.error(
                "the experiment file is missing: give it first (tvls-train FILE --params k=v ...) "
                "or end the --params list with -- before it"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
