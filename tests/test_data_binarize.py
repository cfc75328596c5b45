"""``tvls-data binarize``: official Cityscapes / VOC layouts -> our natural layout, resumably.

Each source is a handful of tiny files with known class pixels, so every mask can be compared
with the exact pixels of its class (ignored ids, background and void all 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tunevlseg.cli.data import main
from tunevlseg.data import binarize as binarize_module
from tunevlseg.data.binarize import CITYSCAPES_CLASSES, JOURNAL, VOC_CLASSES
from tunevlseg.data.natural import read_natural

H, W = 8, 12


def _city_labels() -> dict[tuple[str, str, str], np.ndarray]:
    """(split, city, stem) -> label ids; ids 0 and 4 are not training classes."""
    a = np.zeros((H, W), np.uint8)
    a[:3] = 7  # road
    a[4:6, 2:6] = 26  # car
    a[6:, :] = 4  # static: ignored
    b = np.full((H, W), 7, np.uint8)
    b[0, :] = 4
    b[5:7, 8:10] = 24  # person
    c = np.zeros((H, W), np.uint8)
    c[:4] = 23  # sky
    c[1, 1] = 19  # traffic light
    return {
        ("train", "aachen", "aachen_000000_000019"): a,
        ("train", "bochum", "bochum_000000_000313"): b,
        ("val", "frankfurt", "frankfurt_000000_000294"): c,
    }


def _voc_labels() -> dict[tuple[str, str], np.ndarray]:
    a = np.zeros((H, W), np.uint8)
    a[1:4, 1:5] = 1  # aeroplane
    a[5:7, 6:9] = 15  # person
    a[0, :] = 255  # void
    b = np.zeros((H, W), np.uint8)
    b[2:6, 2:6] = 1
    b[1, 2:6] = 255
    c = np.zeros((H, W), np.uint8)
    c[3:, 3:] = 15
    c[2, 3:] = 255
    c[0, 0] = 21  # an index of no class: ignored
    return {
        ("train", "2007_000032"): a,
        ("train", "2007_000033"): b,
        ("val", "2007_000042"): c,
    }


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _palette_png(path: Path, labels: np.ndarray) -> None:
    """A VOC-style palette PNG: the colours are not the indices, so reading RGB would fail."""
    image = Image.new("P", (labels.shape[1], labels.shape[0]))
    palette = [0, 0, 0] * 256
    palette[3:6] = [128, 0, 0]
    palette[45:48] = [192, 128, 128]
    palette[765:768] = [224, 224, 192]
    image.putpalette(palette)
    image.putdata(labels.ravel().tolist())
    image.save(path)


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    src = tmp_path / "cityscapes"
    for i, ((split, city, stem), labels) in enumerate(_city_labels().items()):
        images = src / "leftImg8bit" / split / city
        gt = src / "gtFine" / split / city
        images.mkdir(parents=True, exist_ok=True)
        gt.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(images / f"{stem}_leftImg8bit.png"), _photo(i))
        assert cv2.imwrite(str(gt / f"{stem}_gtFine_labelIds.png"), labels)
        assert cv2.imwrite(str(gt / f"{stem}_gtFine_color.png"), _photo(i + 10))  # unused
    return src


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    src = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (src / folder).mkdir(parents=True)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for i, ((split, name), labels) in enumerate(_voc_labels().items()):
        assert cv2.imwrite(str(src / "JPEGImages" / f"{name}.jpg"), _photo(i))
        _palette_png(src / "SegmentationClass" / f"{name}.png", labels)
        lists[split].append(name)
    for split, names in lists.items():
        (src / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return src


def _class_folders(dst: Path, split: str) -> set[str]:
    return {p.name for p in (dst / "annotations" / split).iterdir()}


def _mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2
    return mask


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_cityscapes_masks_prompts_and_images(
    cityscapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out"
    assert main(["binarize", "cityscapes", str(cityscapes), str(dst)]) == 0
    captured = capsys.readouterr()
    assert _class_folders(dst, "train") == {"road", "car", "person"}
    assert _class_folders(dst, "val") == {"sky", "traffic_light"}
    for (split, city, stem), labels in _city_labels().items():
        for label_id, name in CITYSCAPES_CLASSES.items():
            path = dst / "annotations" / split / name / f"{stem}.png"
            assert path.is_file() == bool((labels == label_id).any()), path
            if path.is_file():
                np.testing.assert_array_equal(_mask(path), np.where(labels == label_id, 255, 0))
        image = dst / "images" / split / f"{stem}.png"
        source = cityscapes / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        assert image.read_bytes() == source.read_bytes()
        assert image.stat().st_ino == source.stat().st_ino  # hard link on one file system
    train = read_natural(dst, "train")
    assert sorted((s.image.stem, s.prompts) for s in train) == [
        ("aachen_000000_000019", ("car",)),
        ("aachen_000000_000019", ("road",)),
        ("bochum_000000_000313", ("person",)),
        ("bochum_000000_000313", ("road",)),
    ]
    assert {s.prompts for s in read_natural(dst, "val")} == {("sky",), ("traffic light",)}
    # What was written, per split: images and masks per class.
    assert "cityscapes train: 2 image(s), 0 already written, 2 to write" in captured.err
    assert "wrote 3 image(s), skipped 0 already written" in captured.err
    rows = {
        cells[0]: cells[1:]
        for line in captured.out.splitlines()
        if "│" in line and (cells := [c.strip() for c in line.strip("│ ").split("│")])
    }
    assert rows["(images)"] == ["", "2", "1"]
    assert rows["road"] == ["road", "2", "0"]
    assert rows["traffic_light"] == ["traffic light", "0", "1"]
    assert rows["bus"] == ["bus", "0", "0"]


def test_voc_indices_background_void_and_readable_names(
    voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out"
    assert main(["binarize", "voc", str(voc), str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["written"] == 3 and report["skipped"] == 0
    train, val = report["splits"]
    assert (train["images"], val["images"]) == (2, 1)
    assert train["masks"]["aeroplane"] == 2 and train["masks"]["person"] == 1
    assert val["masks"]["person"] == 1 and val["masks"]["aeroplane"] == 0
    assert _class_folders(dst, "train") == {"aeroplane", "person"}
    assert _class_folders(dst, "val") == {"person"}
    for (split, name), labels in _voc_labels().items():
        for index, folder in VOC_CLASSES.items():
            path = dst / "annotations" / split / folder / f"{name}.png"
            assert path.is_file() == bool((labels == index).any()), path
            if path.is_file():  # void (255), background (0) and index 21 are 0 here
                np.testing.assert_array_equal(_mask(path), np.where(labels == index, 255, 0))
        image = dst / "images" / split / f"{name}.jpg"
        assert image.read_bytes() == (voc / "JPEGImages" / f"{name}.jpg").read_bytes()
    assert {s.prompts for s in read_natural(dst, "train")} == {("aeroplane",), ("person",)}
    assert VOC_CLASSES[11] == "dining_table" and VOC_CLASSES[16] == "potted_plant"
    assert VOC_CLASSES[20] == "tv_monitor" and VOC_CLASSES[1] == "aeroplane"
    assert len(VOC_CLASSES) == 20 and len(CITYSCAPES_CLASSES) == 19


def test_rerun_skips_everything_and_writes_nothing(
    voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out"
    assert main(["binarize", "voc", str(voc), str(dst)]) == 0
    before, stamps = _files(dst), _stamps(dst)
    capsys.readouterr()
    assert main(["binarize", "voc", str(voc), str(dst)]) == 0
    err = capsys.readouterr().err
    assert "voc train: 2 image(s), 2 already written, 0 to write" in err
    assert "wrote 0 image(s), skipped 3 already written" in err
    assert _files(dst) == before and _stamps(dst) == stamps


def test_deleted_mask_and_killed_run_are_completed(
    cityscapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out"
    assert main(["binarize", "cityscapes", str(cityscapes), str(dst)]) == 0
    finished = _files(dst)
    car = dst / "annotations" / "train" / "car" / "aachen_000000_000019.png"
    car.unlink()
    # A killed run: a temporary file under a hidden name and a journal line cut short.
    leftover = car.with_name(f".{car.name}.tmp")
    leftover.write_bytes(b"half a png")
    assert len(read_natural(dst, "train")) == 3  # the leftover is never read as data
    with (dst / JOURNAL).open("a") as journal:
        journal.write('{"scheme": "cityscapes-19/1", "split": "va')
    capsys.readouterr()
    assert main(["binarize", "cityscapes", str(cityscapes), str(dst)]) == 0
    assert "wrote 1 image(s), skipped 2 already written" in capsys.readouterr().err
    assert not leftover.exists()
    after = _files(dst)
    assert after.pop(JOURNAL) != finished.pop(JOURNAL)
    assert after == finished
    capsys.readouterr()
    assert main(["binarize", "cityscapes", str(cityscapes), str(dst)]) == 0
    assert "wrote 0 image(s), skipped 3" in capsys.readouterr().err


def test_changed_source_is_redone_and_stale_masks_removed(
    voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out"
    assert main(["binarize", "voc", str(voc), str(dst)]) == 0
    label = voc / "SegmentationClass" / "2007_000032.png"
    labels = _voc_labels()[("train", "2007_000032")].copy()
    labels[labels == 15] = 0  # the person is gone
    _palette_png(label, labels)
    os.utime(label, ns=(1_000_000_000, 1_000_000_000))
    capsys.readouterr()
    assert main(["binarize", "voc", str(voc), str(dst)]) == 0
    assert "wrote 1 image(s), skipped 2" in capsys.readouterr().err
    assert not (dst / "annotations" / "train" / "person").exists()  # emptied, so removed
    assert {s.prompts for s in read_natural(dst, "train")} == {("aeroplane",)}


def test_two_jobs_give_identical_output(
    cityscapes: Path, voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for dataset, src in (("cityscapes", cityscapes), ("voc", voc)):
        one, two = tmp_path / f"{dataset}-1", tmp_path / f"{dataset}-2"
        assert main(["binarize", dataset, str(src), str(one)]) == 0
        assert main(["binarize", dataset, str(src), str(two), "--jobs", "2"]) == 0
        assert _files(one) == _files(two)  # the journal too: records in listing order
    capsys.readouterr()


def test_copy_when_hard_links_fail(
    voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(binarize_module.os, "link", no_link)
    dst = tmp_path / "out"
    assert main(["binarize", "voc", str(voc), str(dst)]) == 0
    image = dst / "images" / "val" / "2007_000042.jpg"
    source = voc / "JPEGImages" / "2007_000042.jpg"
    assert image.read_bytes() == source.read_bytes()
    assert image.stat().st_ino != source.stat().st_ino


def test_missing_label_is_named_and_nothing_written(
    cityscapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label = cityscapes / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    label.unlink()
    dst = tmp_path / "out"
    assert main(["binarize", "cityscapes", str(cityscapes), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "1 label file(s) missing" in err and str(label) in err
    assert not dst.exists()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("rgb", "expected a palette PNG (PIL mode P), got mode RGB"),
        ("size", "label map is 6x4 but its image"),
        ("garbage", "cannot be read"),
    ],
)
def test_bad_voc_label_is_named_and_the_rest_written(
    voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, words: str
) -> None:
    label = voc / "SegmentationClass" / "2007_000033.png"
    if damage == "rgb":
        Image.open(label).convert("RGB").save(label)
    elif damage == "size":
        _palette_png(label, np.ones((4, 6), np.uint8))
    else:
        label.write_bytes(b"not a png")
    dst = tmp_path / "out"
    assert main(["binarize", "voc", str(voc), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "1 image(s) failed" in err and str(label) in err and words in err
    assert "wrote 2 image(s)" in err
    assert not (dst / "images" / "train" / "2007_000033.jpg").exists()
    assert (dst / "images" / "train" / "2007_000032.jpg").exists()


def test_usage_errors(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["binarize", "voc", str(voc), str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert main(["binarize", "voc", str(tmp_path / "absent"), str(tmp_path / "o")]) == 2
    assert main(["binarize", "voc", str(voc), str(voc)]) == 2
    assert main(["binarize", "voc", str(voc), str(tmp_path / "o"), "--split", "test"]) == 1
    err = capsys.readouterr().err
    assert "--jobs must be >= 1" in err and "is not a folder" in err
    assert f"{voc / 'ImageSets' / 'Segmentation' / 'test.txt'}: VOC split list not found" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["binarize", "ade20k", str(voc), str(tmp_path / "o")])
    assert exit_info.value.code == 2


def test_check_accepts_the_written_folder(
    cityscapes: Path, voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for dataset, src in (("cityscapes", cityscapes), ("voc", voc)):
        dst = tmp_path / f"{dataset}-natural"
        assert main(["binarize", dataset, str(src), str(dst)]) == 0
        argv = ["check", str(dst), "--format", "natural", "--split", "train", "--split", "val"]
        assert main(argv) == 0, capsys.readouterr()
        assert "clean" in capsys.readouterr().err
