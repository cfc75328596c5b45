"""The local demo end to end: YAML -> studies -> one process per trial -> table; then resume.

These tests run the shipped demo file (copied next to a temporary output folder) through the
real command line, so each trial is its own process started by submitit, as on a cluster.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _curves import assert_curves
from _demo_table import assert_demo_main_table
from optuna.trial import TrialState

from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The shipped demo file, run once from a fresh folder."""
    folder = tmp_path_factory.mktemp("demo") / "experiments"
    folder.mkdir()
    experiment = folder / "demo.yaml"
    experiment.write_text((ROOT / "experiments" / "demo.yaml").read_text())
    run = _cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=folder)
    return experiment, run


def test_demo_runs_every_trial_and_prints_the_table(demo) -> None:  # type: ignore[no-untyped-def]
    experiment, run = demo
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = load_experiment(experiment)
    storage = open_storage(sweep_storage(loaded))
    studies = expand(loaded).studies
    assert len(studies) == 6
    for spec in studies:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
        # The demo prunes (ASHA): a pruned trial is done, and each study keeps a complete one.
        assert complete, spec.name
        assert len(complete) + len(pruned) == spec.n_trials == len(study.trials), spec.name
        assert_curves(study.trials, spec.search.direction)
        for trial in complete:
            assert 0.0 <= trial.value <= 1.0
            assert 0.0 <= trial_attrs(trial)["test_dice"] <= 1.0
            assert Path(trial_attrs(trial)["tvls.run_dir"], "result.json").is_file()
    table = (loaded.output_dir / "demo" / "results" / "main_table.md").read_text()
    assert table in run.stdout + "\n" or table.strip() in run.stdout
    assert_demo_main_table(table)


def test_relaunch_of_a_finished_sweep_submits_nothing(demo) -> None:  # type: ignore[no-untyped-def]
    experiment, first = demo
    assert first.returncode == 0
    jobs = experiment.parent.parent / "runs" / "demo" / "demo" / "jobs" / "local"
    before = sorted(p.name for p in jobs.iterdir())
    again = _cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=experiment.parent)
    assert again.returncode == 0, again.stderr
    assert "The sweep is complete" in again.stderr
    assert sorted(p.name for p in jobs.iterdir()) == before
    manifest = json.loads((experiment.parent.parent / "runs/demo/demo/manifest.json").read_text())
    assert manifest["trials"] == 12
    assert len(manifest["launches"]) == 1 and len(manifest["launches"][0]["local_tasks"]) == 12


def test_status_reports_the_finished_sweep(demo) -> None:  # type: ignore[no-untyped-def]
    experiment, _ = demo
    status = _cli("tunevlseg.cli.status", str(experiment), "--json", cwd=experiment.parent)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    totals = report["totals"]
    assert totals["complete"] + totals["pruned"] == 12 and totals["remaining"] == 0
    assert all(row["best_value"] is not None for row in report["studies"])


PARTIAL = """\
name: partial
output_dir: ../runs/partial
models:
  - {name: clipseg, pretrained: ../runs/assets/clipseg-tiny, image_size: 96, synthetic: true}
learners: [coop]
datasets:
  - {name: synth, root: ../runs/assets/synth, synthetic: true}
data: {num_workers: 0}
training: {max_epochs: 2, patience: 2, batch_size: 8, effective_batch_size: 8, precision: "32"}
search: {n_trials: 3, n_startup_trials: 1, space: {prompt_depth: {low: 1, high: 2}}}
cluster: {parallelism: 1}
"""


def test_interrupted_sweep_resumes_only_the_missing_trials(tmp_path: Path) -> None:
    """Ctrl-C after the first trial finished; the relaunch runs the rest, none twice."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    experiment = folder / "partial.yaml"
    experiment.write_text(PARTIAL)
    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(experiment), "--local"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    first_done = None
    while time.monotonic() < deadline and launcher.poll() is None:
        if sweep_storage(loaded).exists:
            study = optuna.load_study(
                study_name=spec.name, storage=open_storage(sweep_storage(loaded))
            )
            done = [t for t in study.trials if t.state == TrialState.COMPLETE]
            if done:
                first_done = done[0].number
                break
        time.sleep(0.5)
    assert first_done is not None, "no trial completed"
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert "running trial(s) stopped" in line and f"tvls-launch {experiment} --local" in line

    again = _cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=folder)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = re.search(r"Running (\d+) trial", again.stderr)
    assert ran is not None and int(ran.group(1)) == 2, again.stderr
    study = optuna.load_study(study_name=spec.name, storage=open_storage(sweep_storage(loaded)))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert first_done in {t.number for t in complete}
    # A trial that was interrupted mid-way is failed and re-run with the same parameters.
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    for trial in failed:
        rerun = [t for t in complete if trial_attrs(t).get("tvls.lineage") == trial.number]
        assert len(rerun) == 1 and rerun[0].params == trial.params
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The re-run of an interrupted trial is a new Optuna trial: it still has every epoch's point.
    assert_curves(study.trials, spec.search.direction)
