"""Per-trial fixed cost: from process start to the first training step of a tiny-model trial.

Sets up a one-study sweep like the demo (tiny CLIPSeg at 96 px, VPT, synthetic polyps, journal
storage, one WAITING trial per run) in a temporary folder, then starts fresh worker processes
(``--runs`` of them, one trial each) that run the real worker path,
``tunevlseg.cluster.worker.run_task`` (as submitit's local executor would call it, minus
submitit's own job wrapper). Each child stamps, relative to the moment the parent spawned it:

* ``interpreter``: the first line of the child runs;
* the imports, one group after the other (each group's time excludes what earlier groups already
  loaded): torch, transformers (+ the CLIPSeg modelling module), lightning, optuna, submitit,
  then our modules (worker, objective, fit, clipseg, data module);
* in ``run_task`` (through wrappers around the functions it calls): storage open, claim (read,
  WAITING -> RUNNING, owner stamps, TPE sampling), model build (``build_model``; the number of
  ``from_pretrained`` calls is counted too), data module construction, Lightning trainer
  construction (``_make_trainer``), and trainer setup up to the first ``training_step``
  (data module ``setup``, loaders, optimiser, callbacks);
* the first training step; then the child stops (the trial stays RUNNING in a throwaway journal)
  and runs a second trial in the same, now warm, process up to its first step (``warm 2nd``):
  what each further trial would cost if one process ran several trials.

Medians over the runs are printed per phase. ``--src DIR`` runs the children against another
copy of the ``tunevlseg`` package (e.g. a patched copy in /tmp) instead of the installed one; the
parent alternates between the installed and the ``--src`` copy run by run, so both see the same
machine load. ``--importtime`` also prints the biggest cumulative entries of ``python -X
importtime`` for the worker's imports.

Reproduce::

    .venv/bin/python benchmarks/trial_startup.py --runs 5 --importtime
    .venv/bin/python benchmarks/trial_startup.py --runs 5 --src /tmp/tvls-patched   # before/after
"""

from __future__ import annotations

import time

_T_START = time.time()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from contextlib import suppress  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

IMPORT_GROUPS = [
    ("import torch", ["torch"]),
    (
        "import transformers+CLIPSeg",
        ["transformers", "transformers.models.clipseg.modeling_clipseg"],
    ),
    ("import lightning", ["lightning"]),
    ("import optuna", ["optuna"]),
    ("import submitit", ["submitit"]),
    (
        "import tunevlseg modules",
        [
            "tunevlseg.cluster.worker",
            "tunevlseg.tuning.objective",
            "tunevlseg.train.fit",
            "tunevlseg.models.clipseg",
            "tunevlseg.data.datamodule",
        ],
    ),
]

EXPERIMENT = """name: startup
output_dir: {out}
storage: journal://{out}/optuna.journal
models:
  - {{name: clipseg, pretrained: {assets}/clipseg-tiny, image_size: 96, synthetic: true}}
learners: [vpt]
datasets:
  - {{name: synthetic-polyps, category: Non-Radiology, root: {assets}/synthetic-polyps, synthetic: true}}
data: {{prompt_key: p1, num_workers: 0}}
training: {{max_epochs: 5, patience: 3, batch_size: 8, effective_batch_size: 8, precision: "32"}}
search:
  n_trials: {n_trials}
  n_startup_trials: 1
  space: {{prompt_depth: {{low: 1, high: 3}}, lr: {{low: 1.0e-3, high: 1.0e-2}}}}
cluster: {{parallelism: 2, timeout_min: 30}}
"""


class FirstStep(BaseException):
    """Raised at the first training step: stops the trial (not an Exception: stays RUNNING)."""


def child(storage: str, study: str, number: int, t0: float, src: str | None) -> None:
    stamps: dict[str, float] = {"interpreter": _T_START - t0}
    if src:
        # Load tunevlseg from the given copy, not the editable install (its finder goes first).
        sys.meta_path[:] = [
            f
            for f in sys.meta_path
            if "editable" not in type(f).__name__.lower()
            and "editable" not in getattr(f, "__name__", "").lower()
        ]
        sys.path.insert(0, src)
    os.environ.setdefault("TVLS_THREADS", "1")  # what the local launcher sets at parallelism 2
    import importlib

    last = time.time()
    for label, modules in IMPORT_GROUPS:
        for module in modules:
            importlib.import_module(module)
        now = time.time()
        stamps[label] = now - last
        last = now

    import transformers

    import tunevlseg
    from tunevlseg.cluster import worker
    from tunevlseg.train import fit as fitmod, module as modmod
    from tunevlseg.tuning import objective

    assert not src or str(Path(tunevlseg.__file__).resolve()).startswith(
        str(Path(src).resolve())
    ), tunevlseg.__file__
    marks: list[tuple[str, float]] = []
    counts = {"from_pretrained": 0}

    def wrap(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            result = original(*args, **kwargs)
            marks.append((label, time.time()))
            return result

        setattr(owner, name, wrapper)

    wrap(worker, "open_storage", "storage open")
    wrap(worker, "claim_trial", "claim + sample")
    wrap(objective, "build_model", "model build")
    wrap(objective, "build_datamodule", "data module construct")
    wrap(fitmod, "_make_trainer", "trainer construct")
    original_fp = transformers.PreTrainedModel.from_pretrained.__func__

    def counting(cls: type, *args: object, **kwargs: object) -> object:
        counts["from_pretrained"] += 1
        return original_fp(cls, *args, **kwargs)

    transformers.PreTrainedModel.from_pretrained = classmethod(counting)
    original_step = modmod.SegmentationModule.training_step

    def training_step(self: object, batch: object, batch_idx: int) -> object:
        if batch_idx == 0:
            marks.append(("trainer setup", time.time()))
            loss = original_step(self, batch, batch_idx)
            loss.backward()  # the step's forward + backward, as the trainer would do
            marks.append(("first step (fwd+bwd)", time.time()))
            raise FirstStep
        return original_step(self, batch, batch_idx)

    modmod.SegmentationModule.training_step = training_step

    def one_trial(trial_number: int, prefix: str) -> float:
        marks.clear()
        marks.append(("", time.time()))
        with suppress(FirstStep):
            worker.run_task(worker.TrialTask(storage, study, trial_number))
        # The gap between phases goes to the phase that ends (e.g. lightning.seed_everything
        # to "model build"): phases are consecutive, so they add up to the total.
        for (_, a), (label, b) in itertools.pairwise(marks):
            stamps[prefix + label] = stamps.get(prefix + label, 0.0) + (b - a)
        return marks[-1][1]

    stamps["total"] = one_trial(number, "") - t0
    stamps["from_pretrained calls"] = counts["from_pretrained"]
    # A second trial in the same (warm) process: what a worker that ran several trials would
    # pay per trial after the first.
    began = time.time()
    stamps["warm 2nd trial total"] = one_trial(number + 1, "warm 2nd: ") - began
    print("STAMPS " + json.dumps(stamps), flush=True)


def setup_sweep(work: Path, n_trials: int) -> tuple[str, str]:
    import optuna

    from tunevlseg.assets import prepare_synthetic
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import parse_experiment
    from tunevlseg.tuning.storage import open_storage
    from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    text = EXPERIMENT.format(out=work / "out", assets=work / "assets", n_trials=n_trials)
    experiment = parse_experiment(text, work / "startup.yaml")
    expansion = expand(experiment)
    spec = expansion.studies[0]
    from tunevlseg.cluster.launch import sweep_storage

    url = sweep_storage(experiment)
    storage = open_storage(url)
    ensure_studies(storage, [spec])
    prepare_synthetic([spec])
    enqueue_missing(storage, spec)
    return url.url, spec.name


def importtime(top: int) -> None:
    code = "; ".join(f"import {m}" for _, mods in IMPORT_GROUPS for m in mods)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|")
        rows.append((int(cum_us), int(self_us), name[1:]))  # name keeps its depth indentation
    total = sum(c for c, _, n in rows if not n.startswith(" "))
    print(f"-X importtime: {total / 1e6:.2f} s for the worker's imports (top level sum)")
    for pkg in (
        "torchmetrics",
        "torchmetrics.functional.text",
        "torchmetrics.functional.audio",
        "torch._dynamo",
        "scipy.signal",
        "scipy.stats",
        "sympy",
        "torch._meta_registrations",
        "transformers.models.clipseg.modeling_clipseg",
        "optuna",
        "sqlalchemy",
        "alembic",
        "albumentations",
        "pydantic",
        "matplotlib",
        "pandas",
        "submitit",
    ):
        firsts = [c for c, _, n in rows if n.strip() == pkg]
        if firsts:
            print(f"  {pkg:45s} {max(firsts) / 1e6:6.2f} s cumulative (where first imported)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--src", type=Path, help="a copy of the package's parent folder to compare")
    p.add_argument("--importtime", action="store_true")
    p.add_argument(
        "--child",
        nargs=5,
        metavar=("STORAGE", "STUDY", "NUMBER", "T0", "SRC"),
        help=argparse.SUPPRESS,
    )
    args = p.parse_args()
    if args.child:
        storage, study, number, t0, src = args.child
        child(storage, study, int(number), float(t0), src or None)
        return
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()}")
    if args.importtime:
        importtime(20)
    variants = [("installed", "")] + ([("patched", str(args.src))] if args.src else [])
    work = Path(tempfile.mkdtemp(prefix="tvls-startup-"))
    try:
        storage, study = setup_sweep(work, 2 * (args.runs * len(variants) + 1))
        # one untimed run warms the page cache for both variants
        order = [variants[0]] + [v for _ in range(args.runs) for v in variants]
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
        for number, (name, src) in enumerate(order):
            t0 = time.time()
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    storage,
                    study,
                    str(2 * number),
                    repr(t0),
                    src,
                ],
                capture_output=True,
                text=True,
                cwd=tempfile.gettempdir(),
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("STAMPS ")), None)
            if line is None:
                raise RuntimeError(f"child failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            if number == 0:
                continue
            results[name].append(json.loads(line[len("STAMPS ") :]))
            print(f"  run {number} ({name}): {results[name][-1]['total']:.2f} s", flush=True)
        keys = list(results[variants[0][0]][0])
        header = "phase".ljust(28) + "".join(f"{n:>12s}" for n, _ in variants)
        print(f"median seconds over {args.runs} runs per variant, process spawn -> first step:")
        print(header)
        for key in keys:
            row = key.ljust(28)
            for name, _ in variants:
                row += f"{statistics.median(r[key] for r in results[name]):12.3f}"
            print(row)
        if args.src:
            a = statistics.median(r["total"] for r in results["installed"])
            b = statistics.median(r["total"] for r in results["patched"])
            print(f"patched/installed total = {b / a:.3f} ({a - b:+.2f} s per trial)")
        print(f"load after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
