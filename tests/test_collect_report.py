"""The collector's tables, outside results, CLI and plots on a storage with known trials.

Every expected number below is worked out by hand from ``TRIALS``.
"""

from __future__ import annotations

import csv
import random
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tunevlseg.cli.collect import main as collect_main
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.collect import importance as importance_module, plots as plots_module
from tunevlseg.collect.importance import learner_importances, rank_quantiles
from tunevlseg.collect.outside import OutsideResultsError, merge_results, read_outside_results
from tunevlseg.collect.plots import depth_points, history_pages, plot_history_pages
from tunevlseg.collect.report import build_report, write_reports
from tunevlseg.collect.results import StudyData, collect_studies
from tunevlseg.collect.tables import build_main_table, to_latex, to_markdown
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import Experiment, load_experiment
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.studies import ensure_studies

TEXT = """\
name: r
output_dir: out
models: [clipseg, cris]
learners: [coop, vpt]
datasets:
  - {name: kvasir, category: Non-Radiology, root: a}
  - {name: busi, category: Radiology, root: b}
search: {n_trials: 4}
cluster: {slurm: {gpus: 2}}
"""

# (state, val_dice, test_dice, prompt_depth, task_seconds, wall_time_s, trainable, seconds held)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
C, F, P, R, W = (
    TrialState.COMPLETE,
    TrialState.FAIL,
    TrialState.PRUNED,
    TrialState.RUNNING,
    TrialState.WAITING,
)
TRIALS: dict[str, list[tuple[Any, ...]]] = {
    "r/clipseg-coop/kvasir": [
        (C, 0.80, 0.70, 1, 3600.0, 3000.0, 2048, 0),
        (C, 0.90, 0.60, 3, 1800.0, 1500.0, 6144, 0),  # best by validation, worse on test
        (C, 0.85, 0.95, 3, 1800.0, 1500.0, 6144, 0),  # best by test: must not be chosen
        (F, None, None, 2, None, None, None, 600),  # failed after 600 s, no attributes
    ],
    "r/clipseg-coop/busi": [
        (C, 0.50, 0.40, 2, 900.0, 800.0, 4096, 0),
        (C, 0.50, 0.45, 5, 900.0, 800.0, 10240, 0),  # same validation value: trial 0 wins
        (P, None, None, 4, None, None, None, 300),
        (R, None, None, 6, None, None, None, 0),
    ],
    "r/clipseg-vpt/kvasir": [
        (C, 0.70, 0.65, 1, 1200.0, 1000.0, 768, 0),
        (W, None, None, None, None, None, None, 0),
    ],
    "r/clipseg-vpt/busi": [],  # a partial sweep: nothing ran yet
    "r/cris-coop/kvasir": [(C, 0.60, 0.55, 2, None, 2400.0, 4096, 0)],  # no task_seconds
    "r/cris-coop/busi": [(C, 0.75, 0.72, 4, 3600.0, 3000.0, 8192, 0)],
}
TOTAL = 150_000_000
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-5, 5e-3, log=True),
    "prompt_depth": IntDistribution(1, 11),
}


def _frozen(row: tuple[Any, ...], number: int) -> FrozenTrial:
    state, val, test, depth, task, wall, trainable, held = row
    attrs: dict[str, Any] = {"tvls.started_at": 1.7e9}
    if test is not None:
        attrs.update(
            test_dice=test,
            test_iou=test / 2,
            val_dice=val,
            val_iou=val / 2,
            trainable_params=trainable,
            total_params=TOTAL,
            epochs_run=10,
            best_epoch=4,
        )
    if task is not None:
        attrs["tvls.task_seconds"] = task
    if wall is not None:
        attrs["wall_time_s"] = wall
    params = {} if depth is None else {"lr": 1e-3 * (number + 1), "prompt_depth": depth}
    finished = state in (C, F, P)
    return FrozenTrial(
        number=number,
        state=state,
        value=val if state == C else None,
        datetime_start=None if state == W else T0,
        datetime_complete=T0 + timedelta(seconds=held) if finished else None,
        params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params},
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


@pytest.fixture
def experiment(tmp_path: Path) -> Experiment:
    path = tmp_path / "r.yaml"
    path.write_text(TEXT)
    loaded = load_experiment(path)
    storage = open_storage(sweep_storage(loaded))
    ensure_studies(storage, expand(loaded).studies)
    for name, rows in TRIALS.items():
        study = optuna.load_study(study_name=name, storage=storage)
        study.add_trials([_frozen(row, number) for number, row in enumerate(rows)])
    return loaded


@pytest.fixture
def studies(experiment: Experiment) -> list[StudyData]:
    return collect_studies(open_storage(sweep_storage(experiment)), "r", gpus_per_task=2)


def _by_name(studies: list[StudyData]) -> dict[str, StudyData]:
    return {d.result.study: d for d in studies}


# -- best trials and per-study numbers -------------------------------------------------------


def test_best_trial_by_validation_with_the_tie_rule(studies: list[StudyData]) -> None:
    found = _by_name(studies)
    coop = found["r/clipseg-coop/kvasir"].result
    assert (coop.best_trial, coop.best_value, coop.test_dice) == (
        1,
        0.90,
        0.60,
    )  # not trial 2 (0.95)
    assert coop.best_params == {"lr": pytest.approx(2e-3), "prompt_depth": 3}
    assert (coop.trainable_params, coop.total_params, coop.epochs_run) == (6144, TOTAL, 10)
    tie = found["r/clipseg-coop/busi"].result
    assert (tie.best_trial, tie.test_dice) == (0, 0.40)  # 0.50 == 0.50: the earlier trial wins
    assert (tie.complete, tie.pruned, tie.running, tie.failed, tie.remaining) == (2, 1, 1, 0, 1)
    empty = found["r/clipseg-vpt/busi"].result
    assert (empty.best_trial, empty.test_dice, empty.remaining) == (None, None, 4)


def test_compute_seconds_follow_the_documented_fallbacks(studies: list[StudyData]) -> None:
    found = {name: d.result for name, d in _by_name(studies).items()}
    coop = found["r/clipseg-coop/kvasir"]
    # task seconds of the 3 complete trials + 600 s start-to-complete of the failed one
    assert (coop.compute_seconds, coop.timed_trials) == (3600 + 1800 + 1800 + 600, 4)
    assert (coop.wall_time_s, coop.task_seconds) == (6000, 7200)
    assert coop.gpu_hours == pytest.approx(2 * 7800 / 3600)  # 4.33
    busi = found["r/clipseg-coop/busi"]
    assert busi.compute_seconds == 900 + 900 + 300  # the running trial counts 0
    assert found["r/cris-coop/kvasir"].compute_seconds == 2400  # wall_time_s: no task seconds
    assert found["r/clipseg-vpt/kvasir"].compute_seconds == 1200  # the waiting trial counts 0


# -- the main table in every format -----------------------------------------------------------


def test_main_table_numbers_markdown_and_latex_bold(studies: list[StudyData]) -> None:
    table = build_main_table([d.result for d in studies])
    assert table.datasets == [("Non-Radiology", "kvasir"), ("Radiology", "busi")]
    assert table.rows == [("clipseg", "CoOp"), ("clipseg", "VPT"), ("cris", "CoOp")]
    assert table.row_stats(("clipseg", "CoOp")) == pytest.approx((50.0, 10.0))  # (60, 40)
    assert table.row_stats(("clipseg", "VPT")) == pytest.approx((65.0, 0.0))  # busi missing
    assert table.row_stats(("cris", "CoOp")) == pytest.approx((63.5, 8.5))  # (55, 72)
    # row means 50, 65, 63.5: mean 59.5, population std sqrt((9.5² + 5.5² + 4²) / 3)
    assert table.average_across_methods() == pytest.approx((59.5, (136.5 / 3) ** 0.5))
    md = to_markdown(table).splitlines()
    assert md[2] == "| clipseg | CoOp | 60.00 | 40.00 | 50.00 ± 10.00 |"
    assert md[3] == "|  | VPT | 65.00 | – | 65.00 |"  # a mean of one value: no "± 0.00"
    assert md[4] == "| cris | CoOp | 55.00 | 72.00 | 63.50 ± 8.50 |"
    assert md[5] == "| Average across methods |  |  |  | 59.50 ± 6.75 |"
    latex = to_latex(table).splitlines()
    assert "\\begin{tabular}{llrrc}" in latex
    assert (
        " &  & \\multicolumn{1}{c}{Non-Radiology} & \\multicolumn{1}{c}{Radiology} &  \\\\" in latex
    )
    assert "\\cmidrule(lr){3-3} \\cmidrule(lr){4-4}" in latex
    # best per column in bold: kvasir 65.00 (VPT), busi 72.00 (CRIS CoOp), mean 65.00 (VPT)
    assert "clipseg & CoOp & 60.00 & 40.00 & 50.00 $\\pm$ 10.00 \\\\" in latex
    assert " & VPT & \\textbf{65.00} & -- & \\textbf{65.00} \\\\" in latex
    assert "cris & CoOp & 55.00 & \\textbf{72.00} & 63.50 $\\pm$ 8.50 \\\\" in latex
    assert "\\multicolumn{2}{l}{Average across methods} &  &  & 59.50 $\\pm$ 6.75 \\\\" in latex
    assert latex.count("\\midrule") == 3  # header, between the models, before the average


def test_latex_bolds_every_tied_best_value() -> None:
    from tunevlseg.collect.tables import MainTable

    table = MainTable(
        [("Radiology", "a_b")],
        [("m", "CoOp"), ("m", "VPT")],
        {("m", "CoOp"): {"a_b": 70.004}, ("m", "VPT"): {"a_b": 69.996}},
    )
    latex = to_latex(table)
    # equal as shown: both bold, in the data set column and in the mean column (one data set:
    # the mean alone, no "± 0.00")
    assert latex.count("\\textbf{70.00}") == 4
    assert "a\\_b" in latex  # escaped


# -- written files ----------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_files_in_every_format(experiment: Experiment, tmp_path: Path) -> None:
    report = write_reports(experiment, tmp_path / "res")
    folder = tmp_path / "res"
    names = {p.relative_to(folder).as_posix() for p in report.files}
    for stem in (
        "main_table",
        "trial_states",
        "best_params",
        "parameters",
        "compute",
        "importance",
    ):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names, stem
    assert {
        "studies.csv",
        "report.html",
        "plots/prompt_depth.png",
        "plots/importance.png",
        "plots/history/history-001.png",
    } <= names
    assert not list(folder.rglob("*.tmp"))

    main = {
        (r["model"], r["learner"], r["dataset"]): r for r in _read_csv(folder / "main_table.csv")
    }
    assert float(main[("clipseg", "coop", "kvasir")]["test_dice"]) == 0.60
    assert main[("clipseg", "coop", "kvasir")]["best_trial"] == "1"
    assert main[("clipseg", "vpt", "busi")]["test_dice"] == ""  # missing stays empty
    assert float(main[("cris", "coop", "busi")]["test_dice"]) == 0.72

    states = (folder / "trial_states.md").read_text().splitlines()
    # Epochs: 2 complete trials of 10; the pruned one recorded none, so nothing is claimed saved.
    assert "| r/clipseg-coop/busi | 4 | 2 | 1 | 0 | 1 | 0 | 1 | 20 | 0 |" in states
    assert any(
        row.startswith("| r/clipseg-vpt/kvasir | 4 | 1 | 0 | 0 | 0 | 1 | 3 |") for row in states
    )
    assert any(
        row.startswith("| Total | 24 | 8 | 1 | 1 | 1 | 1 | 15 |") for row in states
    )  # 6 studies x 4; 24 - 8 - 1 = 15

    compute = {r["study"]: r for r in _read_csv(folder / "compute.csv")}
    assert float(compute["r/clipseg-coop/kvasir"]["compute_seconds"]) == 7800
    assert float(compute["r/clipseg-coop/kvasir"]["gpu_hours"]) == pytest.approx(7800 * 2 / 3600)
    compute_md = (folder / "compute.md").read_text()
    assert "| r/clipseg-coop/kvasir | 4 | 1.67 | 2.00 | 2.17 | 2 | 4.33 |" in compute_md
    # timed trials 4 + 3 + 1 + 0 + 1 + 1; wall 6000 + 1600 + 1000 + 2400 + 3000 = 14000 s;
    # task 7200 + 1800 + 1200 + 3600 = 13800 s; compute 7800 + 2100 + 1200 + 2400 + 3600 = 17100 s
    assert "| Total | 10 | 3.89 | 3.83 | 4.75 |  | 9.50 |" in compute_md

    params = _read_csv(folder / "parameters.csv")
    coop = next(r for r in params if (r["model"], r["learner"]) == ("clipseg", "coop"))
    # best trials: kvasir trial 1 (6144), busi trial 0 (4096)
    assert (coop["studies"], coop["trainable_min"], coop["trainable_max"]) == ("2", "4096", "6144")
    assert float(coop["trainable_mean"]) == 5120
    assert float(coop["trainable_percent"]) == pytest.approx(100 * 5120 / TOTAL)
    assert (
        "| clipseg | CoOp | 2 | 4,096–6,144 | 5,120 | 150,000,000 | 0.003 |"
        in (folder / "parameters.md").read_text()
    )

    best = [
        r for r in _read_csv(folder / "best_params.csv") if r["study"] == "r/clipseg-coop/kvasir"
    ]
    assert {(r["param"], r["value"]) for r in best} == {("lr", "0.002"), ("prompt_depth", "3")}
    assert (
        "| r/clipseg-coop/kvasir | 1 | 0.9000 | 60.00 | lr=2.00e-03, prompt_depth=3 |"
        in (folder / "best_params.md").read_text()
    )

    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<td><b>65.00</b></td>" in page and "<style>" in page
    for png in ("prompt_depth.png", "importance.png", "history/history-001.png"):
        width, height = _png_size(folder / "plots" / png)
        assert width > 300 and height > 150
        assert (folder / "plots" / png).stat().st_size > 5_000


def test_formats_select_the_files(experiment: Experiment, tmp_path: Path) -> None:
    report = write_reports(
        experiment, tmp_path / "res", formats=("latex",), plots=False, importance=False
    )
    assert sorted(p.suffix for p in report.files) == [".tex"] * 5  # main + 4 summaries
    assert "| clipseg | CoOp | 60.00 |" in report.main_markdown


# -- plots' data ------------------------------------------------------------------------------


def test_depth_points_and_history_layout(studies: list[StudyData]) -> None:
    points = depth_points(studies)
    assert dict(points["clipseg"]["CoOp"]) == {1: [70.0], 3: [60.0, 95.0], 2: [40.0], 5: [45.0]}
    assert dict(points["cris"]["CoOp"]) == {2: [pytest.approx(55.0)], 4: [72.0]}
    assert history_pages(studies) == [
        (["clipseg CoOp", "clipseg VPT", "cris CoOp"], ["busi", "kvasir"])
    ]


def test_history_pages_drawn_in_parallel_equal_the_serial_drawing(
    studies: list[StudyData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plots_module, "PAGE_ROWS", 1)  # one page per model + learner: 3 pages
    monkeypatch.setattr(plots_module.os, "sched_getaffinity", lambda pid: {0, 1})
    contexts: list[str] = []
    real_context = plots_module.multiprocessing.get_context
    monkeypatch.setattr(
        plots_module.multiprocessing,
        "get_context",
        lambda method: contexts.append(method) or real_context(method),
    )
    parallel = plot_history_pages(studies, tmp_path / "parallel")
    assert contexts == ["fork"]
    monkeypatch.setattr(plots_module.os, "sched_getaffinity", lambda pid: {0})
    serial = plot_history_pages(studies, tmp_path / "serial")
    assert (
        [p.name for p in parallel]
        == [p.name for p in serial]
        == ["history-001.png", "history-002.png", "history-003.png"]
    )
    assert [p.read_bytes() for p in parallel] == [p.read_bytes() for p in serial]


# -- hyperparameter importance ----------------------------------------------------------------


def test_importance_pools_studies_with_three_trials_and_survives_failures(
    studies: list[StudyData], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = learner_importances(studies)
    assert (found.evaluated, found.too_few, found.failed) == (1, 5, [])  # only coop/kvasir has 3
    assert [(r.learner, r.n_studies, r.n_trials) for r in found.rows] == [("coop", 1, 3)] * 2
    assert sum(r.importance for r in found.rows) == pytest.approx(1.0)

    def broken(trials: list[FrozenTrial]) -> None:
        raise RuntimeError("evaluator exploded")

    monkeypatch.setattr(importance_module, "pooled_importance", broken)
    failing = learner_importances(studies)
    assert failing.rows == [] and failing.failed == ["CoOp: RuntimeError: evaluator exploded"]


def test_rank_quantiles_put_the_best_first_and_share_ties() -> None:
    trials = [optuna.trial.create_trial(value=v) for v in (0.5, 0.9, 0.5, 0.1)]
    assert rank_quantiles(trials, "maximize") == [0.5, 0.125, 0.5, 0.875]
    assert rank_quantiles(trials, "minimize") == [0.5, 0.875, 0.5, 0.125]


def _trials_driven_by_x(rng: random.Random, offset: float, n: int) -> list[FrozenTrial]:
    """Value = offset + x (higher is better) + a little noise; y does not matter."""
    distributions = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    trials = []
    for _ in range(n):
        x, y = rng.random(), rng.random()
        trials.append(
            optuna.trial.create_trial(
                value=offset + 0.1 * x + rng.gauss(0, 0.002),
                params={"x": x, "y": y},
                distributions=distributions,
            )
        )
    return trials


def test_pooled_importance_equals_optunas_and_ranks_within_each_study() -> None:
    rng = random.Random(0)
    # Two data sets on different scales: raw values would make "which data set" the signal.
    easy, hard = _trials_driven_by_x(rng, 0.8, 40), _trials_driven_by_x(rng, 0.1, 40)
    pool = []
    for trials in (easy, hard):
        pool += importance_module.ranked_trials(
            trials, rank_quantiles(trials, "maximize"), len(pool)
        )
    pooled = importance_module.pooled_importance(pool)
    assert pooled["x"] > 0.8 > pooled["y"]

    reference = optuna.create_study(direction="minimize")  # Optuna's documented path
    reference.add_trials(pool)
    expected = optuna.importance.get_param_importances(
        reference, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
    )
    assert pooled == pytest.approx(dict(expected))


# -- outside results --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_outside_results_merge_storage_wins(studies: list[StudyData], tmp_path: Path) -> None:
    outside = read_outside_results(
        [
            _write(
                tmp_path / "e2e.csv",
                "model,learner,dataset,category,test_dice\n"
                "clipseg,e2e,kvasir,Non-Radiology,0.80\n"
                "clipseg,End-to-end,busi,Radiology,0.70\n"
                "clipseg,coop,kvasir,Non-Radiology,0.99\n"  # the storage has 0.60: it wins
                "clipseg,VPT,busi,Radiology,0.50\n",
            )  # the storage has no value yet: fills it
        ]
    )
    merged, warnings = merge_results([d.result for d in studies], outside)
    assert warnings == [
        "clipseg CoOp on kvasir: the storage (60.00) wins over e2e.csv (99.00)",
        "clipseg VPT on busi: no storage result yet; shown from e2e.csv",
    ]
    table = build_main_table(merged)
    assert table.rows == [
        ("clipseg", "CoOp"),
        ("clipseg", "VPT"),
        ("clipseg", "End-to-end"),
        ("cris", "CoOp"),
    ]
    assert table.cells[("clipseg", "CoOp")]["kvasir"] == pytest.approx(60.0)
    assert table.row_stats(("clipseg", "VPT")) == pytest.approx((57.5, 7.5))  # (65, 50)
    assert table.row_stats(("clipseg", "End-to-end")) == pytest.approx((75.0, 5.0))
    assert "clipseg End-to-end: from e2e.csv, not from the study storage." in table.footnotes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model,learner,dataset,test_dice\nm,coop,a,0.5\n",
            "bad.csv:1: missing column(s) category",
        ),
        ("", "bad.csv:1: missing column(s) model, learner, dataset, category, test_dice"),
        (
            "model,learner,dataset,category,test_dice\nm,coop,a,X,0.5\nm,coop,b,X,85.2\n",
            "bad.csv:3: test_dice 85.2 is outside [0, 1] (give Dice as a fraction, not × 100)",
        ),
        (
            "model,learner,dataset,category,test_dice\nm,coop,a,X,-0.1\n",
            "bad.csv:2: test_dice -0.1 is outside [0, 1]",
        ),
        (
            "model,learner,dataset,category,test_dice\nm,coop,a,X,high\n",
            "bad.csv:2: test_dice 'high' is not a number",
        ),
        (
            "model,learner,dataset,category,test_dice\nm,coop,a,X,0.5\n\nm,CoOp,a,X,0.6\n",
            "bad.csv:4: duplicate result for model m, learner CoOp, data set a (first at ",
        ),
        ("model,learner,dataset,category,test_dice\nm,,a,X,0.5\n", "bad.csv:2: empty learner"),
    ],
)
def test_outside_results_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(OutsideResultsError) as error:
        read_outside_results([_write(tmp_path / "bad.csv", text)])
    assert message in str(error.value)


def test_duplicates_across_files_and_all_problems_at_once(tmp_path: Path) -> None:
    header = "model,learner,dataset,category,test_dice\n"
    one = _write(tmp_path / "one.csv", header + "m,coop,a,X,0.5\n")
    two = _write(tmp_path / "two.csv", header + "m,coop,a,X,0.6\nm,coop,b,X,2\n")
    with pytest.raises(OutsideResultsError) as error:
        read_outside_results([one, two])
    text = str(error.value)
    assert text.startswith("2 problems in the outside results:")
    assert (
        f"{two}:2: duplicate result for model m, learner CoOp, data set a (first at {one}:2)"
        in text
    )
    assert f"{two}:3: test_dice 2 is outside [0, 1]" in text


# -- the command ------------------------------------------------------------------------------


def test_cli_with_results_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _write(
        tmp_path / "paper.csv",
        "model,learner,dataset,category,test_dice,notes\n"
        "clipseg,e2e,kvasir,Non-Radiology,0.8125,from Table 3\n"
        "clipseg,e2e,busi,Radiology,0.6875,\n"
        "clipseg,coop,kvasir,Non-Radiology,0.75,\n",
    )
    out = tmp_path / "tables"
    assert collect_main(["--results", str(results), "--out", str(out), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "| clipseg | CoOp | 75.00 | – | 75.00 |" in captured.out
    assert "|  | End-to-end | 81.25 | 68.75 | 75.00 ± 6.25 |" in captured.out
    assert "| Average across methods |  |  |  | 75.00 ± 0.00 |" in captured.out
    # no storage: the main table only (no trial tables), in every format
    assert (
        f"wrote 4 files under {out}: main_table.md, main_table.tex, main_table.csv, report.html"
        in captured.err
    )
    assert (out / "report.html").is_file() and (out / "main_table.tex").is_file()
    rows = _read_csv(out / "main_table.csv")
    assert [(r["learner"], r["dataset"], r["test_dice"], r["source"]) for r in rows] == [
        ("e2e", "kvasir", "0.8125", "paper.csv"),
        ("e2e", "busi", "0.6875", "paper.csv"),
        ("coop", "kvasir", "0.75", "paper.csv"),
    ]


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path / "bad.csv", "model,learner,dataset,category,test_dice\nm,coop,a,X,1.5\n")
    assert collect_main(["--results", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:2: test_dice 1.5 is outside [0, 1]" in capsys.readouterr().err
    assert collect_main([]) == 2
    assert "give an experiment file" in capsys.readouterr().err
    assert collect_main(["--results", str(bad)]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert collect_main(["--results", str(bad), "--out", "o", "--format", "md,pdf"]) == 2
    assert "unknown format 'pdf'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_experiment_and_outside_results(
    experiment: Experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = _write(
        tmp_path / "o.csv",
        "model,learner,dataset,category,test_dice\ncris,coop,busi,Radiology,0.10\n",
    )
    code = collect_main(
        [
            str(experiment.path),
            "--results",
            str(outside),
            "--format",
            "md,csv",
            "--no-plots",
            "--no-importance",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "| cris | CoOp | 55.00 | 72.00 | 63.50 ± 8.50 |" in captured.out
    assert "warning: cris CoOp on busi: the storage (72.00) wins over o.csv (10.00)" in captured.err
    folder = experiment.output_dir / experiment.spec.name / "results"
    assert (folder / "main_table.md").read_text().startswith("## r: test Dice × 100\n\n| Model |")
    assert not list(folder.glob("*.tex")) and not (folder / "report.html").exists()


def test_outside_rows_join_every_grid_cell(tmp_path: Path) -> None:
    from dataclasses import replace

    from tunevlseg.collect.results import StudyResult

    base = StudyResult(
        "s",
        "g",
        "clipseg",
        "coop",
        "CoOp",
        "kvasir",
        "X",
        "",
        1,
        1,
        0,
        0,
        0,
        0,
        0,
        0.9,
        0.5,
        None,
        None,
    )
    storage = [replace(base, grid="up=true"), replace(base, grid="up=false", test_dice=0.7)]
    outside = read_outside_results(
        [
            _write(
                tmp_path / "o.csv",
                "model,learner,dataset,category,test_dice\nclipseg,e2e,kvasir,X,0.8\n",
            )
        ]
    )
    studies = [StudyData(result, "maximize", []) for result in storage]
    report = build_report(
        studies, tmp_path / "res", title="g", outside=outside, formats=("md",), plots=False
    )
    assert sorted(p.name for p in report.files if p.name.startswith("main_table")) == [
        "main_table-up=false.md",
        "main_table-up=true.md",
    ]
    assert "| End-to-end | 80.00 |" in (tmp_path / "res" / "main_table-up=true.md").read_text()


def test_cli_storage_url_without_experiment(experiment: Experiment, tmp_path: Path) -> None:
    url = sweep_storage(experiment).url
    out = tmp_path / "from-storage"
    assert (
        collect_main(
            [
                "--storage",
                url,
                "--sweep",
                "r",
                "--out",
                str(out),
                "--format",
                "csv",
                "--no-plots",
                "--no-importance",
            ]
        )
        == 0
    )
    compute = {r["study"]: r for r in _read_csv(out / "compute.csv")}
    # no experiment file and no --gpus-per-task: GPU-hours unknown, seconds still summed
    assert compute["r/clipseg-coop/kvasir"]["gpu_hours"] == ""
    assert float(compute["r/clipseg-coop/kvasir"]["compute_seconds"]) == 7800
    assert (
        collect_main(
            [
                "--storage",
                url,
                "--out",
                str(out),
                "--format",
                "csv",
                "--no-plots",
                "--no-importance",
                "--gpus-per-task",
                "1",
            ]
        )
        == 0
    )
    compute = {r["study"]: r for r in _read_csv(out / "compute.csv")}
    assert float(compute["r/cris-coop/busi"]["gpu_hours"]) == 1.0  # 3600 s x 1 GPU
