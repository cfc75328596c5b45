"""Split policy of natural sets without a test split: test = official val, val held out of train.

Why these tests: a natural set has no labelled test split, so selecting on its official val and
reporting on it would let model selection see the test images. The hold-out must be by image
(a picture's class masks never straddle train and val), must not depend on the trial's seed
(every trial of a study, and every resume, validates on the same images), and must leave a
root with an explicit test split alone.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path

import pytest

from tunevlseg.assets import preflight
from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.natural import (
    SPLIT_SEED,
    SplitPolicy,
    held_out_images,
    read_natural,
    split_policy,
)
from tunevlseg.data.sample import DatasetFormatError, Sample
from tunevlseg.data.synthetic import write_synthetic_natural
from tunevlseg.train.testing import byte_tokenize

CLASSES = ("car", "person", "traffic_light")
N_TRAIN, N_VAL = 40, 6


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `tvls-data binarize` writes: official train and val, no test; 3 classes per image."""
    return write_synthetic_natural(
        tmp_path_factory.mktemp("splits") / "voc",
        n_train=N_TRAIN,
        n_val=N_VAL,
        n_test=0,
        image_size=24,
        classes=CLASSES,
    )


def _module(root: Path, **kwargs: object) -> SegmentationDataModule:
    args: dict[str, object] = {
        "root": root,
        "format": "natural",
        "prompt_key": "p1",
        "image_size": 16,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
        "tokenize": byte_tokenize,
        "batch_size": 2,
    }
    args.update(kwargs)
    return SegmentationDataModule(**args)  # type: ignore[arg-type]


def _by_image(samples: list[Sample]) -> dict[Path, set[str]]:
    images: dict[Path, set[str]] = defaultdict(set)
    for sample in samples:
        images[sample.image].add(sample.class_name)
    return dict(images)


def test_synthetic_writer_can_leave_out_the_test_split(two_splits: Path) -> None:
    assert sorted(p.name for p in (two_splits / "annotations").iterdir()) == ["train", "val"]
    assert sorted(p.name for p in (two_splits / "images").iterdir()) == ["train", "val"]
    with pytest.raises(ValueError, match="need >= 1 image"):
        write_synthetic_natural(two_splits.parent / "bad", n_train=2, n_val=0, n_test=0)


def test_test_is_official_val_and_val_is_held_out_of_train_by_image(
    two_splits: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunevlseg.data.datamodule")
    dm = _module(two_splits)
    train, val, test = (_by_image(dm.samples(split)) for split in ("train", "val", "test"))

    assert dm.split_policy == SplitPolicy("val_from_train", 0.1, SPLIT_SEED)
    # test = every official val image, with all its class masks
    assert set(test) == {s.image for s in read_natural(two_splits, "val")}
    assert all(image.parent == two_splits / "images" / "val" for image in test)
    # val = 10 % of the train images; train = the rest; no image on both sides
    assert len(val) == round(0.1 * N_TRAIN) == 4
    assert len(train) == N_TRAIN - 4
    assert not set(train) & set(val)
    assert set(train) | set(val) == {s.image for s in read_natural(two_splits, "train")}
    # every class mask of an image goes with it
    assert all(classes == set(CLASSES) for classes in (*train.values(), *val.values()))
    assert dm.split_sizes == {
        "train": {"images": 36, "samples": 108},
        "val": {"images": 4, "samples": 12},
        "test": {"images": N_VAL, "samples": 3 * N_VAL},
    }
    logged = caplog.text
    assert "split policy val_from_train: test = the official val split" in logged
    assert "val = 4 image(s), 12 sample(s) (from the official train split)" in logged


def test_the_split_is_part_of_the_data_not_of_the_trial(two_splits: Path) -> None:
    """Two builds, another trial seed, a train_fraction: the validation images never move."""
    first, again, other_seed = (
        _module(two_splits),
        _module(two_splits),
        _module(two_splits, seed=987),
    )
    val = first.samples("val")
    assert val == again.samples("val") == other_seed.samples("val")
    assert first.samples("train") == other_seed.samples("train")
    val_images = {s.image for s in val}
    for seed in (0, 1, 2):
        subsampled = _module(two_splits, seed=seed, train_fraction=0.5)
        assert subsampled.samples("val") == val  # train_fraction acts after the hold-out
        assert not {s.image for s in subsampled.samples("train")} & val_images
    larger = _module(two_splits, val_fraction=0.25)
    assert len(_by_image(larger.samples("val"))) == 10
    with pytest.raises(ValueError, match="val_fraction"):
        _module(two_splits, val_fraction=1.0)


def test_a_root_with_a_test_split_keeps_its_three_splits(tmp_path: Path) -> None:
    root = write_synthetic_natural(
        tmp_path / "three", n_train=5, n_val=3, n_test=2, image_size=24, classes=CLASSES
    )
    dm = _module(root, val_fraction=0.5)
    assert dm.split_policy == SplitPolicy("explicit")
    for split, n in (("train", 5), ("val", 3), ("test", 2)):
        images = _by_image(dm.samples(split))
        assert len(images) == n
        assert all(image.parent == root / "images" / split for image in images)
    assert split_policy(root) == SplitPolicy("explicit")


def test_too_few_train_images_to_hold_out(tmp_path: Path) -> None:
    root = write_synthetic_natural(tmp_path / "one", n_train=1, n_val=1, n_test=0, image_size=24)
    with pytest.raises(DatasetFormatError, match="at least 2") as caught:
        _module(root).samples("train")
    assert str(root / "annotations" / "train") in str(caught.value)


def test_held_out_images_is_stable_and_order_free() -> None:
    names = [f"img_{i:04d}" for i in range(200)]
    held = held_out_images(names, 0.1)
    assert len(held) == 20
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert held_out_images(shuffled, 0.1) == held  # the listing order does not matter
    assert held_out_images(names, 0.1, seed=SPLIT_SEED + 1) != held  # the seed is the only draw
    # Adding m images moves at most m + 1 existing images across the cut (a reshuffle ~ 36).
    for added in (1, 5, 20):
        more = held_out_images([*names, *(f"new_{i}" for i in range(added))], 0.1)
        moved = (held ^ more) & set(names)
        assert len(moved) <= added + 1, (added, moved)
    assert len(held_out_images(["a", "b"], 0.1)) == 1  # at least one on each side
    assert len(held_out_images(["a", "b", "c"], 0.9)) == 2
    with pytest.raises(ValueError, match="needs at least 2"):
        held_out_images(["a"], 0.1)


# -------------------------------------------------------------- experiment file and preflight


def _studies(folder: Path, dataset: str, data: str = "") -> list[StudySpec]:
    path = folder / "experiment.yaml"
    path.write_text(
        "name: sp\noutput_dir: out\nmodels:\n  - {name: clipseg, pretrained: ./tiny, synthetic: true}\n"
        f"learners: [coop]\ndatasets:\n  - {dataset}\n{data}"
    )
    return expand(load_experiment(path)).studies


def test_preflight_accepts_train_and_val_only(two_splits: Path, tmp_path: Path) -> None:
    assert (
        preflight(_studies(tmp_path, f"{{name: voc, root: {two_splits}, format: natural}}")) == []
    )
    broken = tmp_path / "broken"
    (broken / "annotations" / "train").mkdir(parents=True)
    (broken / "annotations" / "val").mkdir()
    (broken / "images" / "train").mkdir(parents=True)
    [problem] = preflight(_studies(tmp_path, f"{{name: voc, root: {broken}, format: natural}}"))
    assert problem == f"data set 'voc' (natural layout): missing {broken / 'images' / 'val'}"
    (broken / "annotations" / "test").mkdir()  # an explicit test split must then be complete
    [problem] = preflight(_studies(tmp_path, f"{{name: voc, root: {broken}, format: natural}}"))
    assert str(broken / "images" / "test") in problem


def test_the_trial_data_module_gets_val_fraction(two_splits: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tunevlseg.tuning.objective import build_datamodule

    [spec] = _studies(
        tmp_path,
        f"{{name: voc, root: {two_splits}, format: natural}}",
        "data: {val_fraction: 0.25}\n",
    )
    assert spec.data.val_fraction == 0.25
    model = SimpleNamespace(image_mean=(0.5,) * 3, image_std=(0.25,) * 3, tokenize=byte_tokenize)
    modules = [build_datamodule(spec, model, seed) for seed in (0, 41)]  # two trials' seeds
    assert all(dm.val_fraction == 0.25 for dm in modules)
    assert modules[0].samples("val") == modules[1].samples("val")
    [default] = _studies(tmp_path, f"{{name: voc, root: {two_splits}, format: natural}}")
    assert default.data.val_fraction == 0.1
