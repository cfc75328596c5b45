"""The unseen-class protocol end to end on the tiny CLIPSeg: a local sweep on a four-class natural
set with two classes unseen, then ``tvls-collect``, whose ``zero_shot`` table (Markdown, CSV and
``--json``) must hold the seen/unseen mIoU, mDice and hIoU of each study's best trial as
recomputed here from the per-class test scores that trial stored."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import cli

from tunevlseg.collect.results import best_trial
from tunevlseg.config.loader import load_experiment
from tunevlseg.data.synthetic import write_synthetic_natural
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage, sweep_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

pytestmark = pytest.mark.slow
CLASSES = ("cat", "dog", "potted_plant", "tv_monitor")
UNSEEN = {"potted_plant", "tv_monitor"}  # named "potted plant" and "tv monitor" in the file


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_a_local_sweep_reports_seen_and_unseen_classes(tmp_path: Path) -> None:
    write_synthetic_natural(
        tmp_path / "data/multi", n_train=12, n_val=4, n_test=4, image_size=32, classes=CLASSES
    )
    experiment = tmp_path / "unseen.yaml"
    experiment.write_text(
        textwrap.dedent("""\
        name: unseen
        output_dir: ./runs
        models:
          - {name: clipseg, pretrained: ./assets/clipseg-tiny, image_size: 32, synthetic: true}
        learners: [coop]
        datasets:
          - {name: multi, category: Open Domain, format: natural, root: ./data/multi}
        data: {num_workers: 0, unseen_classes: [potted plant, tv monitor]}
        training: {max_epochs: 1, patience: 1, batch_size: 8, effective_batch_size: 8,
                   precision: "32"}
        search: {n_trials: 2, n_startup_trials: 2}
        cluster: {parallelism: 2}
        """)
    )

    launched = cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    collected = cli("tunevlseg.cli.collect", str(experiment), "--json", "--no-plots", cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr[-3000:]
    (from_json,) = json.loads(collected.stdout)["zero_shot"]

    loaded = load_experiment(experiment)
    study = optuna.load_study(
        study_name="unseen/clipseg-coop/multi", storage=open_storage(sweep_storage(loaded))
    )
    best = best_trial(study.trials, study.direction.name.lower())
    assert best is not None and len(study.trials) == 2
    stored = trial_attrs(best)["test_per_class"]
    assert set(stored) == set(CLASSES)  # test scored every class, unseen ones too
    seen = [stored[name] for name in sorted(set(CLASSES) - UNSEEN)]
    unseen = [stored[name] for name in sorted(UNSEEN)]
    miou_seen = _mean([s["iou_pooled"] for s in seen])
    miou_unseen = _mean([s["iou_pooled"] for s in unseen])
    total = miou_seen + miou_unseen
    hiou = 0.0 if total == 0 else 2 * miou_seen * miou_unseen / total
    expected = {
        "miou_seen": miou_seen, "miou_unseen": miou_unseen, "hiou": hiou,
        "mdice_seen": _mean([s["dice_pooled"] for s in seen]),
        "mdice_unseen": _mean([s["dice_pooled"] for s in unseen]),
    }  # fmt: skip

    results = SweepPaths.of(loaded).results
    with (results / "zero_shot.csv").open() as handle:
        (from_csv,) = list(csv.DictReader(handle))
    for key, value in expected.items():
        assert from_json[key] == pytest.approx(value), key
        assert float(from_csv[key]) == pytest.approx(value), key
    assert from_json["best_trial"] == best.number and from_json["basis"] == "pooled"
    assert from_json["unseen_classes"] == "potted_plant;tv_monitor"
    markdown = (results / "zero_shot.md").read_text()
    assert f"{100 * hiou:.2f}" in markdown and "potted plant, tv monitor" in markdown
    assert "Seen and unseen classes" in (results / "report.html").read_text()
