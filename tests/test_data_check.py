"""``tvls-data check`` / ``synth``: clean sets pass, every kind of damage is named and counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tunevlseg.cli.data import main
from tunevlseg.data.check import check_dataset
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.medvlsm import read_medvlsm
from tunevlseg.data.natural import SplitPolicy
from tunevlseg.data.sample import DatasetFormatError
from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural
from tunevlseg.train.testing import byte_tokenize


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(
        tmp_path_factory.mktemp("check") / "clean",
        n_train=6,
        n_val=3,
        n_test=2,
        image_size=48,
        classes=("polyp", "tool"),
    )


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["check", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _kinds(report: dict) -> dict[str, int]:
    return {p["kind"]: p["count"] for p in report["problems"]}


def test_clean_set_passes(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(clean)]) == 0
    captured = capsys.readouterr()
    assert "train" in captured.out and "p0, p1, p2" in captured.out
    assert "clean" in captured.err
    code, report = _run_json(capsys, str(clean))
    assert code == 0 and report["ok"] and report["problems"] == []
    train = report["splits"][0]
    assert train == {
        "split": "train",
        "samples": 12,
        "images": 6,
        "classes": ["polyp", "tool"],
        "prompt_keys": ["p0", "p1", "p2"],
    }


def test_corrupted_copy_reports_every_problem(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(clean, tmp_path / "broken"))
    anns = json.loads((root / "anns" / "train.json").read_text())
    # Entries come in (polyp, tool) pairs per image.
    (root / "images" / anns[0]["img_name"]).unlink()  # missing image, reported once per file
    jpeg = root / "images" / anns[2]["img_name"]
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])  # truncated JPEG
    mask_path = root / "masks" / anns[4]["mask_name"]
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(mask_path), cv2.resize(mask, (30, 40), interpolation=cv2.INTER_NEAREST))
    gray = root / "masks" / anns[6]["mask_name"]
    cv2.imwrite(str(gray), np.full((48, 48), 128, np.uint8))  # grey mask
    anns.append(dict(anns[8]))  # duplicate entry
    anns.append({**anns[9], "img_name": "../../etc/passwd"})  # escapes the root
    (root / "anns" / "train.json").write_text(json.dumps(anns))
    (root / "anns" / "test.json").write_text("[]")  # empty split

    code, report = _run_json(capsys, str(root))
    assert code == 1 and not report["ok"]
    assert _kinds(report) == {
        "empty_split": 1,
        "path_escapes_root": 1,
        "duplicate_entry": 1,
        "missing_file": 1,
        "unreadable_image": 1,
        "size_mismatch": 1,
        "non_binary_mask": 1,
    }
    examples = {p["kind"]: p["examples"][0] for p in report["problems"]}
    assert examples["missing_file"]["path"].endswith(anns[0]["img_name"])
    assert examples["unreadable_image"]["path"].endswith(anns[2]["img_name"])
    assert "truncated JPEG" in examples["unreadable_image"]["detail"]
    assert examples["size_mismatch"]["detail"] == "mask 40x30, image 48x48"
    assert examples["non_binary_mask"]["path"].endswith(anns[6]["mask_name"])
    assert examples["duplicate_entry"]["path"].endswith(anns[8]["mask_name"])
    assert "train.json entry 13" in examples["path_escapes_root"]["path"]
    assert examples["empty_split"]["path"].endswith("test.json")

    assert main(["check", str(root)]) == 1  # the table view fails the same way
    captured = capsys.readouterr()
    assert "non_binary_mask" in captured.out and "error(s)" in captured.err


def test_annotation_problems_and_warnings(clean: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(clean, tmp_path / "anns"))
    (root / "anns" / "val.json").unlink()
    (root / "anns" / "test.json").write_text("{not json")
    anns = json.loads((root / "anns" / "train.json").read_text())
    del anns[1]["mask_name"]
    anns[3]["prompts"] = {"p0": 3}
    (root / "anns" / "train.json").write_text(json.dumps(anns))
    binary01 = root / "masks" / anns[5]["mask_name"]
    mask = cv2.imread(str(binary01), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(binary01), (mask > 127).astype(np.uint8))  # saved as 0/1

    report = check_dataset(root)
    counts = {g.kind: g.count for g in report.problems.values()}
    assert counts == {"missing_annotation": 1, "bad_annotation": 3, "low_value_mask": 1}
    assert report.n_errors == 4 and report.n_warnings == 1 and not report.ok


def test_jpeg_ringing_is_not_reported(tmp_path: Path) -> None:
    root = write_synthetic_medvlsm(tmp_path / "jpg", n_train=3, n_val=1, n_test=1, image_size=64)
    anns = json.loads((root / "anns" / "train.json").read_text())
    for entry in anns:
        png = root / "masks" / entry["mask_name"]
        cv2.imwrite(
            str(png.with_suffix(".jpg")), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 75]
        )
        entry["mask_name"] = png.with_suffix(".jpg").name
    (root / "anns" / "train.json").write_text(json.dumps(anns))
    assert check_dataset(root, splits=("train",)).ok


def test_natural_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "synth",
                str(tmp_path / "nat"),
                "--format",
                "natural",
                "--n-train",
                "3",
                "--n-val",
                "2",
                "--n-test",
                "1",
                "--image-size",
                "32",
                "--classes",
                "car,traffic_light",
            ]
        )
        == 0
    )
    root = Path(capsys.readouterr().out.strip())
    assert root == tmp_path / "nat"
    code, report = _run_json(capsys, str(root), "--format", "natural")
    assert code == 0 and report["splits"][0]["classes"] == ["car", "traffic_light"]

    (root / "images" / "val" / "val_0000.jpg").unlink()  # its two masks lose their image
    shutil.copy(
        root / "images" / "train" / "train_0001.jpg", root / "images" / "train" / "train_0001.png"
    )
    # annotations/test stays, so the three splits are explicit and images/test is missing
    # (without annotations/test, the check would read train and val only: tests/test_data_splits.py)
    shutil.rmtree(root / "images" / "test")
    code, report = _run_json(capsys, str(root), "--format", "natural")
    assert code == 1
    assert _kinds(report) == {"missing_annotation": 1, "duplicate_entry": 1, "missing_file": 2}
    assert report["split_policy"]["policy"] == "explicit"


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "absent")]) == 2
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "data.txt").write_text("not synthetic")
    assert main(["synth", str(tmp_path / "real")]) == 2
    assert "refusing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["check"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("cached", [False, True])
def test_a_mask_of_another_size_stops_training_with_the_checks_words(
    clean: Path, tmp_path: Path, cached: bool
) -> None:
    """One rule for `tvls-data check` and training: the check's finding is the training error."""
    root = Path(shutil.copytree(clean, tmp_path / "sizes"))
    entry = json.loads((root / "anns" / "train.json").read_text())[4]
    mask_path, image_path = root / "masks" / entry["mask_name"], root / "images" / entry["img_name"]
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(mask_path), cv2.resize(mask, (30, 40), interpolation=cv2.INTER_NEAREST))

    report = check_dataset(root, splits=("train",))
    assert [(path, detail) for path, detail in report.problems["size_mismatch"].examples] == [
        (str(mask_path), "mask 40x30, image 48x48")
    ]
    module = SegmentationDataModule(
        root,
        "medvlsm",
        "p1",
        32,
        (0.5,) * 3,
        (0.25,) * 3,
        byte_tokenize,
        batch_size=2,
        cache_dir=tmp_path / "cache" if cached else None,
    )

    def read_every_sample() -> None:
        module.setup("fit")  # the cache decodes everything here
        dataset = module.datasets["train"]
        for index in range(len(dataset)):
            dataset[index]

    with pytest.raises(DatasetFormatError) as caught:
        read_every_sample()
    message = str(caught.value)
    assert str(mask_path) in message and str(image_path) in message, message
    assert "mask 40x30, image 48x48" in message, message
    assert f"tvls-data check {root}" in message, message


def test_check_and_reader_use_the_same_annotation_rules(clean: Path, tmp_path: Path) -> None:
    """Whatever the reader refuses, the check reports in the same words (one reading of a file)."""
    root = Path(shutil.copytree(clean, tmp_path / "rules"))
    (root / "anns" / "test.json").write_text("{not json")
    anns = json.loads((root / "anns" / "train.json").read_text())
    anns[0]["prompts"]["p1"] = []
    (root / "anns" / "train.json").write_text(json.dumps(anns))

    report = check_dataset(root)
    details = dict(report.problems["bad_annotation"].examples)
    with pytest.raises(DatasetFormatError) as not_json:
        read_medvlsm(root, "test", "p1")
    test_json = str(root / "anns" / "test.json")
    assert str(not_json.value) == f"{test_json}: {details[test_json]}"
    with pytest.raises(DatasetFormatError) as bad_prompt:
        read_medvlsm(root, "train", "p1")
    entry_0 = f"{root / 'anns' / 'train.json'} entry 0"
    assert details[entry_0] in str(bad_prompt.value)


# ------------------------------------------------ split policy, classes per split, warnings


def test_natural_set_without_test_split_reports_the_effective_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """binarize writes train and val only: the check accepts it and says what training reads."""
    assert (
        main(
            [
                "synth",
                str(tmp_path / "nat"),
                "--format",
                "natural",
                "--n-train",
                "20",
                "--n-val",
                "5",
                "--n-test",
                "0",
                "--image-size",
                "24",
                "--classes",
                "car,person,traffic_light",
            ]
        )
        == 0
    )
    root = Path(capsys.readouterr().out.strip())
    assert not (root / "annotations" / "test").exists()

    code, report = _run_json(capsys, str(root), "--format", "natural")
    assert code == 0 and report["problems"] == []
    assert [s["split"] for s in report["splits"]] == ["train", "val"]  # no test split demanded
    policy = report["split_policy"]
    assert policy["policy"] == "val_from_train" and policy["val_fraction"] == 0.1
    assert policy["sources"] == {"train": "train", "val": "train", "test": "val"}
    rows = {
        e["split"]: (e["source"], e["held_out"], e["images"], e["samples"])
        for e in policy["effective"]
    }
    assert rows == {
        "train": ("train", False, 18, 54),
        "val": ("train", True, 2, 6),
        "test": ("val", False, 5, 15),
    }
    # the numbers are the data module's (one hold-out function for both)
    module = SegmentationDataModule(
        root, "natural", "p1", 16, (0.5,) * 3, (0.25,) * 3, byte_tokenize, 2
    )
    assert [
        len({s.image for s in module.samples(split)}) for split in ("train", "val", "test")
    ] == [18, 2, 5]

    assert main(["check", str(root), "--format", "natural"]) == 0
    captured = capsys.readouterr()
    assert (
        "split policy: val_from_train: test = the official val split; val = 10 % of the train"
        in captured.out
    )
    assert (
        "effective splits: train 18 images (from official train) / val 2 images (held out "
        "from train) / test 5 images (from official val)"
    ) in captured.out
    assert "clean" in captured.err

    code, report = _run_json(capsys, str(root), "--format", "natural", "--val-fraction", "0.5")
    assert [e["images"] for e in report["split_policy"]["effective"]] == [10, 10, 5]
    assert main(["check", str(root), "--format", "natural", "--val-fraction", "1"]) == 2


def test_classes_per_split_images_without_class_and_missing_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_synthetic_natural(
        tmp_path / "nat",
        n_train=10,
        n_val=3,
        n_test=0,
        image_size=24,
        classes=("car", "person", "traffic_light"),
    )
    for mask in (root / "annotations" / "val" / "person").iterdir():
        mask.unlink()  # the official val (the test split) has no person at all
    shutil.copy(
        root / "images" / "train" / "train_0000.jpg", root / "images" / "train" / "orphan.jpg"
    )
    shutil.copy(root / "images" / "val" / "val_0000.jpg", root / "images" / "val" / "lonely.jpg")

    code, report = _run_json(capsys, str(root), "--format", "natural")
    assert code == 0 and report["ok"]  # warnings only
    assert _kinds(report) == {"image_without_class": 2, "class_missing_from_split": 1}
    assert [s["classes"] for s in report["splits"]] == [
        ["car", "person", "traffic_light"],
        ["car", "traffic_light"],
    ]
    effective = {e["split"]: e for e in report["split_policy"]["effective"]}
    assert effective["test"]["classes"] == ["car", "traffic_light"]
    assert effective["val"]["masks_per_class"] == {"car": 1, "person": 1, "traffic_light": 1}
    problems = {p["kind"]: p for p in report["problems"]}
    assert all(p["severity"] == "warning" for p in problems.values())
    [missing] = problems["class_missing_from_split"]["examples"]
    assert missing == {
        "path": str(root / "annotations" / "val"),
        "detail": "class 'person': no mask in test (the official val); masks in train 9, val 1",
    }
    orphans = sorted(e["path"] for e in problems["image_without_class"]["examples"])
    assert orphans == [
        str(root / "images" / "train" / "orphan.jpg"),
        str(root / "images" / "val" / "lonely.jpg"),
    ]

    assert main(["check", str(root), "--format", "natural"]) == 0
    captured = capsys.readouterr()
    assert "class_missing_from_split" in captured.out and "image_without_class" in captured.out
    assert "clean (3 warning(s))" in captured.err


def test_medical_multi_class_set_reports_a_class_missing_from_a_split(
    clean: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(clean, tmp_path / "multi"))
    anns = json.loads((root / "anns" / "test.json").read_text())
    (root / "anns" / "test.json").write_text(
        json.dumps([e for e in anns if e["class_name"] != "tool"])
    )

    report = check_dataset(root)
    assert report.ok and report.policy == SplitPolicy("explicit")
    assert [s.classes for s in report.splits] == [["polyp", "tool"], ["polyp", "tool"], ["polyp"]]
    group = report.problems["class_missing_from_split"]
    assert group.count == 1 and not group.is_error
    assert group.examples == [
        (str(root / "anns" / "test.json"), "class 'tool': no mask in test; masks in train 6, val 3")
    ]
    assert report.to_dict()["split_policy"]["policy"] == "explicit"
