"""The unseen-class protocol (``data.unseen_classes``): which samples train, validate and test;
how a wrong list is refused (file:line, before anything is written); the trial identity; and the
zero-shot table's seen/unseen mIoU and hIoU from the per-class scores.

The data set is a synthetic natural set in the on-disk layout ``tvls-data binarize`` writes,
with four classes in every image; two of them (``potted_plant``, ``tv_monitor``, named the
natural way) are unseen.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunevlseg.cluster.preflight import run_preflight
from tunevlseg.collect.results import StudyResult
from tunevlseg.collect.zero_shot import harmonic_mean, zero_shot_record, zero_shot_table
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import ConfigError, load_experiment
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.sample import DatasetFormatError
from tunevlseg.data.synthetic import write_synthetic_natural
from tunevlseg.data.unseen import class_key
from tunevlseg.train.run_folder import identity_digest
from tunevlseg.train.testing import byte_tokenize
from tunevlseg.tuning.identity import trial_identity

CLASSES = ("cat", "dog", "potted_plant", "tv_monitor")
UNSEEN = ["potted plant", "tv monitor"]

EXPERIMENT = """\
name: unseen
output_dir: out
models: [clipseg]
learners: [coop]
datasets:
  - {name: kvasir, root: med}
  - {name: multi, root: multi, format: natural}
data:
  unseen_classes: [potted plant, tv monitor]
"""


@pytest.fixture(scope="module")
def multi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "multi"
    return write_synthetic_natural(
        root, n_train=10, n_val=4, n_test=4, image_size=16, classes=CLASSES
    )


def _module(root: Path, unseen: list[str], **kwargs: object) -> SegmentationDataModule:
    return SegmentationDataModule(
        root, "natural", "p0", 16, (0.5,) * 3, (0.5,) * 3, byte_tokenize, batch_size=4,
        unseen_classes=unseen, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("explicit_test", [True, False], ids=["test-split", "val-from-train"])
def test_train_and_val_leave_unseen_classes_out_and_test_keeps_them(
    tmp_path: Path, multi_root: Path, explicit_test: bool
) -> None:
    root = multi_root
    if not explicit_test:  # as binarize writes it: val is held out of train, official val = test
        root = write_synthetic_natural(
            tmp_path / "binarized", n_train=10, n_val=4, n_test=0, image_size=16, classes=CLASSES
        )
    unseen = _module(root, UNSEEN)
    full = _module(root, [])
    for split in ("train", "val"):
        kept = {s.class_name for s in unseen.samples(split)}
        assert kept == {"cat", "dog"}, split
        everything = full.samples(split)
        assert {s.class_name for s in everything} == set(CLASSES)
        # the same images as without the protocol, minus the unseen samples (no split moves)
        assert [s for s in everything if s.class_name in ("cat", "dog")] == unseen.samples(split)
    assert {s.class_name for s in unseen.samples("test")} == set(CLASSES)
    assert unseen.samples("test") == full.samples("test")


def test_the_data_module_refuses_unknown_or_all_unseen_classes(multi_root: Path) -> None:
    unknown = r"'tv monitr' is not a class.*did you mean 'tv_monitor'"
    with pytest.raises(DatasetFormatError, match=unknown):
        _module(multi_root, ["tv monitr"]).samples("train")
    with pytest.raises(DatasetFormatError, match="every class of the data set is unseen"):
        _module(multi_root, ["cat", "Dog", "pottedplant", "TV-Monitor"]).samples("train")
    with pytest.raises(ValueError, match="natural"):
        SegmentationDataModule(
            multi_root,
            "medvlsm",
            "p0",
            16,
            (0.5,) * 3,
            (0.5,) * 3,
            byte_tokenize,
            4,
            unseen_classes=["cat"],
        )


def test_one_spelling_rule_for_class_names() -> None:
    assert class_key("potted plant") == class_key("pottedplant") == class_key("potted_plant")
    assert class_key("TV monitor") == class_key("tv_monitor") == "tvmonitor"
    assert class_key("traffic light") != class_key("traffic sign")


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        (EXPERIMENT, 9, "data.unseen_classes", "kvasir is a MedVLSM set"),
        (
            EXPERIMENT.replace("root: med}", "root: med, unseen_classes: [polyp]}").replace(
                "data:\n  unseen_classes: [potted plant, tv monitor]\n", ""
            ),
            6,
            "datasets[0].unseen_classes",
            "'kvasir' is a MedVLSM set",
        ),
        (
            EXPERIMENT.replace("[potted plant, tv monitor]", "[potted plant, pottedplant]").replace(
                "  - {name: kvasir, root: med}\n", ""
            ),
            8,
            "data.unseen_classes",
            "'pottedplant' names the same class as 'potted plant'",
        ),
    ],
    ids=["medvlsm-set-inherits", "medvlsm-set-own-list", "a-class-twice"],
)
def test_config_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert f"{path}:{line}: {key}:" in message, message
    assert fragment in message, message


def _natural_only(tmp_path: Path, root: Path, unseen: str, own: bool = False) -> Path:
    dataset = f"{{name: multi, root: {root}, format: natural"
    if own:  # the data set's own list replaces data.unseen_classes
        return _write(
            tmp_path,
            f"""\
            name: unseen
            output_dir: out
            models: [clipseg]
            learners: [coop]
            datasets:
              - {dataset},
                 unseen_classes: {unseen}}}
            data: {{num_workers: 0, unseen_classes: [cat]}}
            """,
        )
    return _write(
        tmp_path,
        f"""\
        name: unseen
        output_dir: out
        models: [clipseg]
        learners: [coop]
        datasets:
          - {dataset}}}
        data: {{num_workers: 0, unseen_classes: {unseen}}}
        """,
    )


@pytest.mark.parametrize(
    ("unseen", "own", "where", "fragment"),
    [
        ("[potted plant, sheep]", False, ":7: data.unseen_classes[1]:", "'sheep' is not a class"),
        ("[tv monitr]", False, ":7: data.unseen_classes[0]:", "did you mean 'tv_monitor'?"),
        ("[cat, dog, potted plant, tv monitor]", False, ":7: data.unseen_classes:", "every class"),
        ("[kat]", True, ":7: datasets[0].unseen_classes[0]:", "did you mean 'cat'?"),
    ],
    ids=["unknown", "misspelt", "all-unseen", "data-set-level"],
)
def test_preflight_checks_the_names_against_the_class_folders(
    tmp_path: Path, multi_root: Path, unseen: str, own: bool, where: str, fragment: str
) -> None:
    path = _natural_only(tmp_path, multi_root, unseen, own)
    checked = run_preflight(load_experiment(path), local=True)
    found = [p for p in checked.problems if "unseen_classes" in p]
    assert len(found) == 1, checked.problems
    assert found[0].startswith(f"{path}{where}") and fragment in found[0], found[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_preflight_accepts_a_valid_list_and_a_data_set_list_replaces_the_shared_one(
    tmp_path: Path, multi_root: Path
) -> None:
    path = _natural_only(tmp_path, multi_root, "[potted plant, tv monitor]", own=True)
    experiment = load_experiment(path)
    assert not [p for p in run_preflight(experiment, local=True).problems if "unseen" in p]
    (study,) = expand(experiment).studies
    assert study.data.unseen_classes == UNSEEN  # not data.unseen_classes' [cat]


def test_the_unseen_list_is_part_of_the_trial_identity(tmp_path: Path) -> None:
    def digest(unseen: str) -> str:
        path = _write(
            tmp_path,
            EXPERIMENT.replace("[potted plant, tv monitor]", unseen).replace(
                "  - {name: kvasir, root: med}\n", ""
            ),
        )
        (study,) = expand(load_experiment(path)).studies
        return identity_digest(trial_identity(study, {"lr": 1e-3}, lineage=0, seed=0))

    assert digest("[potted plant, tv monitor]") == digest("[potted plant, tv monitor]")
    assert digest("[potted plant, tv monitor]") != digest("[potted plant]")
    assert digest("[potted plant]") != digest("[]")


def _result(per_class: dict[str, dict[str, float]], unseen: tuple[str, ...]) -> StudyResult:
    return StudyResult(
        study="s/clipseg-coop/voc", sweep="s", model="clipseg", learner="coop",
        learner_title="CoOp", dataset="voc", category="Open Domain", grid="", n_trials=1,
        complete=1, failed=0, pruned=0, running=0, waiting=0, best_trial=0, best_value=0.5,
        test_dice=0.5, test_iou=0.4, val_dice=0.5, per_class=per_class, unseen_classes=unseen,
    )  # fmt: skip


def test_zero_shot_record_splits_classes_and_takes_the_harmonic_mean() -> None:
    per_class = {
        "cat": {"dice": 0.9, "iou": 0.8, "iou_pooled": 0.6, "dice_pooled": 0.75},
        "dog": {"dice": 0.7, "iou": 0.6, "iou_pooled": 0.4, "dice_pooled": 0.55},
        "tv_monitor": {"dice": 0.3, "iou": 0.2, "iou_pooled": 0.1, "dice_pooled": 0.2},
    }
    record = zero_shot_record(_result(per_class, ("tv monitor",)))
    seen, unseen = (0.6 + 0.4) / 2, 0.1
    assert record["miou_seen"] == pytest.approx(seen)
    assert record["miou_unseen"] == pytest.approx(unseen)
    assert record["hiou"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert record["mdice_seen"] == pytest.approx(0.65)
    assert record["mdice_unseen"] == pytest.approx(0.2)
    assert (record["seen_classes"], record["unseen_classes"], record["basis"]) == (
        "cat;dog",
        "tv_monitor",
        "pooled",
    )
    # a trial from before pooled scores: the per-image means, and the record says so
    old = {name: {"dice": s["dice"], "iou": s["iou"]} for name, s in per_class.items()}
    fallback = zero_shot_record(_result(old, ("tv monitor",)))
    assert fallback["basis"] == "per-image"
    assert fallback["miou_seen"] == pytest.approx(0.7)
    assert fallback["miou_unseen"] == pytest.approx(0.2)


def test_harmonic_mean_edges() -> None:
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.8, 0.0) == 0.0
    assert harmonic_mean(None, 0.5) is None


def test_no_zero_shot_table_without_unseen_classes() -> None:
    per_class = {"cat": {"dice": 0.9, "iou": 0.8}}
    assert zero_shot_table([_result(per_class, ())]) is None
    table = zero_shot_table([_result(per_class, ("dog",))])
    assert table is not None
    assert table.text.rows[0][4:7] == ["80.00", "–", "–"]  # no test score of dog: missing
