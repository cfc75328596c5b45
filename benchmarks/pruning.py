"""Pruning: epochs spent, wall time and best fully trained value, no pruning vs ASHA / Hyperband / median.

Every pruner is built by ``tunevlseg.tuning.pruners.build_pruner`` from a ``search.pruner``
block validated by the experiment schema, so it is configured exactly as a sweep configures it
(resources are epochs; a trial reports its objective at step = epochs completed, 1, 2, ...).
``--pruner`` takes the YAML forms' content: ``asha`` or ``asha:min_resource=3,reduction_factor=2``
(repeatable; the label printed is the argument itself). Default: none, asha, hyperband, median
with their schema defaults (ASHA and Hyperband: ``min_resource 1``, ``reduction_factor 3``;
median: 5 startup trials, no warm-up).

**Part a: synthetic learning curves, real cross-process pruning** (``--part a``). For each seed
and each pruner, one study in a fresh JournalStorage file (opened with the project's
``open_storage``) gets ``--trials`` WAITING trials, as a launch enqueues them. ``--workers``
spawned processes (started together behind a barrier: interpreter start and imports are not
timed) take trial numbers in order from a shared counter, as the local launcher starts trials
``parallelism`` at a time. Per trial, a worker loads the study with the pruner and a fresh
sampler, claims the trial (WAITING -> RUNNING through ``storage.set_trial_state_values``, the
worker's atomic claim), samples its parameters through ``optuna.Trial``, and then, per epoch:
sleeps ``--epoch-seconds`` (the epoch's "training"), calls ``trial.report(value, step=epoch)``
and ``trial.should_prune()`` (which reads every other process's reports from the shared
journal) and, when told to, ``tell(PRUNED)``. The sampler is the configuration of
``tunevlseg.tuning.studies.make_sampler``, reproduced directly: ``TPESampler(constant_liar=True,
multivariate=True, n_startup_trials=--startup)`` with a per-trial seed. That seed hashes
(benchmark seed, trial number) without the pruner's name, so a trial number gets the same seed
under every pruner and the random startup trials are the same ones: seeds pair the pruners.
``should_prune`` is not asked after a trial's last epoch: that trial is fully trained
(``--prune-last-epoch`` asks there too, as a hook run after every epoch would). A complete
trial is told the best value it reported (its best checkpoint's, as the worker tells it).
Optional early stopping (``--patience P``, 0 = off): a trial also ends, COMPLETE, after P
epochs without a new best reported value (Lightning's rule, min_delta 0).

The curve family (CoOp's search space of ``tunevlseg/config/spaces.py``; Dice, maximised)::

    u = log10(lr),  lr in [1e-5, 5e-3] log;  w = log10(weight_decay), in [1e-5, 1e-2] log;
    d = prompt_depth, int in [1, 11]
    final(p) = 0.85 - A(u) - 0.06 ((d - 6) / 5)^2 - 0.01 ((w + 3.5) / 1.5)^2
               A(u) = 0.04 (u + 3)^2 below lr = 1e-3, 0.15 (u + 3)^2 above (too high an lr hurts
               faster; final 0.69 at lr 1e-5, 0.78 at 5e-3)
    tau(p)   = 6 * 10^(-0.5 (u + 3)) * (1 + 0.05 (d - 1)) epochs  (a larger lr learns faster:
               7.5 epochs at the optimum, 3.4 at lr 5e-3, 75 at 1e-5; deeper prompts are slower)
    value(epoch) = 0.30 + (final(p) - 0.30) (1 - exp(-epoch / tau(p))) + N(0, 0.01^2), in [0, 1]

0.30 is the Dice of untrained prompts (epoch 0). The optimum is lr 1e-3, depth 6, weight decay
10^-3.5, final 0.85 (the script prints the best fully trained value found on a dense grid). The
per-epoch noise is the validation-set noise, drawn from (seed, trial number). The family has
the short-horizon bias real tuning has: lr 5e-3 leads the optimum until epoch 14 and lr 2.5e-3
until epoch 23, but they end at 0.78 and 0.83, so early rungs rank by speed as much as by final
quality. It is not shaped to help any pruner.

**The value credited** to a study is the best *fully trained* value among its COMPLETE trials
only: the noise-free ``value`` at the epoch the trial stopped (``--max-epochs``, or earlier
under ``--patience``). A pruned trial never reached its final value, so it is not credited,
whatever it reported. The gap is ``(best - best_none) / best_none`` in %, from the means over
seeds (and per seed, paired by seed, mean ± std).

Reported per pruner, mean ± std over ``--seeds``: total epochs spent (the sum over trials of the
epochs each trained), its ratio to no pruning, wall time (barrier -> last worker done: sleeps,
sampling, journal reads and writes), the best credited value, the gap, and the number of
complete and pruned trials. The issue's target: ASHA spends >= 2.5x fewer epochs than no
pruning, for a best value within 1 % of no pruning's.

**Part b: a tiny-model sweep with the real launcher** (``--part b``). For each pruner (and
``--b-seeds`` seeds), an experiment file modelled on ``experiments/demo.yaml`` (tiny CLIPSeg,
CoOp, the synthetic polyps the tool writes itself, ``precision: "32"``, ``parallelism:
--workers``, ``--b-trials`` trials, ``--b-max-epochs`` epochs, early stopping off unless
``--b-patience``) with that ``search.pruner``, output in a temporary folder, is run with
``tvls-launch FILE --local`` (a subprocess: the real command). Reported: the launch's wall time
and CPU time (of the launch and every trial process it waited for; the machine's other load
does not inflate it), and from its journal (``<output_dir>/optuna.journal``; the study name
comes from ``tunevlseg.config.grid.expand``): total epochs (per trial the largest step of
``intermediate_values``, i.e. epochs completed; else the ``epochs_run`` user attribute), the
best validation value among COMPLETE trials, and the counts of pruned and failed trials.
``--keep`` keeps the folder (experiment files, launch logs, journals). Needs a worker that
reports epochs and asks the pruner (``grep -n make_pruner tunevlseg/cluster/worker.py``);
without it every trial runs in full.

Reproduce::

    .venv/bin/python benchmarks/pruning.py --part a                # ~6 min on 2 cores
    .venv/bin/python benchmarks/pruning.py --part a --pruner none --pruner asha:min_resource=5 \
        --pruner asha:min_resource=4,reduction_factor=2            # other ASHA settings
    .venv/bin/python benchmarks/pruning.py --part a --first-seed 5 # fresh seeds
    .venv/bin/python benchmarks/pruning.py --part b                # ~6 min per seed on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRUNERS = ["none", "asha", "hyperband", "median"]

# --- the synthetic learning curves (part a) ------------------------------------------------

SPACE = {  # CoOp's space in tunevlseg/config/spaces.py
    "lr": (1e-5, 5e-3),
    "weight_decay": (1e-5, 1e-2),
    "prompt_depth": (1, 11),
}
START_DICE = 0.30
NOISE_SD = 0.01


def final_dice(params: dict[str, Any]) -> float:
    """The asymptote a trial's validation Dice converges to."""
    u = math.log10(params["lr"]) + 3.0
    w = math.log10(params["weight_decay"]) + 3.5
    d = params["prompt_depth"] - 6
    lr_cost = (0.04 if u < 0 else 0.15) * u * u
    return 0.85 - lr_cost - 0.06 * (d / 5) ** 2 - 0.01 * (w / 1.5) ** 2


def tau_epochs(params: dict[str, Any]) -> float:
    """Epochs to 63 % of the way from the start value to the asymptote."""
    u = math.log10(params["lr"]) + 3.0
    return 6.0 * 10 ** (-0.5 * u) * (1 + 0.05 * (params["prompt_depth"] - 1))


def clean_dice(params: dict[str, Any], epoch: int) -> float:
    """Noise-free validation Dice after ``epoch`` epochs."""
    final = final_dice(params)
    return START_DICE + (final - START_DICE) * (1 - math.exp(-epoch / tau_epochs(params)))


def grid_optimum(max_epochs: int) -> tuple[float, dict[str, Any]]:
    """The best fully trained value on a dense grid of the space (the known optimum)."""
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    for i in range(121):
        lr = 10 ** (-5 + i * (math.log10(5e-3) + 5) / 120)
        for j in range(31):
            wd = 10 ** (-5 + j * 3 / 30)
            for depth in range(1, 12):
                p = {"lr": lr, "weight_decay": wd, "prompt_depth": depth}
                value = clean_dice(p, max_epochs)
                if value > best[0]:
                    best = (value, p)
    return best


def trial_seed(seed: int, number: int) -> int:
    """Per-trial sampler seed, as ``tunevlseg.tuning.studies.trial_seed`` (minus the study name)."""
    return int.from_bytes(
        hashlib.sha256(f"{seed}:pruning-bench:{number}".encode()).digest()[:4], "little"
    )


def pruner_settings(arg: str) -> Any:
    """``asha:min_resource=3,reduction_factor=2`` -> the schema's validated pruner block."""
    from tunevlseg.config.schema import SearchSettings

    name, _, rest = arg.partition(":")
    block: dict[str, Any] = {"name": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        block[key.strip()] = json.loads(value) if value.strip() not in ("", "null") else None
    return SearchSettings(pruner=block).pruner


# --- part a: one worker process --------------------------------------------------------------


def _worker(
    url: str, study_name: str, cfg: dict[str, Any], counter: Any, barrier: Any, out: Any
) -> None:
    import random

    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning.pruners import build_pruner
    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(parse_storage_url(url))
    settings = pruner_settings(cfg["pruner"])
    optuna.load_study(study_name=study_name, storage=storage)  # replay before the clock starts
    errors: list[str] = []
    barrier.wait()
    while True:
        with counter.get_lock():
            number = counter.value
            counter.value += 1
        if number >= cfg["trials"]:
            break
        try:
            # As claim_trial: a fresh study object with this trial's sampler and pruner, then
            # the claim.
            pruner = build_pruner(settings, cfg["max_epochs"])
            sampler = optuna.samplers.TPESampler(
                seed=trial_seed(cfg["seed"], number),
                n_startup_trials=cfg["startup"],
                constant_liar=True,
                multivariate=True,
            )
            study = optuna.load_study(
                study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                errors.append(f"trial {number}: claimed by another worker")
                continue
            trial = optuna.Trial(study, trial_id)
            params = {
                "lr": trial.suggest_float("lr", *SPACE["lr"], log=True),
                "weight_decay": trial.suggest_float(
                    "weight_decay", *SPACE["weight_decay"], log=True
                ),
                "prompt_depth": trial.suggest_int("prompt_depth", *SPACE["prompt_depth"]),
            }
            noise = random.Random(f"{cfg['seed']}:{number}")
            best, since_best = -math.inf, 0
            state = TrialState.COMPLETE
            for epoch in range(1, cfg["max_epochs"] + 1):
                time.sleep(cfg["epoch_seconds"])
                value = min(1.0, max(0.0, clean_dice(params, epoch) + noise.gauss(0.0, NOISE_SD)))
                trial.report(value, step=epoch)
                if value > best:
                    best, since_best = value, 0
                else:
                    since_best += 1
                # The last epoch: fully trained, or early stopping ends the trial (COMPLETE).
                last = epoch == cfg["max_epochs"] or bool(
                    cfg["patience"] and since_best >= cfg["patience"]
                )
                if (not last or cfg["prune_last"]) and trial.should_prune():
                    state = TrialState.PRUNED
                    break
                if last:
                    break
            if state == TrialState.PRUNED:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, best)
        except Exception as error:  # noqa: BLE001 - reported by the parent
            errors.append(f"trial {number}: {type(error).__name__}: {error}"[:300])
    out.put((time.time(), errors))


@dataclass
class StudyResult:
    epochs: int
    wall_s: float
    best: float  # best fully trained (noise-free) value among COMPLETE trials
    complete: int
    pruned: int
    other: int
    pruned_last: int  # pruned after their last epoch (only with --prune-last-epoch)
    errors: list[str] = field(default_factory=list)


def run_study(work: Path, pruner: str, seed: int, args: argparse.Namespace) -> StudyResult:
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    tag = hashlib.sha256(pruner.encode()).hexdigest()[:8]
    url = f"journal://{work}/a-{seed}-{tag}.journal"
    name = f"pruning-{seed}-{tag}"
    storage = open_storage(parse_storage_url(url))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for _ in range(args.trials):
        study.enqueue_trial({}, skip_if_exists=False)
    cfg = {
        "pruner": pruner,
        "max_epochs": args.max_epochs,
        "trials": args.trials,
        "seed": seed,
        "startup": args.startup,
        "epoch_seconds": args.epoch_seconds,
        "patience": args.patience,
        "prune_last": args.prune_last_epoch,
    }
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    barrier = ctx.Barrier(args.workers + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, name, cfg, counter, barrier, out))
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.time()
    ends = [out.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    wall = max(end for end, _ in ends) - start
    trials = optuna.load_study(study_name=name, storage=open_storage(parse_storage_url(url))).trials
    epochs = sum(max(t.intermediate_values, default=0) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(
        (clean_dice(t.params, max(t.intermediate_values)) for t in complete), default=math.nan
    )
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    # Pruned once fully trained: the trial spent every epoch and is not credited.
    last = sum(1 for t in pruned if max(t.intermediate_values) == args.max_epochs)
    return StudyResult(
        epochs,
        wall,
        best,
        len(complete),
        len(pruned),
        len(trials) - len(complete) - len(pruned),
        last,
        [e for _, errs in ends for e in errs],
    )


def _ms(values: list[float], fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(sd, fmt.lstrip('+'))}"


def part_a(args: argparse.Namespace) -> None:
    opt_value, opt_params = grid_optimum(args.max_epochs)
    print(
        f"part a: {args.trials} trials x {args.max_epochs} epochs max, {args.workers} worker processes, "
        f"{args.epoch_seconds * 1000:.0f} ms per epoch, TPE startup {args.startup}, "
        f"patience {args.patience or 'off'}, "
        f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}"
        + (", pruner asked after the last epoch too" if args.prune_last_epoch else "")
    )
    print(
        f"  known optimum (grid): {opt_value:.4f} at lr {opt_params['lr']:.2e}, depth "
        f"{opt_params['prompt_depth']}, weight decay {opt_params['weight_decay']:.1e}"
    )
    work = Path(tempfile.mkdtemp(prefix="tvls-pruning-a-"))
    results: dict[str, list[StudyResult]] = {p: [] for p in args.pruner}
    try:
        # Pruners interleaved per seed: they share the machine's load.
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for pruner in args.pruner:
                r = run_study(work, pruner, seed, args)
                results[pruner].append(r)
                print(
                    f"  seed {seed} {pruner:40s} epochs {r.epochs:5d}  wall {r.wall_s:6.1f} s  best "
                    f"{r.best:.4f}  complete {r.complete:3d}  pruned {r.pruned:3d}"
                    + (f"  other {r.other}" if r.other else "")
                    + (
                        f"  pruned at epoch {args.max_epochs}: {r.pruned_last}"
                        if r.pruned_last
                        else ""
                    )
                    + (f"  ERRORS {len(r.errors)}: {r.errors[0]}" if r.errors else ""),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = args.pruner[0]
    base_epochs = statistics.mean(r.epochs for r in results[base])
    base_best = statistics.mean(r.best for r in results[base])
    print(f"\npart a, mean ± std over {args.seeds} seeds (ratio and gap against {base!r}):")
    print(
        f"{'pruner':40s} {'epochs':>15s} {'fewer':>6s} {'wall s':>13s} {'best (complete)':>17s} "
        f"{'gap':>7s} {'gap per seed':>16s} {'complete':>11s} {'pruned':>11s}"
    )
    for pruner, rs in results.items():
        mean_epochs = statistics.mean(r.epochs for r in rs)
        gap = (statistics.mean(r.best for r in rs) - base_best) / base_best * 100
        paired = [(r.best - b.best) / b.best * 100 for r, b in zip(rs, results[base], strict=True)]
        print(
            f"{pruner:40s} {_ms([r.epochs for r in rs], '.0f'):>15s} {base_epochs / mean_epochs:5.2f}x "
            f"{_ms([r.wall_s for r in rs], '.1f'):>13s} {_ms([r.best for r in rs], '.4f'):>17s} "
            f"{gap:+6.2f}% {_ms(paired, '+.2f') + '%':>16s} {_ms([r.complete for r in rs], '.1f'):>11s} "
            f"{_ms([r.pruned for r in rs], '.1f'):>11s}"
        )
    for pruner in args.pruner:
        if pruner.split(":")[0] == "asha":
            fewer = base_epochs / statistics.mean(r.epochs for r in results[pruner])
            gap = (statistics.mean(r.best for r in results[pruner]) - base_best) / base_best * 100
            met = fewer >= 2.5 and gap >= -1.0
            print(
                f"target ({pruner}): >= 2.5x fewer epochs ({fewer:.2f}x) with best within 1 % "
                f"({gap:+.2f} %): {'met' if met else 'NOT met'}"
            )


# --- part b: tiny-model sweeps through tvls-launch ---------------------------------------------

EXPERIMENT_B = """# written by benchmarks/pruning.py (part b), modelled on experiments/demo.yaml
name: {name}
output_dir: {out}
models:
  - {{name: clipseg, pretrained: {assets}/clipseg-tiny, image_size: 96, synthetic: true}}
learners: [coop]
datasets:
  - {{name: synthetic-polyps, category: Non-Radiology, root: {assets}/synthetic-polyps, synthetic: true}}
data: {{prompt_key: p1, num_workers: 0}}
training: {{max_epochs: {max_epochs}, patience: {patience}, batch_size: 8, effective_batch_size: 8, precision: "32"}}
search:
  n_trials: {trials}
  n_startup_trials: {startup}
  seed: {seed}
  space: {{prompt_depth: {{low: 1, high: 3}}, lr: {{low: 1.0e-4, high: 1.0e-2}}}}
  pruner: {pruner}
cluster: {{parallelism: {parallelism}, timeout_min: 30}}
"""


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process (and their reaped children)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sweep(work: Path, pruner: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    settings = pruner_settings(pruner)
    tag = hashlib.sha256(pruner.encode()).hexdigest()[:8]
    out = work / f"b-{seed}-{tag}"
    path = work / f"b-{seed}-{tag}.yaml"
    path.write_text(
        EXPERIMENT_B.format(
            name=f"prune-{settings.name}-{seed}",
            out=out,
            assets=work / "assets",
            max_epochs=args.b_max_epochs,
            patience=args.b_patience,
            trials=args.b_trials,
            startup=args.b_startup,
            seed=seed,
            parallelism=args.workers,
            pruner=json.dumps(settings.model_dump(mode="json")),
        )
    )
    spec = expand(load_experiment(path)).studies[0]
    launch = [str(Path(sys.executable).with_name("tvls-launch")), str(path), "--local"]
    began, cpu_before = time.time(), _children_cpu()
    with open(work / f"b-{seed}-{tag}.log", "w") as log:
        done = subprocess.run(
            launch, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work
        )
    wall, cpu = time.time() - began, _children_cpu() - cpu_before
    if done.returncode != 0:
        tail = (work / f"b-{seed}-{tag}.log").read_text()[-2000:]
        print(f"  tvls-launch exited with {done.returncode}:\n{tail}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(parse_storage_url(f"journal://{out}/optuna.journal"))
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials

    def epochs(t: Any) -> int:
        if t.intermediate_values:
            return int(max(t.intermediate_values))
        return int(t.user_attrs.get("epochs_run") or 0)

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    better = max if spec.search.direction == "maximize" else min
    return {
        "epochs": sum(epochs(t) for t in trials),
        "wall_s": wall,
        "cpu_s": cpu,
        "best": better((t.value for t in complete), default=math.nan),
        "complete": len(complete),
        "pruned": sum(1 for t in trials if t.state == TrialState.PRUNED),
        "failed": sum(1 for t in trials if t.state == TrialState.FAIL),
        "with_steps": sum(1 for t in trials if t.intermediate_values),
        "rc": done.returncode,
        "objective": spec.search.objective,
    }


def part_b(args: argparse.Namespace) -> None:
    worker = (ROOT / "tunevlseg" / "cluster" / "worker.py").read_text()
    if "make_pruner" not in worker:
        print(
            "part b: tunevlseg/cluster/worker.py does not call make_pruner yet: trials report no "
            "epochs and are never pruned; the figures below would all be no pruning's"
        )
    print(
        f"part b: tvls-launch --local, tiny CLIPSeg + CoOp on synthetic polyps, {args.b_trials} "
        f"trials x {args.b_max_epochs} epochs max (patience {args.b_patience}), parallelism "
        f"{args.workers}, seeds {args.first_seed}..{args.first_seed + args.b_seeds - 1}"
    )
    work = Path(tempfile.mkdtemp(prefix="tvls-pruning-b-"))
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in args.pruner}
    try:
        for seed in range(args.first_seed, args.first_seed + args.b_seeds):
            for pruner in args.pruner:
                r = run_sweep(work, pruner, seed, args)
                results[pruner].append(r)
                print(
                    f"  seed {seed} {pruner:40s} epochs {r['epochs']:4d}  wall {r['wall_s']:6.1f} s  "
                    f"cpu {r['cpu_s']:6.1f} s  best {r['objective']} {r['best']:.4f}  "
                    f"complete {r['complete']:2d}  pruned {r['pruned']:2d}"
                    f"  failed {r['failed']}  trials with epoch reports {r['with_steps']}",
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    base = args.pruner[0]
    base_epochs = statistics.mean(r["epochs"] for r in results[base])
    print(f"\npart b, mean ± std over {args.b_seeds} seed(s) (ratio against {base!r}):")
    print(
        f"{'pruner':40s} {'epochs':>13s} {'fewer':>6s} {'wall s':>14s} {'cpu s':>14s} "
        f"{'best (complete)':>17s} {'pruned':>11s} {'failed':>7s}"
    )
    for pruner, rs in results.items():
        mean_epochs = statistics.mean(r["epochs"] for r in rs)
        print(
            f"{pruner:40s} {_ms([r['epochs'] for r in rs], '.1f'):>13s} "
            f"{base_epochs / mean_epochs if mean_epochs else math.nan:5.2f}x "
            f"{_ms([r['wall_s'] for r in rs], '.1f'):>14s} {_ms([r['cpu_s'] for r in rs], '.1f'):>14s} "
            f"{_ms([r['best'] for r in rs], '.4f'):>17s} "
            f"{_ms([r['pruned'] for r in rs], '.1f'):>11s} {sum(r['failed'] for r in rs):7d}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("a", "b", "both"), default="both")
    p.add_argument(
        "--pruner",
        action="append",
        help="NAME[:key=value,...] as in search.pruner; repeatable; the first is the "
        f"baseline (default: {' '.join(DEFAULT_PRUNERS)})",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (a) / parallelism (b)")
    p.add_argument("--seeds", type=int, default=5, help="part a")
    p.add_argument("--trials", type=int, default=80, help="part a: trial budget per study")
    p.add_argument("--max-epochs", type=int, default=60, help="part a")
    p.add_argument("--epoch-seconds", type=float, default=0.01, help="part a: sleep per epoch")
    p.add_argument("--startup", type=int, default=5, help="part a: TPE n_startup_trials")
    p.add_argument("--patience", type=int, default=0, help="part a: early stopping, 0 = off")
    p.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ..."
    )
    p.add_argument(
        "--prune-last-epoch",
        action="store_true",
        help="part a: also ask the pruner after the last epoch (a fully trained or "
        "early-stopped trial may then end PRUNED)",
    )
    p.add_argument("--b-seeds", type=int, default=1)
    p.add_argument("--b-trials", type=int, default=10)
    p.add_argument("--b-max-epochs", type=int, default=8)
    p.add_argument(
        "--b-patience",
        type=int,
        help="part b: early-stopping patience (default: "
        "--b-max-epochs, i.e. off, so that only the pruner ends trials early)",
    )
    p.add_argument("--b-startup", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="part b: keep the temporary folder")
    args = p.parse_args()
    args.pruner = args.pruner or DEFAULT_PRUNERS
    args.b_patience = args.b_patience or args.b_max_epochs
    for pruner in args.pruner:
        pruner_settings(pruner)  # refuse a bad block before anything runs
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()}, optuna {optuna.__version__}")
    if args.part in ("a", "both"):
        part_a(args)
    if args.part in ("b", "both"):
        part_b(args)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
