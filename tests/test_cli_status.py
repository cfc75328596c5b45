"""``tvls-status`` on a real journal storage: failed trials are listed with why they failed.

The storage is filled directly (studies created by the project's own functions, trials told
FAIL the way the worker and the stale-trial recovery do), so no training runs and no SLURM is
needed: the sweep has no manifest, and the status leaves the queue columns out.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.cli.status import REASON_WIDTH, main, one_line_reason
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.tuning import recovery
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

SWEEP = """\
name: st
output_dir: ../runs/st
models: [clipseg]
learners: [coop, vpt]
datasets: [{name: d, root: ../data}]
search: {n_trials: 4, max_retries: 2}
"""

TRACEBACK = """\
Traceback (most recent call last):
  File "/x/worker.py", line 10, in run_task
    result = run_trial(spec, params)
  File "/x/objective.py", line 3, in run_trial
    raise RuntimeError("CUDA out of memory")
RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def _fail(study: optuna.Study, reason: str | None, attempt: int | None = None) -> int:
    """Run the next trial of ``study`` to FAIL, recording the reason as the worker does."""
    trial = study.ask()
    if reason is not None:
        trial.set_user_attr(recovery.FAILURE_ATTR, reason)
    if attempt is not None:
        trial.set_user_attr(recovery.ATTEMPT_ATTR, attempt)
    study.tell(trial, state=TrialState.FAIL)
    return trial.number


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, list[str]]:
    """A sweep of two studies; the first has four failed trials, the second one complete."""
    folder = tmp_path / "exp"
    folder.mkdir()
    path = folder / "st.yaml"
    path.write_text(SWEEP)
    experiment = load_experiment(path)
    storage = open_storage(sweep_storage(experiment))
    specs = expand(experiment).studies
    ensure_studies(storage, specs)
    for spec in specs:
        enqueue_missing(storage, spec)
    first = optuna.load_study(study_name=specs[0].name, storage=storage)
    _fail(first, TRACEBACK, attempt=2)
    _fail(first, "ValueError: bad shape\n  expected (8, 3)\n  got (8, 4)")
    _fail(first, "SLURM task 12_3 is no longer queued (sacct: " + "x" * 400 + ")", attempt=3)
    _fail(first, None)
    second = optuna.load_study(study_name=specs[1].name, storage=storage)
    trial = second.ask()
    second.tell(trial, 0.5)
    return path, [spec.name for spec in specs]


def test_one_line_reason_keeps_the_exception_line() -> None:
    assert (
        one_line_reason(TRACEBACK) == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert one_line_reason("OSError: a\n   b\tc\n") == "OSError: a b c"
    assert one_line_reason(None) == one_line_reason("  \n") == "no reason recorded"
    long = one_line_reason("E: " + "y" * 1000)
    assert len(long) == REASON_WIDTH and long.endswith("…") and "\n" not in long


def test_json_lists_each_studys_failures(
    sweep: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, names = sweep
    assert main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in report["studies"]}
    failures = rows[names[0]]["failures"]
    assert [f["trial"] for f in failures] == [0, 1, 2, 3]
    assert [f["attempt"] for f in failures] == [2, 1, 3, 1]
    assert failures[0]["reason"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert failures[1]["reason"] == "ValueError: bad shape expected (8, 3) got (8, 4)"
    assert failures[2]["reason"].startswith("SLURM task 12_3 is no longer queued")
    assert len(failures[2]["reason"]) == REASON_WIDTH
    assert failures[3]["reason"] == "no reason recorded"
    assert rows[names[1]]["failures"] == []
    assert report["totals"]["complete"] == 1


def test_table_is_followed_by_one_line_per_failed_trial(
    sweep: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, names = sweep
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    table, _, below = out.partition("4 failed trial(s):")
    assert "Sweep st" in table and below, out
    lines = [line for line in below.splitlines() if line.strip()]
    assert len(lines) == 4, below
    assert lines[0] == (
        f"  {names[0]} #0 (attempt 2): RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert lines[1].startswith(f"  {names[0]} #1 (attempt 1): ValueError: bad shape")
    assert lines[2].endswith("…") and len(lines[2]) < REASON_WIDTH + 80
    assert lines[3].endswith("no reason recorded")


def test_a_sweep_without_failures_or_storage_lists_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exp" / "st.yaml"
    path.parent.mkdir()
    path.write_text(SWEEP)
    assert main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(row["failures"] == [] for row in report["studies"])
    assert not (tmp_path / "runs").exists()  # status never creates the storage
    assert main([str(path)]) == 0
    assert "failed trial" not in capsys.readouterr().out
