"""How long the launcher takes to plan a sweep, print a dry run, and submit 1,000 SLURM tasks.

Two experiment files: ``experiments/paper.yaml`` (80 studies, 1,600 trials) and a generated grid
of 10,000 trials (25 data sets x 8 model-learner combinations x 2 upsampler settings = 400
studies x 25 trials), written to a temporary folder. For each:

* ``plan``: in this process, ``load_experiment`` + ``expand`` + ``make_plan`` (no storage yet,
  as a first launch sees it) + the plan digest, best of ``--repeat``;
* ``dry-run --local`` / ``dry-run``: wall time of ``tvls-launch FILE --dry-run [--local]`` as a
  fresh process (interpreter, imports, plan, printing), best of ``--repeat``; ``python -c pass``
  and ``import tunevlseg.cli.launch`` are timed the same way as the floor. The SLURM form
  (which asks ``scontrol`` for MaxArraySize and renders the job scripts) runs only with
  ``--slurm``.

With ``--submit N`` (needs the SLURM cluster): submits N trial tasks as one array through the
project's real path (``slurm_setup`` -> ``SlurmLauncher.submit_arrays``, i.e. submitit's
``map_array`` writing one pickle per task + one ``sbatch``), held (``--hold``) so that no task
runs, times it, checks ``squeue`` sees N tasks, and cancels the array.

Reproduce::

    .venv/bin/python benchmarks/launcher.py                       # plan + dry runs, no services
    .venv/bin/python benchmarks/launcher.py --slurm --submit 1000 # + SLURM dry run + submission
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LEARNERS = ["coop", "cocoop", "vpt", "maple", "shared_separate", "shared_attention"]


def grid_yaml(folder: Path, n_datasets: int = 25, n_trials: int = 25) -> Path:
    datasets = "\n".join(
        f"  - {{name: set{i:02d}, category: Radiology, root: ../data/set{i:02d}}}"
        for i in range(n_datasets)
    )
    text = (
        "name: grid10k\noutput_dir: ../runs/grid10k\n"
        "models:\n  - {name: clipseg, pretrained: CIDAS/clipseg-rd64-refined}\n"
        "  - {name: cris, pretrained: ../checkpoints/cris-r50}\n"
        f"learners: [{', '.join(LEARNERS)}]\n"
        f"datasets:\n{datasets}\n"
        f"search: {{n_trials: {n_trials}}}\n"
        "grid:\n  model.use_upsampler: [true, false]\n"
        "cluster: {parallelism: 2, timeout_min: 30, slurm: {cpus_per_task: 1, mem_gb: 1, gpus: 0}}\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiments" / "grid10k.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def time_plan(path: Path, repeat: int) -> tuple[float, int, int]:
    from tunevlseg.cluster.plan import make_plan
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment

    best, studies, tasks = float("inf"), 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        plan = make_plan(expand(load_experiment(path)), None)
        plan.digest()
        best = min(best, time.perf_counter() - t0)
        studies, tasks = plan.n_studies, plan.n_tasks
    return best, studies, tasks


def time_process(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        best = min(best, elapsed)
    return best


def submit(n: int, work: Path) -> None:
    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.launch import slurm_setup, sweep_storage
    from tunevlseg.cluster.submit import SlurmLauncher
    from tunevlseg.cluster.worker import TrialTask
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment

    experiment = load_experiment(grid_yaml(work / "submit"))
    expansion = expand(experiment)
    setup = slurm_setup(experiment, expansion, sweep_storage(experiment))
    max_array = slurm.max_array_size()
    params = dict(setup.arrays)
    params["additional_parameters"] = {**params["additional_parameters"], "hold": True}
    tasks = [
        TrialTask("journal:///nonexistent/bench.journal", expansion.studies[i % 400].name, i // 400)
        for i in range(n)
    ]
    launcher = SlurmLauncher(work / "jobs", setup.python, max_array)
    t0 = time.perf_counter()
    arrays = launcher.submit_arrays(tasks, params)
    elapsed = time.perf_counter() - t0
    ids = [a.job_id for a in arrays]
    try:
        t1 = time.perf_counter()
        queued = slurm.queued_tasks(ids)
        squeue_s = time.perf_counter() - t1
        pickles = len(list((work / "jobs").rglob("*_submitted.pkl")))
        print(
            f"submit {n} tasks (MaxArraySize {max_array}): {len(arrays)} array(s) {ids}, "
            f"{elapsed:.2f} s = {elapsed / n * 1e3:.2f} ms/task; {pickles} task pickles written; "
            f"squeue sees {len(queued)} tasks ({squeue_s:.2f} s)"
        )
    finally:
        slurm.cancel(ids)
        time.sleep(2)
        left = slurm.queued_tasks(ids)
        print(f"cancelled; {len(left)} task(s) still queued")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--slurm", action="store_true", help="also time the SLURM-form dry run")
    p.add_argument("--submit", type=int, default=0, help="submit (held) and cancel N tasks")
    args = p.parse_args()
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="tvls-launcher-"))
    try:
        launch = str(BIN / "tvls-launch")
        floor = time_process([sys.executable, "-c", "pass"], args.repeat)
        imports = time_process([sys.executable, "-c", "import tunevlseg.cli.launch"], args.repeat)
        print(f"python -c pass: {floor:.3f} s; import tunevlseg.cli.launch: {imports:.3f} s")
        for path in (ROOT / "experiments" / "paper.yaml", grid_yaml(work / "grid")):
            seconds, studies, tasks = time_plan(path, args.repeat)
            print(
                f"{path.name}: {studies} studies, {tasks} tasks; plan in-process {seconds:.3f} s "
                f"({seconds / tasks * 1e6:.0f} us/trial)"
            )
            local = time_process([launch, str(path), "--dry-run", "--local"], args.repeat)
            print(f"  tvls-launch --dry-run --local: {local:.3f} s")
            if args.slurm:
                full = time_process([launch, str(path), "--dry-run"], args.repeat)
                print(f"  tvls-launch --dry-run (SLURM form): {full:.3f} s")
        if args.submit:
            submit(args.submit, work)
        print(f"load after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
