"""The collector on a storage with known trials: best by validation, Table 3 layout and numbers."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.collect.results import study_results
from tunevlseg.collect.tables import build_main_table, to_markdown
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning.storage import default_storage, open_storage
from tunevlseg.tuning.studies import ensure_studies

TEXT = """\
name: c
output_dir: out
models: [clipseg]
learners: [vpt, coop]
datasets:
  - {name: busi, category: Radiology, root: a}
  - {name: kvasir, category: Non-Radiology, root: b}
  - {name: voc, category: Open Domain, root: c, format: natural}
search: {n_trials: 3}
"""

# study -> [(state, validation value, test dice)]
TRIALS = {
    "c/clipseg-coop/kvasir": [
        (TrialState.COMPLETE, 0.80, 0.70),
        (TrialState.COMPLETE, 0.90, 0.60),  # best by validation, worse on test
        (TrialState.COMPLETE, 0.85, 0.95),
    ],
    "c/clipseg-coop/busi": [(TrialState.COMPLETE, 0.5, 0.40), (TrialState.FAIL, None, None)],
    "c/clipseg-coop/voc": [(TrialState.COMPLETE, 0.7, 0.80), (TrialState.RUNNING, None, None)],
    "c/clipseg-vpt/kvasir": [(TrialState.COMPLETE, 0.6, 0.50), (TrialState.PRUNED, None, None)],
    "c/clipseg-vpt/busi": [(TrialState.COMPLETE, 0.6, 0.30)],
    "c/clipseg-vpt/voc": [(TrialState.WAITING, None, None)],  # a partial study: no result yet
}


@pytest.fixture
def storage(tmp_path: Path) -> optuna.storages.BaseStorage:
    storage = open_storage(default_storage(tmp_path))
    ensure_studies(storage, expand(parse_experiment(TEXT, tmp_path / "c.yaml")).studies)
    for name, trials in TRIALS.items():
        study = optuna.load_study(study_name=name, storage=storage)
        for state, value, test in trials:
            if state == TrialState.WAITING:
                study.enqueue_trial({})
                continue
            trial = study.ask()
            if test is not None:
                trial.set_user_attr("test_dice", test)
                trial.set_user_attr("test_iou", test / 2)
            if state != TrialState.RUNNING:
                study.tell(trial, value, state=state)
    return storage


def test_best_trial_is_chosen_by_validation_not_test(storage) -> None:  # type: ignore[no-untyped-def]
    results = {r.study: r for r in study_results(storage, "c")}
    coop_kvasir = results["c/clipseg-coop/kvasir"]
    assert coop_kvasir.best_trial == 1
    assert coop_kvasir.best_value == pytest.approx(0.90)
    assert coop_kvasir.test_dice == pytest.approx(0.60)
    assert coop_kvasir.test_iou == pytest.approx(0.30)
    busi = results["c/clipseg-coop/busi"]
    assert (busi.complete, busi.failed, busi.test_dice) == (1, 1, pytest.approx(0.40))
    voc = results["c/clipseg-coop/voc"]
    assert (voc.complete, voc.running) == (1, 1)
    assert results["c/clipseg-vpt/kvasir"].pruned == 1
    partial = results["c/clipseg-vpt/voc"]
    assert (partial.waiting, partial.best_trial, partial.test_dice) == (1, None, None)


def test_main_table_layout_and_numbers(storage) -> None:  # type: ignore[no-untyped-def]
    table = build_main_table(study_results(storage, "c"))
    assert table.datasets == [
        ("Non-Radiology", "kvasir"),
        ("Radiology", "busi"),
        ("Open Domain", "voc"),
    ]
    assert table.rows == [("clipseg", "CoOp"), ("clipseg", "VPT")]  # paper order, not alphabetical
    coop = table.row_stats(("clipseg", "CoOp"))
    vpt = table.row_stats(("clipseg", "VPT"))
    assert coop == pytest.approx((60.0, 16.329931618554522))  # (60, 40, 80), population std
    assert vpt == pytest.approx((40.0, 10.0))  # (50, 30), the missing voc cell left out
    assert table.average_across_methods() == pytest.approx((50.0, 10.0))
    markdown = to_markdown(table)
    lines = markdown.splitlines()
    assert lines[0] == (
        "| Model | Learner | kvasir<br>*Non-Radiology* | busi<br>*Radiology* | voc<br>*Open Domain* "
        "| Mean ± Std |"
    )
    assert lines[2] == "| clipseg | CoOp | 60.00 | 40.00 | 80.00 | 60.00 ± 16.33 |"
    assert lines[3] == "|  | VPT | 50.00 | 30.00 | – | 40.00 ± 10.00 |"
    assert lines[4] == "| Average across methods |  |  |  |  | 50.00 ± 10.00 |"
    assert "left out of the means" in markdown
