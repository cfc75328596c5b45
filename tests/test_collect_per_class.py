"""Per-class scores in the collector: the best trial's classes, the per_class table, mDice beside
Dice, ``--main-metric mdice``, and results without per-class scores (older trials, outside rows).

The storage is a journal with one multi-class data set (voc: classes A, B, C with 3, 1 and 4 test
images) and one single-class set (kvasir), each tuned with CoOp and VPT; no training runs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pytest

from tunevlseg.cli.collect import main as collect_main
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.collect.report import build_report, write_reports
from tunevlseg.collect.results import StudyData, StudyResult, class_mean, collect_studies
from tunevlseg.collect.tables import build_main_table, per_class_table, to_markdown
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import Experiment, load_experiment
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.studies import ensure_studies

TEXT = """\
name: pc
output_dir: out
models: [clipseg]
learners: [coop, vpt]
datasets:
  - {name: kvasir, category: Non-Radiology, root: a}
  - {name: voc, category: Open Domain, root: b, format: natural}
search: {n_trials: 2}
"""


def _classes(a: float, b: float, c: float) -> dict[str, dict[str, float | int]]:
    return {
        "A": {"dice": a, "iou": a / 2, "n": 3},
        "B": {"dice": b, "iou": b / 2, "n": 1},
        "C": {"dice": c, "iou": c / 2, "n": 4},
    }


def _sample_mean(per_class: dict[str, dict[str, float | int]]) -> float:
    return sum(s["dice"] * s["n"] for s in per_class.values()) / sum(
        s["n"] for s in per_class.values()
    )


COOP_BEST = _classes(0.9, 0.1, 0.5)  # Dice (2.7 + 0.1 + 2.0) / 8 = 0.60, mDice 0.50
VPT_VOC = _classes(0.7, 0.6, 0.8)  # Dice (2.1 + 0.6 + 3.2) / 8 = 0.7375, mDice 0.70
# study -> [(validation value, attributes)]
TRIALS: dict[str, list[tuple[float, dict[str, Any]]]] = {
    "pc/clipseg-coop/voc": [
        (0.7, {"test_per_class": _classes(1.0, 0.0, 0.5)}),  # mDice 0.5, Dice 0.625; not best
        (0.9, {"test_per_class": COOP_BEST}),  # best by validation
    ],
    "pc/clipseg-vpt/voc": [(0.8, {"test_per_class": VPT_VOC})],
    "pc/clipseg-coop/kvasir": [
        (0.8, {"test_dice": 0.8, "test_per_class": {"polyp": {"dice": 0.8, "iou": 0.6, "n": 5}}})
    ],
    "pc/clipseg-vpt/kvasir": [(0.7, {"test_dice": 0.7})],  # a trial from before per-class scores
}


@pytest.fixture
def experiment(tmp_path: Path) -> Experiment:
    path = tmp_path / "pc.yaml"
    path.write_text(TEXT)
    loaded = load_experiment(path)
    storage = open_storage(sweep_storage(loaded))
    ensure_studies(storage, expand(loaded).studies)
    for name, trials in TRIALS.items():
        study = optuna.load_study(study_name=name, storage=storage)
        for value, attrs in trials:
            trial = study.ask()
            per_class = attrs.get("test_per_class")
            attrs = {"test_dice": _sample_mean(per_class) if per_class else None, **attrs}
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)  # what the worker does with every result key
            study.tell(trial, value)
    return loaded


@pytest.fixture
def studies(experiment: Experiment) -> list[StudyData]:
    return collect_studies(open_storage(sweep_storage(experiment)), "pc")


def _results(studies: list[StudyData]) -> dict[str, StudyResult]:
    return {d.result.study: d.result for d in studies}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_class_mean_is_the_unweighted_mean_over_classes() -> None:
    assert class_mean(_classes(1.0, 0.0, 0.5)) == pytest.approx(0.5)
    assert _sample_mean(_classes(1.0, 0.0, 0.5)) == pytest.approx(0.625)  # differs: weighted
    assert class_mean({"polyp": {"dice": 0.8, "n": 5}}) == pytest.approx(0.8)  # one class: Dice
    assert class_mean({}) is None  # no per-class scores: absent, not 0
    assert class_mean(_classes(1.0, 0.0, 0.5), "iou") == pytest.approx(0.25)


def test_study_results_keep_the_best_trials_per_class_scores(studies: list[StudyData]) -> None:
    results = _results(studies)
    coop = results["pc/clipseg-coop/voc"]
    assert coop.best_trial == 1
    assert dict(coop.per_class) == COOP_BEST  # the best trial's, chosen on validation
    assert coop.test_dice == pytest.approx(0.60)
    assert coop.test_mdice == pytest.approx(0.50)
    assert results["pc/clipseg-vpt/voc"].test_mdice == pytest.approx(0.70)
    assert results["pc/clipseg-coop/kvasir"].test_mdice == pytest.approx(0.80)
    old = results["pc/clipseg-vpt/kvasir"]
    assert (old.per_class, old.test_mdice, old.test_dice) == ({}, None, pytest.approx(0.7))


def test_per_class_table_layout_and_numbers(studies: list[StudyData]) -> None:
    summary = per_class_table([d.result for d in studies])
    assert summary is not None
    text = to_markdown_lines(summary.text)
    assert text[0] == "| Data set | Class | Images | clipseg CoOp | clipseg VPT |"
    # kvasir (one class) is left out: its Dice is the main table's
    assert text[2:7] == [
        "| voc | A | 3 | **90.00** | 70.00 |",
        "|  | B | 1 | 10.00 | **60.00** |",
        "|  | C | 4 | 50.00 | **80.00** |",
        "|  | mDice (class mean) |  | 50.00 | **70.00** |",
        "|  | Dice (sample mean) |  | 60.00 | **73.75** |",
    ]
    records = {(r["learner"], r["class_name"]): r for r in summary.records}
    assert len(records) == 6
    assert records[("coop", "B")]["test_dice"] == pytest.approx(0.1)
    assert records[("coop", "B")]["test_iou"] == pytest.approx(0.05)
    assert (records[("vpt", "C")]["n"], records[("vpt", "C")]["best_trial"]) == (4, 0)


def to_markdown_lines(table: Any) -> list[str]:
    from tunevlseg.collect import render

    return render.to_markdown(table).splitlines()


def test_main_table_shows_mdice_on_request(studies: list[StudyData]) -> None:
    results = [d.result for d in studies]
    dice = to_markdown(build_main_table(results)).splitlines()
    assert dice[2] == "| clipseg | CoOp | 80.00 | 60.00 | 70.00 ± 10.00 |"
    assert dice[3] == "|  | VPT | 70.00 | 73.75 | 71.88 ± 1.88 |"
    mdice = to_markdown(build_main_table(results, "mdice"))
    lines = mdice.splitlines()
    assert lines[2] == "| clipseg | CoOp | 80.00 | 50.00 | 65.00 ± 15.00 |"
    assert lines[3] == "|  | VPT | – | 70.00 | 70.00 |"  # no per-class scores: –
    assert "mDice: the mean over classes" in mdice and "no per-class scores" in mdice
    with pytest.raises(ValueError, match="unknown metric 'miou'"):
        build_main_table(results, "miou")


def test_report_writes_per_class_files_and_mdice_beside_dice(
    experiment: Experiment, tmp_path: Path
) -> None:
    folder = tmp_path / "res"
    report = write_reports(experiment, folder, plots=False, importance=False)
    names = {p.name for p in report.files}
    assert {"per_class.md", "per_class.tex", "per_class.csv"} <= names
    assert "## pc: test Dice × 100" in report.main_markdown  # the paper's metric by default
    assert (folder / "per_class.md").read_text().startswith("## Test Dice per class")
    assert "\\textbf{90.00}" in (folder / "per_class.tex").read_text()
    assert "mDice (class mean)" in (folder / "report.html").read_text()
    per_class = _read_csv(folder / "per_class.csv")
    assert {
        (r["learner"], r["class_name"], r["test_dice"]) for r in per_class if r["class_name"] == "A"
    } == {("coop", "A", "0.9"), ("vpt", "A", "0.7")}
    main = {(r["learner"], r["dataset"]): r for r in _read_csv(folder / "main_table.csv")}
    assert float(main[("coop", "voc")]["test_dice"]) == pytest.approx(0.60)
    assert float(main[("coop", "voc")]["test_mdice"]) == pytest.approx(0.50)
    assert main[("vpt", "kvasir")]["test_mdice"] == ""
    studies_csv = {r["study"]: r for r in _read_csv(folder / "studies.csv")}
    assert float(studies_csv["pc/clipseg-vpt/voc"]["test_mdice"]) == pytest.approx(0.70)
    assert '"A": {"dice": 0.7' in studies_csv["pc/clipseg-vpt/voc"]["per_class"]


def test_no_per_class_scores_no_per_class_files(studies: list[StudyData], tmp_path: Path) -> None:
    from dataclasses import replace

    bare = [StudyData(replace(d.result, per_class={}), d.direction, d.trials) for d in studies]
    report = build_report(
        bare,
        tmp_path / "res",
        title="pc",
        formats=("md", "csv"),
        plots=False,
        importance=False,
        main_metric="mdice",
    )
    assert not [p for p in report.files if p.name.startswith("per_class")]
    assert "main metric mdice: no result has per-class scores" in " ".join(report.warnings)


def test_cli_main_metric_mdice_and_outside_rows(
    experiment: Experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "paper.csv"
    outside.write_text(
        "model,learner,dataset,category,test_dice\nclipseg,e2e,voc,Open Domain,0.5\n"
    )
    out = tmp_path / "tables"
    assert (
        collect_main(
            [
                str(experiment.path),
                "--out",
                str(out),
                "--results",
                str(outside),
                "--main-metric",
                "mdice",
                "--format",
                "md",
                "--no-plots",
                "--no-importance",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "## pc: test mDice (class mean) × 100" in captured.out
    assert "| clipseg | CoOp | 80.00 | 50.00 | 65.00 ± 15.00 |" in captured.out
    assert "|  | End-to-end | – | – | – |" in captured.out  # outside rows have no classes
    assert "per_class.md" in captured.err
    assert (out / "main_table.md").read_text().startswith("## pc: test mDice (class mean) × 100")


def test_cli_unknown_main_metric_exits_2(
    experiment: Experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert collect_main([str(experiment.path), "--out", str(out), "--main-metric", "miou"]) == 2
    assert (
        "--main-metric: unknown metric 'miou'; choose from dice, mdice" in capsys.readouterr().err
    )
    assert not out.exists()
