"""The report's finish: whole labels in the plots, no empty CSV files, no "± 0.00" of one value."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tunevlseg.cli.collect import main as collect_main
from tunevlseg.collect import plots
from tunevlseg.collect.importance import Importances, LearnerImportance
from tunevlseg.collect.report import build_report
from tunevlseg.collect.results import StudyData, StudyResult
from tunevlseg.collect.tables import (
    MAIN_TABLE_COLUMNS,
    MainTable,
    build_main_table,
    main_table_rows,
    to_html,
    to_latex,
    to_markdown,
)

# -- data -------------------------------------------------------------------------------------

LONG_DATASET = "chexlocalize-frontal-and-lateral-views-2024"
LONG_TITLE = "MaPLe (maple-gaussian-initialisation-variant)"


def _trial(number: int, value: float, depth: int) -> FrozenTrial:
    return optuna.trial.create_trial(
        value=value,
        params={"prompt_depth": depth},
        distributions={"prompt_depth": IntDistribution(1, 11)},
        user_attrs={"test_dice": value - 0.05},
        state=TrialState.COMPLETE,
    )


def _study(
    model: str,
    learner: str,
    title: str,
    dataset: str,
    values: list[float],
    grid: str = "",
    n_trials: int = 4,
) -> StudyData:
    trials = [_trial(n, v, 1 + n % 3) for n, v in enumerate(values)]
    for number, trial in enumerate(trials):
        trial.number = number
    best = max(trials, key=lambda t: t.value or 0.0) if trials else None
    result = StudyResult(
        study=f"s/{model}-{learner}/{dataset}" + (f"/{grid}" if grid else ""),
        sweep="s",
        model=model,
        learner=learner,
        learner_title=title,
        dataset=dataset,
        category="Radiology",
        grid=grid,
        n_trials=n_trials,
        complete=len(trials),
        failed=0,
        pruned=0,
        running=0,
        waiting=n_trials - len(trials),
        best_trial=None if best is None else best.number,
        best_value=None if best is None else best.value,
        test_dice=None if best is None else (best.value or 0.0) - 0.05,
        test_iou=None,
        val_dice=None if best is None else best.value,
    )
    return StudyData(result, "maximize", trials)


def _texts_outside(figure: Any) -> list[tuple[str, float, float]]:
    """(text, left, right) of every text drawn (partly) outside the figure, after drawing."""
    renderer = figure.canvas.get_renderer()
    width, height = figure.bbox.width, figure.bbox.height
    outside = []
    texts = list(figure.texts)
    for ax in figure.axes:
        texts += [*ax.texts, ax.title]
    for text in texts:
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.x1 > width + 0.5 or box.y0 < -0.5 or box.y1 > height + 0.5:
            outside.append((text.get_text(), box.x0, box.x1))
    return outside


def _all_text(figure: Any) -> str:
    texts = [t.get_text() for t in figure.texts]
    for ax in figure.axes:
        texts += [t.get_text() for t in ax.texts] + [ax.title.get_text()]
    return "\n".join(texts)


def _unwrapped(text: str) -> str:
    """Wrapped lines joined again (a line broken after a hyphen continues without a space)."""
    return " ".join(text.replace("-\n", "-").split())


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots save (drawn in this process: no forked page workers)."""
    figures: list[Any] = []
    save = plots._save

    def keep(figure: Any, path: Path) -> Path:
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(plots.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    return figures


# -- plots --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_datasets", [1, 5])
def test_history_labels_are_whole_and_on_the_page(
    n_datasets: int, drawn: list[Any], tmp_path: Path
) -> None:
    """A demo-sized page (one narrow column) and a wide one: every title, data set name and row
    label is shown in full and inside the image."""
    datasets = [LONG_DATASET, "kvasir-seg", "isic-2016", "busi", "pascal-voc"][:n_datasets]
    studies = [
        _study(model, learner, title, dataset, [0.4, 0.6, 0.5], grid)
        for model, learner, title in [
            ("clipseg", "coop", "CoOp"),
            ("clipseg", "shared_attention", "Shared Attention"),
            ("clipseg", "maple", "MaPLe"),
            ("clipseg", "maple", LONG_TITLE),  # a labelled second entry of one learner
            ("cris", "coop", "CoOp"),
        ]
        for dataset in datasets
        for grid in ("use_upsampler=false", "use_upsampler=true")
    ]
    pages = plots.plot_history_pages(studies, tmp_path / "history")
    assert len(pages) == len(drawn) == 1
    figure = drawn[0]
    assert _texts_outside(figure) == []
    shown = _all_text(figure)
    assert "…" not in shown
    unwrapped = _unwrapped(shown)
    for dataset in datasets:
        assert dataset in unwrapped
    for label in (
        "clipseg Shared Attention",
        f"clipseg {LONG_TITLE}",
        "cris CoOp",
        "use_upsampler=true",
    ):
        assert label in unwrapped
    assert "Optimisation history, page 1/1" in shown and "running best" in unwrapped
    # both MaPLe entries have rows of their own: 5 learners x 2 grid cells
    assert len(plots.history_pages(studies)[0][0]) == 10
    for text in figure.axes[0].texts:
        assert text.get_fontsize() >= plots.MIN_FONT


def test_history_labels_readable_at_their_size(drawn: list[Any], tmp_path: Path) -> None:
    """Short labels keep their full size: at the plots' resolution, 7 pt is about 10 px."""
    studies = [_study("clipseg", "coop", "CoOp", "busi", [0.4, 0.6])]
    plots.plot_history_pages(studies, tmp_path / "history")
    sizes = [text.get_fontsize() * plots.DPI / 72 for text in drawn[0].axes[0].texts]
    assert min(sizes) >= 8.0  # pixels: the objective range under the name is the smallest
    labels = {text.get_text(): text.get_fontsize() for text in drawn[0].axes[0].texts}
    assert labels["busi"] == labels["clipseg CoOp"] == 7.0


def test_importance_titles_are_whole_with_a_single_learner(
    drawn: list[Any], tmp_path: Path
) -> None:
    rows = [
        LearnerImportance("maple", LONG_TITLE, param, value, 10, 200)
        for param, value in (("prompt_depth", 0.6), ("intermediate_dim", 0.3), ("lr", 0.1))
    ]
    assert plots.plot_importance(Importances(rows, 10, 0, []), tmp_path / "importance.png")
    figure = drawn[0]
    assert _texts_outside(figure) == []
    unwrapped = _unwrapped(_all_text(figure))
    assert "Hyperparameter importance (PED-ANOVA over each learner's studies)" in unwrapped
    assert f"{LONG_TITLE} (10 studies, 200 trials)" in unwrapped
    # the parameter names (tick labels) are inside the image too
    renderer = figure.canvas.get_renderer()
    for label in figure.axes[0].get_yticklabels():
        assert label.get_window_extent(renderer).x0 >= 0, label.get_text()


def test_fit_text_shrinks_names_and_wraps_sentences() -> None:
    name = "a-rather-long-data-set-name"
    room = 0.85 * plots.text_width(name, 7.0)
    shown, size = plots.fit_text(name, room, 7.0)
    assert shown == name and plots.MIN_FONT <= size < 7.0
    assert plots.text_width(name, size) <= room
    shown, size = plots.fit_text(name, 0.4, 7.0)  # too long even at MIN_FONT: wrapped
    assert size == plots.MIN_FONT and shown.replace("\n", "") == name
    assert all(plots.text_width(line, size) <= 0.4 for line in shown.splitlines())
    words = "dots: each complete trial's objective; red: the running best"
    wrapped, size = plots.fit_text(words, 1.5, 8.0, shrink=False)
    assert size == 8.0 and "\n" in wrapped and " ".join(wrapped.split()) == words
    assert all(plots.text_width(line, 8.0) <= 1.5 for line in wrapped.splitlines())
    assert plots.fit_text("short", 1.0, 7.0) == ("short", 7.0)


# -- CSV files --------------------------------------------------------------------------------


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_no_csv_file_without_a_header(tmp_path: Path) -> None:
    """Two trials per study and no parameter counts (the demo's shape): the importance and
    parameter tables have no rows, so they get no CSV and a note says so."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "importance.csv").write_text("learner,param\nvpt,lr\n")  # from an earlier run
    studies = [_study("clipseg", "coop", "CoOp", "busi", [0.4, 0.6], n_trials=2)]
    report = build_report(studies, folder, title="s", plots=False)
    written = {path.name for path in report.files}
    assert "importance.csv" not in written and "parameters.csv" not in written
    assert not (folder / "importance.csv").exists()  # the stale one went
    for path in folder.glob("*.csv"):
        columns, _ = _csv_rows(path)
        assert columns and all(columns), path.name
    assert "No rows, so no importance.csv was written." in (folder / "importance.md").read_text()
    page = (folder / "report.html").read_text()
    assert "No rows, so no importance.csv was written." in page
    assert "No rows, so no parameters.csv was written." in page
    assert {"trial_states.csv", "compute.csv", "main_table.csv"} <= written


def test_main_table_csv_has_its_header_with_no_results(tmp_path: Path) -> None:
    report = build_report([], tmp_path / "results", title="empty", formats=("csv",), plots=False)
    assert [path.name for path in report.files] == ["main_table.csv"]
    columns, rows = _csv_rows(tmp_path / "results" / "main_table.csv")
    assert columns == list(MAIN_TABLE_COLUMNS) and rows == []


def test_main_table_columns_are_the_rows_keys() -> None:
    study = _study("clipseg", "coop", "CoOp", "busi", [0.5])
    assert tuple(main_table_rows([study.result])[0]) == MAIN_TABLE_COLUMNS


# -- Mean ± Std -------------------------------------------------------------------------------


def test_a_mean_of_one_value_shows_no_std() -> None:
    one = build_main_table(
        [
            _study("clipseg", "coop", "CoOp", "busi", [0.60]).result,
            _study("clipseg", "vpt", "VPT", "busi", [0.85]).result,
        ]
    )
    markdown = to_markdown(one).splitlines()
    assert markdown[2] == "| clipseg | CoOp | 55.00 | 55.00 |"
    assert markdown[3] == "|  | VPT | 80.00 | 80.00 |"
    # two methods: their mean has a spread
    assert markdown[4] == "| Average across methods |  |  | 67.50 ± 12.50 |"
    latex = to_latex(one)
    assert "& CoOp & 55.00 & 55.00 \\\\" in latex and "67.50 $\\pm$ 12.50" in latex
    assert "± 0.00" not in to_html(one) and "<td>55.00</td><td>55.00</td>" in to_html(one)

    alone = MainTable([("Radiology", "busi")], [("m", "CoOp")], {("m", "CoOp"): {"busi": 70.0}})
    assert to_markdown(alone).splitlines()[3] == "| Average across methods |  |  | 70.00 |"
    assert "$\\pm$ 0.00" not in to_latex(alone)


# -- a journal file's plain path where a storage URL goes --------------------------------------

SWEEP = """\
name: p
output_dir: runs
models: [clipseg]
learners: [coop]
datasets: [{name: busi, category: Radiology, root: a}]
search: {n_trials: 2}
"""


def test_collect_reads_a_plain_journal_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunevlseg.cluster.launch import sweep_storage
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.tuning.storage import open_storage
    from tunevlseg.tuning.studies import ensure_studies

    (tmp_path / "p.yaml").write_text(SWEEP)
    experiment = load_experiment(tmp_path / "p.yaml")
    storage = open_storage(sweep_storage(experiment))
    (spec,) = expand(experiment).studies
    ensure_studies(storage, [spec])
    study = optuna.load_study(study_name=spec.name, storage=storage)
    study.add_trials([_trial(0, 0.7, 1), _trial(1, 0.8, 2)])
    monkeypatch.chdir(tmp_path)
    assert (
        collect_main(
            [
                "--storage",
                "runs/optuna.journal",
                "--sweep",
                "p",
                "--out",
                "tables",
                "--no-plots",
                "--no-importance",
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["studies"] == 1
    assert record["results"][0]["test_dice"] == pytest.approx(0.75)
