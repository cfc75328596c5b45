"""``tvls-launch --dry-run`` is the launch's preflight: the same checks, read-only, the plan
first, then every problem a launch would stop at, and a non-zero exit when it would fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunevlseg.cli import launch as launch_cli
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.tuning.storage import default_storage, open_storage
from tunevlseg.tuning.studies import ensure_studies

TEXT = """\
name: dry
output_dir: out
models: [{{name: clipseg, pretrained: ./tiny, synthetic: true}}]
learners: [coop, vpt]
datasets:
{datasets}
search: {{n_trials: 2}}
cluster: {{parallelism: 1}}
"""
SYNTHETIC = "  - {name: synth, root: data, synthetic: true}"


def _write(tmp_path: Path, datasets: str = SYNTHETIC, extra: str = "") -> Path:
    path = tmp_path / "dry.yaml"
    path.write_text(TEXT.format(datasets=datasets) + extra)
    return path


def _run(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = launch_cli.main([str(path), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_missing_data_root_is_reported_after_the_plan_with_the_launchs_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, SYNTHETIC + "\n  - {name: kvasir, root: nowhere/kvasir}")
    code, out, err = _run(path, capsys, "--dry-run", "--local")
    assert code == 1
    assert "Sweep plan" in out and "dry/clipseg-vpt/kvasir" in out  # the plan is still shown
    problem = f"data set 'kvasir': root {tmp_path / 'nowhere/kvasir'} does not exist"
    assert "1 problem(s): a launch would stop at" in err and problem in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry.yaml"]  # nothing written

    code, _, err = _run(path, capsys, "--local")  # the real launch stops at the same words
    assert code == 1 and problem in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry.yaml"]


def test_a_changed_study_definition_is_found_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path)
    storage = open_storage(default_storage(tmp_path / "out"))
    ensure_studies(storage, expand(load_experiment(path)).studies)
    path.write_text(path.read_text().replace("n_trials: 2", "n_trials: 5"))
    before = (tmp_path / "out" / "optuna.journal").read_bytes()
    code, _, err = _run(path, capsys, "--dry-run", "--local")
    assert code == 1
    assert "changed the definition of studies" in err and "search.n_trials: 2 -> 5" in err
    assert (tmp_path / "out" / "optuna.journal").read_bytes() == before
    code, _, _ = _run(path, capsys, "--dry-run", "--local", "--force")
    assert code == 0


def test_the_plan_and_its_problems_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, extra="storage: sqlite:///out/s.db\n")
    path.write_text(path.read_text().replace("parallelism: 1", "parallelism: 2"))
    code, out, _ = _run(path, capsys, "--dry-run", "--local", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["studies"] and {s["name"] for s in report["studies"]} == {
        "dry/clipseg-coop/synth",
        "dry/clipseg-vpt/synth",
    }
    assert report["tasks"] == 4 and report["trials"] == 4
    (problem,) = report["problems"]
    assert problem.startswith("sqlite storage cannot take parallel tasks")


def test_an_output_dir_that_cannot_be_written_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path)
    (tmp_path / "out").write_text("a file where the output folder should be")
    code, _, err = _run(path, capsys, "--dry-run", "--local")
    assert (
        code == 1
        and f"output_dir {tmp_path / 'out'}: {tmp_path / 'out'} is a file, not a folder" in err
    )


def test_a_big_sweep_gets_the_learner_by_dataset_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = "\n".join(f"  - {{name: d{i}, root: data{i}, synthetic: true}}" for i in range(7))
    code, out, _ = _run(_write(tmp_path, datasets), capsys, "--dry-run", "--local")
    assert code == 0
    assert "Trials to run / in the budget" in out  # 14 studies
    matrix = out[out.index("Trials to run") :]
    assert "clipseg-vpt" in matrix and "d6" in matrix and "2/2" in matrix
    code, out, _ = _run(_write(tmp_path), capsys, "--dry-run", "--local")
    assert "Trials to run / in the budget" not in out  # 2 studies: the plan table is enough


@pytest.mark.parametrize(
    "args", [["--parallelism", "0"], ["--parallelism", "-3"], ["--parallelism", "two"], ["--json"]]
)
def test_bad_options_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    path = _write(tmp_path)
    try:
        code = launch_cli.main([str(path), "--local", *args])
    except SystemExit as exit_:  # argparse's own usage errors
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        "must be at least 1" in err
        or "not a whole number" in err
        or "--json goes with --dry-run" in err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry.yaml"]
