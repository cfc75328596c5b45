"""The synthetic generator: real formats, idempotence, recovery from a half-written folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tunevlseg.data.synthetic import COMPLETE_MARKER, write_synthetic_medvlsm

SMALL = {"n_train": 3, "n_val": 1, "n_test": 1, "image_size": 32}


def test_formats_and_prompts(tmp_path: Path) -> None:
    root = write_synthetic_medvlsm(tmp_path / "d", **SMALL)
    entries = json.loads((root / "anns" / "train.json").read_text())
    assert len(entries) == 3
    assert entries[0]["prompts"]["p0"] == ""
    assert entries[0]["prompts"]["p1"] == "polyp"
    assert len(entries[0]["prompts"]["p2"]) == 2
    image = cv2.imread(str(root / "images" / entries[0]["img_name"]))
    mask = cv2.imread(str(root / "masks" / entries[0]["mask_name"]), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (32, 32, 3)
    assert set(np.unique(mask)) == {0, 255}
    # Easy to learn: the object is much brighter than the background.
    grey = image.mean(axis=2)
    assert grey[mask > 0].mean() > grey[mask == 0].mean() + 80


def test_idempotent(tmp_path: Path) -> None:
    root = write_synthetic_medvlsm(tmp_path / "d", **SMALL)
    marker = root / COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    image = root / "images" / "train_0000.jpg"
    image_stamp = image.stat().st_mtime_ns
    write_synthetic_medvlsm(root, **SMALL)
    assert marker.stat().st_mtime_ns == stamp
    assert image.stat().st_mtime_ns == image_stamp


def test_half_written_folder_is_rebuilt(tmp_path: Path) -> None:
    root = write_synthetic_medvlsm(tmp_path / "d", **SMALL)
    (root / COMPLETE_MARKER).unlink()
    (root / ".synthetic-in-progress").touch()  # as left by a killed writer
    (root / "anns" / "test.json").unlink()
    (root / "images" / "stray.jpg").write_bytes(b"partial")
    write_synthetic_medvlsm(root, **SMALL)
    assert (root / COMPLETE_MARKER).is_file()
    assert (root / "anns" / "test.json").is_file()
    assert not (root / "images" / "stray.jpg").exists()


def test_other_parameters_rebuild(tmp_path: Path) -> None:
    root = write_synthetic_medvlsm(tmp_path / "d", **SMALL)
    write_synthetic_medvlsm(root, **{**SMALL, "n_train": 5})
    assert len(json.loads((root / "anns" / "train.json").read_text())) == 5


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "precious.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="refusing"):
        write_synthetic_medvlsm(tmp_path / "real", **SMALL)
    assert (tmp_path / "real" / "precious.jpg").exists()


def _write_and_read(root: str, barrier: object) -> int:
    """One launch's share: write the set (or find it written), then read every entry's files."""
    barrier.wait()  # type: ignore[attr-defined]
    written = write_synthetic_medvlsm(Path(root), n_train=24, n_val=8, n_test=8, image_size=32)
    read = 0
    for split in ("train", "val", "test"):
        for entry in json.loads((written / "anns" / f"{split}.json").read_text()):
            read += (written / "images" / entry["img_name"]).is_file()
            read += (written / "masks" / entry["mask_name"]).is_file()
    return read


def test_launches_writing_one_set_at_once_all_read_it_whole(tmp_path: Path) -> None:
    """Two launches sharing a synthetic set used to clear each other's half-written files (a
    launch then failed on a deleted annotation file); one writer at a time now."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = 4
    barrier = context.Manager().Barrier(writers)
    with context.Pool(writers) as pool:
        results = pool.starmap(_write_and_read, [(str(tmp_path / "d"), barrier)] * writers)
    assert results == [2 * (24 + 8 + 8)] * writers  # every image and mask of every entry
    assert (tmp_path / "d" / COMPLETE_MARKER).is_file()
