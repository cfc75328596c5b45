"""``--only KEY=VALUE``: part of a sweep for ``tvls-launch``, ``tvls-status`` and ``tvls-collect``.

The selection is read and checked by one function (``config.select``) against the experiment's
own studies. The launch tests run the dry run and launches that stop in their preflight, so no
training runs; status and collect read a storage filled directly with the project's functions.
The one slow test launches a tiny sweep in two parts for real: ``--only learner=coop``, then
without ``--only``, which must run exactly the rest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from tunevlseg.cli import collect as collect_cli, launch as launch_cli, status as status_cli
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.config.select import Selection, SelectionError, parse_only, select
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

SWEEP = """\
name: only
output_dir: out
models:
  - {name: clipseg, pretrained: ./tiny, synthetic: true}
  - {name: cris, label: rn50, pretrained: ./tiny-cris, synthetic: true}
learners: [coop, vpt, {name: maple, label: maple-text}]
datasets:
  - {name: kvasir, root: data/kvasir, synthetic: true}
  - {name: busi, root: data/busi, synthetic: true}
search: {n_trials: 2}
cluster: {parallelism: 1}
grid:
  model.use_upsampler: [true, false]
  search.space.prompt_depth: [1, 3]
"""
# clipseg x (coop, vpt, maple-text) x 2 data sets x 4 cells = 24, rn50 x coop x 2 x 4 = 8;
# rn50 + vpt and rn50 + maple are skipped (they need a ViT).
N_STUDIES = 32


def _write(tmp_path: Path, text: str = SWEEP) -> Path:
    path = tmp_path / "only.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def expansion(tmp_path: Path):  # type: ignore[no-untyped-def]
    return expand(load_experiment(_write(tmp_path)))


def _names(expansion, only: list[str]) -> set[str]:  # type: ignore[no-untyped-def]
    selected, _ = select(expansion, only)
    return {spec.name for spec in selected.studies}


# -- reading and applying a selection --------------------------------------------------------


def test_no_only_is_the_whole_sweep(expansion) -> None:  # type: ignore[no-untyped-def]
    assert len(expansion.studies) == N_STUDIES
    assert parse_only(None) is None and parse_only([]) is None and parse_only([" , "]) is None
    selected, selection = select(expansion, None)
    assert selected is expansion and selection is None


def test_one_key_twice_is_or_and_different_keys_are_and(expansion) -> None:  # type: ignore[no-untyped-def]
    repeated = _names(expansion, ["learner=coop", "learner=vpt", "dataset=kvasir"])
    comma = _names(expansion, ["learner=coop,learner=vpt,dataset=kvasir"])
    continued = _names(expansion, ["learner=coop,vpt", "dataset=kvasir"])  # a bare value: same key
    assert repeated == comma == continued
    assert len(repeated) == 3 * 4  # clipseg-coop, rn50-coop, clipseg-vpt on kvasir, 4 cells each
    assert all(name.split("/")[2] == "kvasir" for name in repeated)
    assert {name.split("/")[1] for name in repeated} == {"clipseg-coop", "rn50-coop", "clipseg-vpt"}
    _, selection = select(expansion, ["learner=coop,vpt", "dataset=kvasir", "learner=coop"])
    assert selection is not None and selection.text == "learner=coop,learner=vpt,dataset=kvasir"


def test_grid_keys_by_full_or_short_name_with_the_study_names_spelling(expansion) -> None:  # type: ignore[no-untyped-def]
    full = _names(expansion, ["model.use_upsampler=false,search.space.prompt_depth=3"])
    short = _names(expansion, ["use_upsampler=False", "prompt_depth=3"])  # booleans ignore case
    assert full == short and len(full) == N_STUDIES // 4
    assert all(name.endswith("/use_upsampler=false,prompt_depth=3") for name in full)
    _, selection = select(expansion, ["use_upsampler=False"])
    assert selection is not None and selection.text == "model.use_upsampler=false"  # re-usable
    assert _names(expansion, [selection.text]) == _names(expansion, ["use_upsampler=false"])
    either = _names(expansion, ["prompt_depth=1", "prompt_depth=3", "use_upsampler=true"])
    assert len(either) == N_STUDIES // 2 and all("use_upsampler=true" in name for name in either)


def test_labels_and_names_select_models_and_learners(expansion) -> None:  # type: ignore[no-untyped-def]
    by_label = _names(expansion, ["learner=maple-text"])
    by_name = _names(expansion, ["learner=maple"])
    assert by_label == by_name and len(by_label) == 2 * 4
    assert all("/clipseg-maple-text/" in name for name in by_label)
    rn50 = _names(expansion, ["model=rn50"])  # the model's key (its label) as in study names
    assert rn50 == _names(expansion, ["model=cris"]) and len(rn50) == 2 * 4
    assert all(name.split("/")[1] == "rn50-coop" for name in rn50)


def test_the_selection_keeps_the_skipped_combinations_it_names(expansion) -> None:  # type: ignore[no-untyped-def]
    selected, _ = select(expansion, ["model=rn50"])
    assert {(s.model, s.learner) for s in selected.skipped} == {("rn50", "vpt"), ("rn50", "maple")}
    selected, _ = select(expansion, ["learner=coop"])
    assert selected.skipped == []


@pytest.mark.parametrize(
    ("only", "words"),
    [
        (
            ["lerner=coop"],
            [
                "unknown key 'lerner'",
                "did you mean 'learner'?",
                (
                    "valid keys: model, learner, dataset, model.use_upsampler (use_upsampler), "
                    "search.space.prompt_depth (prompt_depth)"
                ),
            ],
        ),
        (
            ["learner=cop"],
            [
                "learner=cop matches no study",
                "did you mean 'coop'?",
                "valid values of learner: coop, vpt, maple-text, maple",
            ],
        ),
        (
            ["prompt_depth=2"],
            ["prompt_depth=2 matches no study", "valid values of search.space.prompt_depth: 1, 3"],
        ),
        (
            ["dataset=kvasr,learner=vp"],
            ["dataset=kvasr matches no study", "'kvasir'", "learner=vp matches no study", "'vpt'"],
        ),
        (
            ["model=rn50", "learner=vpt"],
            [
                "model=rn50,learner=vpt selects no study",
                "rn50 + vpt is skipped (visual prompts need a ViT image encoder)",
            ],
        ),
    ],
)
def test_what_the_sweep_does_not_have_is_an_error_naming_what_it_has(
    expansion,
    only: list[str],
    words: list[str],  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(SelectionError) as raised:
        select(expansion, only)
    message = str(raised.value)
    assert "\n" not in message  # one message, every problem in it
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("coop", "'coop' is not KEY=VALUE"),
        ("learner=", "learner= has no value"),
        ("=coop", "'=coop' has no key"),
    ],
)
def test_what_is_not_key_value_cannot_be_read(text: str, words: str) -> None:
    with pytest.raises(SelectionError, match=re.escape(words)):
        parse_only([text])


def test_a_long_selection_gets_a_short_distinct_folder_name() -> None:
    short = Selection((("learner", ("coop",)),))
    assert short.folder_name == "only-learner=coop"
    many = Selection((("dataset", tuple(f"dataset-number-{i}" for i in range(20))),))
    other = Selection((("dataset", tuple(f"dataset-number-{i}" for i in range(21))),))
    assert len(many.folder_name) <= 120 and many.folder_name != other.folder_name


# -- tvls-launch --only -----------------------------------------------------------------------


def _launch(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = launch_cli.main([str(path), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_dry_run_json_shows_the_selected_plan_with_the_whole_sweeps_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path)
    code, out, _ = _launch(path, capsys, "--dry-run", "--local", "--json")
    whole = json.loads(out)
    assert code == 0 and whole["only"] is None and whole["sweep_studies"] == N_STUDIES
    code, out, _ = _launch(
        path,
        capsys,
        "--dry-run",
        "--local",
        "--json",
        "--only",
        "learner=coop",
        "--only",
        "dataset=kvasir,busi",
        "--only",
        "prompt_depth=3",
    )
    report = json.loads(out)
    assert code == 0, report["problems"]
    assert report["only"] == "learner=coop,dataset=kvasir,dataset=busi,search.space.prompt_depth=3"
    names = {study["name"] for study in report["studies"]}
    assert names == {
        f"only/{combo}/{dataset}/use_upsampler={up},prompt_depth=3"
        for combo in ("clipseg-coop", "rn50-coop")
        for dataset in ("kvasir", "busi")
        for up in ("true", "false")
    }
    assert report["trials"] == report["tasks"] == 2 * len(names)
    assert report["sweep_studies"] == N_STUDIES
    # The digest the launch records in the manifest: the whole file's, selection or not.
    assert report["plan_sha256"] == whole["plan_sha256"]
    assert _files(tmp_path) == ["only.yaml"]  # a dry run writes nothing


def test_dry_run_table_names_the_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _launch(
        _write(tmp_path), capsys, "--dry-run", "--local", "--only", "model=rn50,dataset=busi"
    )
    assert code == 0
    assert "Sweep plan, only model=rn50,dataset=busi" in out
    assert "4 of 32 studies (only model=rn50,dataset=busi), 8 trials, 0 done, 8 tasks to run" in out
    assert "clipseg-" not in out and "/kvasir/" not in out
    assert "note: skipped rn50 + vpt" in out  # the skipped combinations of the selected model


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_bad_only_exits_2_with_one_message_and_launches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    path = _write(tmp_path)
    args = [
        "--local",
        "--only",
        "learner=coop",
        "--only",
        "learner=nope",
        *(["--dry-run"] if dry_run else []),
    ]
    code, out, err = _launch(path, capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: --only: learner=nope matches no study")
    assert "valid values of learner: coop, vpt, maple-text, maple" in lines[0]
    code, _, err = _launch(path, capsys, "--local", "--only", "coop")
    assert code == 2 and "error: --only: 'coop' is not KEY=VALUE" in err
    assert _files(tmp_path) == ["only.yaml"]


MISSING = SWEEP.replace(
    "{name: busi, root: data/busi, synthetic: true}", "{name: busi, root: nowhere}"
)


def test_data_is_checked_for_the_selected_studies_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, MISSING)
    code, _, err = _launch(path, capsys, "--dry-run", "--local")
    assert code == 1 and "data set 'busi'" in err
    code, out, err = _launch(path, capsys, "--dry-run", "--local", "--only", "dataset=kvasir")
    assert code == 0, err
    assert "busi" not in out + err
    assert _files(tmp_path) == ["only.yaml"]


CHANGING = SWEEP.replace(
    "learners: [coop, vpt, {name: maple, label: maple-text}]",
    "learners: [coop, {name: vpt, space: {lr: {low: 1.0e-4, high: 1.0e-2}}}]",
)


def test_a_changed_definition_anywhere_in_the_file_stops_a_selected_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The selection launches coop; vpt's definition changed: the stored sweep is one sweep."""
    path = _write(tmp_path, CHANGING)
    experiment = load_experiment(path)
    storage = open_storage(sweep_storage(experiment))
    ensure_studies(storage, expand(experiment).studies)
    path.write_text(CHANGING.replace("low: 1.0e-4", "low: 1.0e-5"))
    journal = tmp_path / "out" / "optuna.journal"
    before = journal.read_bytes()

    code, _, err = _launch(path, capsys, "--dry-run", "--local", "--only", "learner=coop")
    assert code == 1 and "changed the definition of studies" in err
    assert "only/clipseg-vpt/kvasir" in err and "clipseg-coop" not in err
    code, _, err = _launch(path, capsys, "--local", "--only", "learner=coop")  # the launch itself
    assert code == 1 and "changed the definition of studies" in err and "only/clipseg-vpt/" in err
    assert journal.read_bytes() == before  # nothing enqueued, nothing created
    assert not (tmp_path / "out" / "only" / "manifest.json").exists()
    code, _, _ = _launch(path, capsys, "--dry-run", "--local", "--only", "learner=coop", "--force")
    assert code == 0


# -- tvls-status --only -----------------------------------------------------------------------

STATUS = """\
name: st
output_dir: out
models: [clipseg]
learners: [coop, vpt]
datasets: [{name: a, root: data}, {name: b, root: data}]
search: {n_trials: 3}
grid:
  model.use_upsampler: [true, false]
"""


@pytest.fixture
def status_sweep(tmp_path: Path) -> Path:
    """8 studies of 3 trials; every coop study has one complete trial, every vpt study one failed."""
    path = tmp_path / "st.yaml"
    path.write_text(STATUS)
    experiment = load_experiment(path)
    storage = open_storage(sweep_storage(experiment))
    specs = expand(experiment).studies
    ensure_studies(storage, specs)
    for spec in specs:
        enqueue_missing(storage, spec)
        study = optuna.load_study(study_name=spec.name, storage=storage)
        trial = study.ask()
        if spec.learner == "coop":
            study.tell(trial, 0.5)
        else:
            trial.set_user_attr("tvls.failure", f"RuntimeError: broken {spec.name}")
            study.tell(trial, state=TrialState.FAIL)
    return path


def _status(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = status_cli.main([str(path), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_json_has_only_the_selected_rows_and_their_totals(
    status_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _status(
        status_sweep, capsys, "--json", "--only", "learner=coop", "--only", "use_upsampler=false"
    )
    report = json.loads(out)
    assert code == 0 and report["only"] == "learner=coop,model.use_upsampler=false"
    assert [row["name"] for row in report["studies"]] == [
        "st/clipseg-coop/a/use_upsampler=false",
        "st/clipseg-coop/b/use_upsampler=false",
    ]
    assert report["totals"]["n_trials"] == 6 and report["totals"]["complete"] == 2
    assert report["totals"]["failed"] == 0
    code, out, _ = _status(status_sweep, capsys, "--json")
    whole = json.loads(out)
    assert (
        whole["only"] is None and len(whole["studies"]) == 8 and whole["totals"]["n_trials"] == 24
    )


def test_status_table_lists_the_selected_studies_and_their_failures_only(
    status_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _status(status_sweep, capsys, "--only", "learner=vpt,dataset=b")
    assert code == 0
    assert (
        "st/clipseg-vpt/b/use_upsampler=true" in out
        and "st/clipseg-vpt/b/use_upsampler=false" in out
    )
    assert "clipseg-coop" not in out and "/a/" not in out
    assert "2 failed trial(s):" in out and "broken st/clipseg-vpt/b/use_upsampler=true" in out
    assert "2 studies (only learner=vpt,dataset=b): 6 trial(s) remaining" in err


def test_status_with_a_bad_only_exits_2(
    status_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _status(status_sweep, capsys, "--only", "dataset=c")
    assert code == 2 and out == ""
    assert err.strip() == "error: --only: dataset=c matches no study; valid values of dataset: a, b"


# -- tvls-collect --only ----------------------------------------------------------------------


@pytest.fixture
def collect_sweep(status_sweep: Path) -> Path:
    """The status sweep with a finished trial carrying test scores in every study."""
    experiment = load_experiment(status_sweep)
    storage = open_storage(sweep_storage(experiment))
    for number, spec in enumerate(expand(experiment).studies):
        study = optuna.load_study(study_name=spec.name, storage=storage)
        dice = 0.5 + number / 100
        study.add_trial(
            create_trial(
                value=dice,
                params={"prompt_depth": 2},
                distributions={"prompt_depth": IntDistribution(1, 11)},
                user_attrs={
                    "test_dice": dice,
                    "test_iou": dice / 2,
                    "val_dice": dice,
                    "val_iou": dice / 2,
                },
            )
        )
    return status_sweep


def _collect(
    path: Path | None, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    code = collect_cli.main([*([str(path)] if path else []), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_collect_only_tabulates_the_selection_in_its_own_folder(
    collect_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = collect_sweep.parent / "out" / "st" / "results"
    code, out, err = _collect(
        collect_sweep, capsys, "--only", "learner=vpt", "--json", "--no-plots", "--format", "md,csv"
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["only"] == "learner=vpt" and record["studies"] == 4
    assert {row["learner"] for row in record["results"]} == {"vpt"}
    assert len(record["results"]) == 4
    assert record["folder"] == str(results / "only-learner=vpt")
    assert "a selection: only learner=vpt, 4 studies" in err
    studies_csv = (results / "only-learner=vpt" / "studies.csv").read_text()
    assert "clipseg-vpt" in studies_csv and "clipseg-coop" not in studies_csv
    # The whole sweep's tables (the collector job's) are not written over by a selection.
    assert not (results / "main_table.md").exists()

    code, out, _ = _collect(
        collect_sweep, capsys, "--only", "dataset=a", "--no-plots", "--format", "md"
    )
    assert code == 0
    assert "only dataset=a" in out  # the printed table says it is a selection
    assert (results / "only-dataset=a" / "main_table-use_upsampler=true.md").is_file()

    code, out, _ = _collect(collect_sweep, capsys, "--json", "--no-plots", "--format", "csv")
    whole = json.loads(out)
    assert code == 0 and whole["only"] is None and whole["studies"] == 8
    assert {row["learner"] for row in whole["results"]} == {"coop", "vpt"}
    assert (results / "only-learner=vpt" / "studies.csv").read_text() == studies_csv


def test_collect_only_needs_the_experiment_and_known_values(
    collect_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _collect(collect_sweep, capsys, "--only", "learner=maple")
    assert code == 2 and "error: --only: learner=maple matches no study" in err
    journal = collect_sweep.parent / "out" / "optuna.journal"
    code, _, err = _collect(
        None,
        capsys,
        "--storage",
        str(journal),
        "--out",
        str(tmp_path / "t"),
        "--only",
        "learner=vpt",
    )
    assert code == 2 and "--only goes with an experiment file" in err


# -- end to end: a launch of part of the sweep, then of the rest ---------------------------------

TWO_PARTS = """\
name: parts
output_dir: ../runs/parts
models:
  - {name: clipseg, pretrained: ../runs/assets/clipseg-tiny, image_size: 96, synthetic: true}
learners: [coop, vpt]
datasets:
  - {name: synth, root: ../runs/assets/synth, synthetic: true}
data: {num_workers: 0}
training: {max_epochs: 2, patience: 2, batch_size: 8, effective_batch_size: 8, precision: "32"}
search: {n_trials: 2, n_startup_trials: 1, space: {prompt_depth: {low: 1, high: 2}}}
cluster: {parallelism: 2}
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_a_selected_local_launch_then_a_full_one_runs_each_trial_once(tmp_path: Path) -> None:
    folder = tmp_path / "experiments"
    folder.mkdir()
    experiment = folder / "parts.yaml"
    experiment.write_text(TWO_PARTS)
    loaded = load_experiment(experiment)
    coop, vpt = (spec.name for spec in expand(loaded).studies)
    manifest_path = tmp_path / "runs" / "parts" / "parts" / "manifest.json"
    dry = _cli(
        "tunevlseg.cli.launch", str(experiment), "--local", "--dry-run", "--json", cwd=folder
    )
    digest = json.loads(dry.stdout)["plan_sha256"]

    first = _cli(
        "tunevlseg.cli.launch", str(experiment), "--local", "--only", "learner=coop", cwd=folder
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Running 2 trial(s) of 1 studies (only learner=coop) locally" in first.stderr
    storage = open_storage(sweep_storage(loaded))
    coop_trials = optuna.load_study(study_name=coop, storage=storage).trials
    assert len(coop_trials) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in coop_trials)
    assert vpt not in {s.study_name for s in optuna.get_all_study_summaries(storage)}  # untouched
    manifest = json.loads(manifest_path.read_text())
    assert manifest["plan_sha256"] == digest and (manifest["studies"], manifest["trials"]) == (2, 4)
    (launch,) = manifest["launches"]
    assert launch["only"] == "learner=coop" and {s for s, _ in launch["local_tasks"]} == {coop}

    status = _cli(
        "tunevlseg.cli.status", str(experiment), "--json", "--only", "learner=vpt", cwd=folder
    )
    assert status.returncode == 0, status.stderr
    totals = json.loads(status.stdout)["totals"]
    assert (totals["n_trials"], totals["remaining"]) == (2, 2)

    rest = _cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=folder)
    assert rest.returncode == 0, rest.stderr[-3000:]
    ran = re.search(r"Running (\d+) trial\(s\) of (\d+) studies locally", rest.stderr)
    assert ran is not None and ran.groups() == ("2", "2"), rest.stderr
    storage = open_storage(sweep_storage(loaded))
    for name in (coop, vpt):
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert len(trials) == 2, name  # coop's were not run again, vpt's exactly its budget
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), name
    assert [t.number for t in optuna.load_study(study_name=coop, storage=storage).trials] == [
        t.number for t in coop_trials
    ]
    manifest = json.loads(manifest_path.read_text())
    assert manifest["plan_sha256"] == digest
    second = manifest["launches"][1]
    assert "only" not in second and {s for s, _ in second["local_tasks"]} == {vpt}
    tasks = [tuple(t) for launch in manifest["launches"] for t in launch["local_tasks"]]
    assert len(tasks) == len(set(tasks)) == 4  # each trial ran in one task, once

    again = _cli(
        "tunevlseg.cli.launch", str(experiment), "--local", "--only", "learner=vpt", cwd=folder
    )
    assert again.returncode == 0 and "The selection is complete (only learner=vpt)" in again.stderr
