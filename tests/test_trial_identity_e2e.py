"""A result is the result of its own trial, end to end on the local launcher.

Two sweeps in one ``output_dir`` once shared trial folders, and a finished ``result.json`` was
returned without a look: sweep B (3 epochs) "completed" at once with sweep A's 2-epoch result.
A foreign file in a trial folder is now set aside and the trial trains; a trial that fails by
an error of its own is failed once, and repeated errors stop its study instead of burning the
budget on every relaunch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import cli, write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

pytestmark = pytest.mark.slow


def _trials(experiment: Path) -> list[optuna.trial.FrozenTrial]:
    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    return optuna.load_study(
        study_name=spec.name, storage=open_storage(sweep_storage(loaded))
    ).trials


def _local(experiment: Path, *args: str) -> str:
    run = cli("tunevlseg.cli.launch", str(experiment), "--local", *args, cwd=experiment.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


def test_two_sweeps_in_one_output_dir_keep_their_own_trials(tmp_path: Path) -> None:
    a = write_sweep(
        tmp_path / "exp", name="a", output_dir="../runs/shared", n_trials=1, max_epochs=2
    )
    b = write_sweep(
        tmp_path / "exp", name="b", output_dir="../runs/shared", n_trials=1, max_epochs=3
    )
    _local(a)
    _local(b)
    (trial_a,) = _trials(a)
    (trial_b,) = _trials(b)
    assert trial_a.state == trial_b.state == TrialState.COMPLETE
    assert trial_attrs(trial_a)["epochs_run"] == 2
    assert trial_attrs(trial_b)["epochs_run"] == 3  # trained, not sweep A's result read back
    folder_a, folder_b = (
        Path(trial_attrs(trial_a)["tvls.run_dir"]),
        Path(trial_attrs(trial_b)["tvls.run_dir"]),
    )
    assert (
        folder_a != folder_b and "/a/studies/" in str(folder_a) and "/b/studies/" in str(folder_b)
    )
    for experiment, trial in ((a, trial_a), (b, trial_b)):
        result = json.loads((Path(trial_attrs(trial)["tvls.run_dir"]) / "result.json").read_text())
        assert result["identity_sha256"] == trial_attrs(trial)["tvls.identity_sha256"]
        assert (SweepPaths.of(load_experiment(experiment)).results / "main_table.md").is_file()


def test_a_foreign_result_copied_into_a_trial_folder_is_not_used(tmp_path: Path) -> None:
    a = write_sweep(tmp_path / "exp", name="a", output_dir="../runs/a", n_trials=1, max_epochs=2)
    b = write_sweep(tmp_path / "exp", name="b", output_dir="../runs/b", n_trials=1, max_epochs=3)
    _local(a)
    (trial_a,) = _trials(a)
    folder_b = SweepPaths.of(load_experiment(b)).trial_dir("clipseg-coop/synth", 0)
    shutil.copytree(trial_attrs(trial_a)["tvls.run_dir"], folder_b)  # result.json and checkpoints
    _local(b)
    (trial_b,) = _trials(b)
    assert trial_b.state == TrialState.COMPLETE and trial_attrs(trial_b)["epochs_run"] == 3
    assert Path(trial_attrs(trial_b)["tvls.run_dir"]) == folder_b
    (aside,) = folder_b.glob("foreign-*")
    assert json.loads((aside / "result.json").read_text())["epochs_run"] == 2  # kept to inspect


def test_errors_fail_once_stop_the_study_and_retry_when_fixed(tmp_path: Path) -> None:
    experiment = write_sweep(
        tmp_path / "exp", name="broken", output_dir="../runs/broken", n_trials=3
    )
    text = experiment.read_text().replace("n_trials: 3,", "n_trials: 3, max_failures: 2,")
    experiment.write_text(text.replace("parallelism: 2", "parallelism: 1"))
    data = tmp_path / "assets" / "synth-32"
    write_synthetic_medvlsm(data, image_size=32)
    image = sorted((data / "images").glob("train_*.jpg"))[3]
    image.write_bytes(b"not a jpeg")

    run = cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=experiment.parent)
    assert run.returncode == 1
    states = [t.state for t in _trials(experiment)]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]  # the third skipped
    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=experiment.parent)
    (row,) = json.loads(status.stdout)["studies"]
    assert row["failed"] == 2 and "stopped after 2 trials failed with errors" in row["stopped"]
    assert f"cannot read image {image}" in row["stopped"]

    again = _local(experiment)  # nothing new is burnt on a study that stopped
    assert "stopped after 2 trials failed" in again and "--retry-failed" in again
    assert len(_trials(experiment)) == 3

    shutil.rmtree(data)
    write_synthetic_medvlsm(data, image_size=32)
    fixed = _local(experiment, "--retry-failed")
    assert "re-queued as trial 3" in fixed and "re-queued as trial 4" in fixed
    trials = _trials(experiment)
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    rerun = {t.number: t for t in trials}[3]
    assert rerun.params == trials[0].params and trial_attrs(rerun)["tvls.lineage"] == 0
