"""Requeue of container tasks on the real SLURM cluster, with an ``apptainer`` stand-in.

A real image has no SLURM client, so submitit's ``scontrol requeue`` cannot run inside it. The
stand-in reproduces exactly that: it parses ``exec [--nv] [--bind X]... [--env K=V]... IMAGE
python3 ARGS...`` like Apptainer, and runs this venv's Python with a PATH of a few basic tools
and no ``scontrol``/``squeue``/``sbatch``. A USR2 to the task's steps (what SLURM sends before the
time limit, and on preemption) must still requeue the task, which resumes its trial from the
checkpoint and completes it, without a second ``tvls-launch``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from _slurm_sweeps import all_job_ids, assert_complete, cli, wait_for_queue, write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

EPOCHS = 24  # ~0.3 s each here: long enough to be signalled in the middle of fitting
EARLY_EPOCHS = 8
# What a task may run inside the stand-in "image": no SLURM command among them.
BASIC_TOOLS = ("sh", "bash", "env", "cat", "ls", "uname", "mkdir", "rm", "true")

STAND_IN = """\
#!/bin/bash
# apptainer stand-in: exec [--nv] [--bind X]... [--env K=V]... IMAGE python3 ARGS...
set -eu
printf '%s\\0' "$@" >> {log}
printf '\\n' >> {log}
[ "${{1-}}" = exec ] || {{ echo "stand-in: only 'exec' is supported" >&2; exit 2; }}
shift
set_env=()
while [ $# -gt 0 ]; do
  case $1 in
    --nv) shift ;;
    --bind) [ -e "${{2%%:*}}" ] || {{ echo "stand-in: no bind source $2" >&2; exit 2; }}; shift 2 ;;
    --env) set_env+=("$2"); shift 2 ;;
    -*) echo "stand-in: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -f "$1" ] || {{ echo "stand-in: no image $1" >&2; exit 2; }}
[ "$2" = python3 ] || {{ echo "stand-in: runs python3 only, not $2" >&2; exit 2; }}
shift 2
# Like Apptainer: APPTAINERENV_X sets X inside; the host environment passes (no --cleanenv).
for name in $(compgen -e); do
  case $name in APPTAINERENV_?*) set_env+=("${{name#APPTAINERENV_}}=${{!name}}") ;; esac
done
exec /usr/bin/env PATH={container_path} "${{set_env[@]}}" {python} "$@"
"""


def make_stand_in(folder: Path) -> tuple[Path, Path]:
    """The ``apptainer`` stand-in and the log of its invocations (NUL-separated words)."""
    container_path = folder / "image-bin"
    container_path.mkdir(parents=True)
    for tool in BASIC_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (container_path / tool).symlink_to(found)
    # python3 on the image's PATH: this venv's interpreter (a symlink would lose the venv).
    (container_path / "python3").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (container_path / "python3").chmod(0o755)
    log = folder / "apptainer.log"
    stand_in = folder / "bin" / "apptainer"
    stand_in.parent.mkdir()
    stand_in.write_text(
        STAND_IN.format(
            log=shlex.quote(str(log)),
            container_path=shlex.quote(str(container_path)),
            python=shlex.quote(sys.executable),
        )
    )
    stand_in.chmod(0o755)
    return stand_in, log


def test_stand_in_has_no_slurm_client(tmp_path: Path) -> None:
    """Inside the stand-in, the task cannot call scontrol itself (what makes the e2e test real)."""
    stand_in, log = make_stand_in(tmp_path)
    image = tmp_path / "tvls.sif"
    image.write_text("")
    code = "import shutil; print([shutil.which(c) for c in ('scontrol', 'squeue', 'sbatch')])"
    done = subprocess.run(
        [
            str(stand_in),
            "exec",
            "--nv",
            "--bind",
            str(tmp_path),
            "--env",
            "X=a,b",
            str(image),
            "python3",
            "-c",
            code + "; import os; print(os.environ['X'])",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[None, None, None]", "a,b"]
    assert log.read_text().count("\n") == 1


@pytest.mark.parametrize("in_container", [True, False], ids=["container", "host"])
def test_usr2_requeues_the_task_without_a_second_launch(tmp_path: Path, in_container: bool) -> None:
    """In the container (no SLURM client) through the host wrapper; on the host, as before."""
    started = time.monotonic()
    name = "ctreq" if in_container else "hostreq"
    experiment = write_sweep(
        tmp_path / "exp",
        name=name,
        output_dir=f"../runs/{name}",
        n_trials=2,
        max_epochs=EPOCHS,
        image_size=64,
    )
    if in_container:
        stand_in, log = make_stand_in(tmp_path / "apptainer")
        image = tmp_path / "img dir" / "tvls.sif"
        image.parent.mkdir()
        image.write_text("not an image: the stand-in only checks that it exists")
        (tmp_path / "hf").mkdir()  # Apptainer refuses a missing bind source; HF_HOME is bound
        container = {"image": str(image), "apptainer": str(stand_in)}
        experiment.write_text(experiment.read_text() + f"  container: {json.dumps(container)}\n")
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr

    lineage, run_dir, task = wait_for_early_checkpoint(experiment, array_job_ids(experiment))
    # USR2 to the task's steps only (not --batch): what SLURM sends signal_delay_s before the
    # time limit and, with preempt_send_user_signal, on preemption. submitit checkpoints and
    # requeues; SLURM itself does not requeue on a signal.
    subprocess.run(["scancel", "--signal=USR2", task], check=True)

    wait_for_queue(all_job_ids(experiment))
    jobs = SweepPaths.of(load_experiment(experiment)).jobs
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((jobs / task).glob("*_log.*"))
    )
    try:
        assert_complete(experiment)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{logs}") from None
    interrupted = next(t for t in trials(experiment) if trial_attrs(t)["tvls.lineage"] == lineage)
    assert interrupted.state == TrialState.COMPLETE
    assert trial_attrs(interrupted)["tvls.slurm_restart_count"] >= 1, logs
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] is not None and result["resumed_from_epoch"] >= 1, result
    assert result["epochs_run"] == EPOCHS
    assert trial_attrs(interrupted)["resumed_from_epoch"] == result["resumed_from_epoch"]
    assert (f"tvls-requeue: requeued {task} from the host" in logs) == in_container, logs
    assert not (jobs / "requeue").exists() or not list((jobs / "requeue").iterdir()), (
        "a marker was left"
    )
    if in_container:
        # Every task ran through the stand-in (two trials, the requeued run, the collector).
        assert log.read_text().count("\n") >= 4
    print(
        f"USR2 requeue e2e ({'container' if in_container else 'host'}): {time.monotonic() - started:.0f} s"
    )


def array_job_ids(experiment: Path) -> list[str]:
    manifest = read_manifest(SweepPaths.of(load_experiment(experiment)).manifest)
    assert manifest is not None
    return manifest.array_job_ids()


def trials(experiment: Path) -> list[optuna.trial.FrozenTrial]:
    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    return optuna.load_study(
        study_name=spec.name, storage=open_storage(sweep_storage(loaded))
    ).trials


def wait_for_early_checkpoint(
    experiment: Path, job_ids: list[str], timeout: float = 600
) -> tuple[int, Path, str]:
    """A RUNNING trial with a checkpoint from its first EARLY_EPOCHS: (lineage, folder, task).

    Early, so that the signal finds it fitting (with epochs left to resume), not finishing.
    Gives up as soon as the jobs have left the queue (tasks that failed to start).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert slurm.queued_tasks(job_ids), f"the jobs {job_ids} ended before any checkpoint"
        for trial in trials(experiment):
            attrs = trial_attrs(trial)
            run_dir = Path(attrs.get("tvls.run_dir", "/nonexistent"))
            if trial.state != TrialState.RUNNING or not attrs.get("tvls.slurm_job_id"):
                continue
            try:
                state = torch.load(
                    run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
                )
            except (FileNotFoundError, EOFError, RuntimeError):
                continue  # not written yet, or being replaced
            if int(state["epoch"]) < EARLY_EPOCHS:
                task = slurm.task_key(
                    attrs["tvls.slurm_job_id"], attrs.get("tvls.slurm_array_task_id")
                )
                return attrs["tvls.lineage"], run_dir, task
        time.sleep(0.2)
    raise AssertionError("no trial reached an early checkpoint")
