"""The preprocessing cache: same tensors as decoding, built once, rebuilt on change, race-safe."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tunevlseg.data import cache as cache_module
from tunevlseg.data.cache import cache_key, ensure_cache
from tunevlseg.data.datamodule import SegmentationDataModule, read_split
from tunevlseg.data.dataset import EpochKey, SegmentationDataset
from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural
from tunevlseg.data.transforms import MaskSizeError, build_transform
from tunevlseg.train.testing import byte_tokenize

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two classes: every image appears in two entries, so images are stored once per file.
    return write_synthetic_medvlsm(
        tmp_path_factory.mktemp("cache-data"),
        n_train=5,
        n_val=3,
        n_test=2,
        image_size=50,
        classes=("polyp", "tool"),
    )


def _datasets(
    root: Path, cache_dir: Path, *, train: bool, size: int | tuple[int, int] = 32
) -> tuple[SegmentationDataset, SegmentationDataset]:
    samples = read_split(root, "medvlsm", "train", "p2")
    transform = build_transform(size, train=train)
    plain = SegmentationDataset(samples, transform, random_prompt=train, seed=3)
    cached = SegmentationDataset(
        samples,
        transform,
        random_prompt=train,
        seed=3,
        cache_dir=cache_dir,
        image_size=size,
    )
    return plain, cached


@pytest.mark.parametrize("size", [32, (24, 40), 64])  # down, non-square, up
def test_eval_outputs_are_identical(
    root: Path, tmp_path: Path, size: int | tuple[int, int]
) -> None:
    plain, cached = _datasets(root, tmp_path, train=False, size=size)
    assert cached.cache is not None
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["masks"], b["masks"])
        assert a["prompt"] == b["prompt"]


def test_train_outputs_are_identical_too(root: Path, tmp_path: Path) -> None:
    # The transform's resize is an exact copy on cached arrays, so the seeded augmentation
    # sees the same input and draws the same parameters.
    plain, cached = _datasets(root, tmp_path, train=True)
    for epoch in (0, 1):
        for i in range(len(plain)):
            a, b = plain[EpochKey(epoch, i)], cached[EpochKey(epoch, i)]
            assert torch.equal(a["pixel_values"], b["pixel_values"])
            assert torch.equal(a["masks"], b["masks"])


def test_masks_of_another_size_are_handled_like_the_uncached_path(tmp_path: Path) -> None:
    """Both refuse the pair with the same message (no longer stretched: see MaskSizeError)."""
    root = write_synthetic_natural(tmp_path / "nat", n_train=3, n_val=1, n_test=1, image_size=48)
    samples = read_split(root, "natural", "train", "")
    mask = cv2.imread(str(samples[0].mask), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(samples[0].mask), cv2.resize(mask, (30, 20), interpolation=cv2.INTER_NEAREST))
    transform = build_transform(32, train=False)
    plain = SegmentationDataset(samples, transform, random_prompt=False, data_root=root)
    with pytest.raises(MaskSizeError) as uncached:
        plain[0]
    with pytest.raises(MaskSizeError) as cached:
        SegmentationDataset(
            samples,
            transform,
            random_prompt=False,
            cache_dir=tmp_path / "c",
            image_size=32,
            data_root=root,
        )
    assert str(cached.value) == str(uncached.value)


def test_entry_layout_and_reuse(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = read_split(root, "medvlsm", "train", "p1")
    arrays = ensure_cache(samples, 32, tmp_path, label="demo-train")
    meta = json.loads((arrays.folder / "meta.json").read_text())
    assert meta["n_samples"] == 10 and meta["n_images"] == 5
    assert arrays.folder.name.startswith("demo-train-32x32-")
    image, mask = arrays[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.flags.writeable
    assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 1}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete entry must not be rebuilt")

    monkeypatch.setattr(cache_module, "_build", fail)
    assert ensure_cache(samples, 32, tmp_path, label="demo-train").folder == arrays.folder
    assert [p.name for p in tmp_path.iterdir()] == [arrays.folder.name]  # no temp left over


def test_changed_data_rebuilds(tmp_path: Path) -> None:
    root = write_synthetic_medvlsm(tmp_path / "d", n_train=3, n_val=1, n_test=1, image_size=40)
    samples = read_split(root, "medvlsm", "train", "p1")
    before = ensure_cache(samples, 32, tmp_path / "c")
    assert cache_key(samples, 32) != cache_key(samples, 33)
    blank = np.zeros((40, 40), np.uint8)
    cv2.imwrite(str(samples[1].mask), blank)
    stat = os.stat(samples[1].mask)
    os.utime(samples[1].mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = ensure_cache(samples, 32, tmp_path / "c")
    assert after.folder != before.folder
    assert before[1][1].any() and not after[1][1].any()


def test_pickles_without_the_data(root: Path, tmp_path: Path) -> None:
    samples = read_split(root, "medvlsm", "train", "p1")
    arrays = ensure_cache(samples, 64, tmp_path)
    arrays[0]  # open the maps
    copy = pickle.loads(pickle.dumps(arrays))
    assert len(pickle.dumps(arrays)) < 1000
    assert np.array_equal(copy[3][0], arrays[3][0])


def test_losing_the_race_keeps_the_winners_entry(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = read_split(root, "medvlsm", "val", "p1")
    build = cache_module._build

    def build_then_lose(*args: object, **kwargs: object) -> None:
        build(*args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(cache_module, "_build", build)
        ensure_cache(samples, 32, tmp_path)  # another writer finishes first

    monkeypatch.setattr(cache_module, "_build", build_then_lose)
    arrays = ensure_cache(samples, 32, tmp_path)
    assert len(arrays) == len(samples)
    assert [p.name for p in tmp_path.iterdir()] == [arrays.folder.name]


def test_cache_dir_needs_image_size(root: Path, tmp_path: Path) -> None:
    samples = read_split(root, "medvlsm", "val", "p1")
    transform = build_transform(32, train=False)
    with pytest.raises(ValueError, match="image_size"):
        SegmentationDataset(samples, transform, random_prompt=False, cache_dir=tmp_path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_batches_match(root: Path, tmp_path: Path, num_workers: int) -> None:
    def module(cache_dir: Path | None) -> SegmentationDataModule:
        return SegmentationDataModule(
            root,
            "medvlsm",
            "p2",
            image_size=32,
            mean=MEAN,
            std=STD,
            tokenize=byte_tokenize,
            batch_size=4,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    plain, cached = module(None), module(tmp_path)
    plain.setup("fit")
    cached.setup("fit")
    assert sorted(p.name.split("-32x32-")[0] for p in tmp_path.iterdir()) == [
        f"{root.name}-train",
        f"{root.name}-val",
    ]
    for loader_a, loader_b in (
        (plain.train_dataloader(), cached.train_dataloader()),
        (plain.val_dataloader(), cached.val_dataloader()),
    ):
        for a, b in zip(loader_a, loader_b, strict=True):
            for key in a:
                same = (
                    torch.equal(a[key], b[key])
                    if isinstance(a[key], torch.Tensor)
                    else a[key] == b[key]
                )
                assert same, key
