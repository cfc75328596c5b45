"""Readers of the MedVLSM and natural layouts, on synthetic data and hand-made broken files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunevlseg.data.medvlsm import read_medvlsm
from tunevlseg.data.natural import read_natural
from tunevlseg.data.sample import DatasetFormatError, Sample
from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural


@pytest.fixture(scope="module")
def medvlsm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(
        tmp_path_factory.mktemp("medvlsm"),
        n_train=4,
        n_val=2,
        n_test=2,
        image_size=32,
        classes=("polyp", "small_cell"),
    )


def _write_anns(root: Path, entries: object, split: str = "train") -> Path:
    (root / "anns").mkdir(parents=True, exist_ok=True)
    (root / "anns" / f"{split}.json").write_text(json.dumps(entries))
    return root


def test_medvlsm_string_prompt_and_multiclass(medvlsm_root: Path) -> None:
    samples = read_medvlsm(medvlsm_root, "train", "p1")
    assert len(samples) == 4 * 2  # one entry per (image, class)
    first, second = samples[0], samples[1]
    assert first.image == second.image == medvlsm_root / "images" / "train_0000.jpg"
    assert first.mask == medvlsm_root / "masks" / "train_0000_polyp.png"
    assert (first.prompts, first.class_name) == (("polyp",), "polyp")
    assert (second.prompts, second.class_name) == (("small cell",), "small_cell")
    assert all(s.image.is_file() and s.mask.is_file() for s in samples)


def test_medvlsm_list_and_empty_prompts(medvlsm_root: Path) -> None:
    listed = read_medvlsm(medvlsm_root, "val", "p2")[0]
    assert listed.prompts == ("a polyp", "a bright round polyp region")
    assert read_medvlsm(medvlsm_root, "test", "p0")[0].prompts == ("",)


def test_sample_is_frozen() -> None:
    sample = Sample(Path("a.jpg"), Path("a.png"), ("x",))
    with pytest.raises(AttributeError):
        sample.class_name = "y"  # type: ignore[misc]


def test_medvlsm_extra_keys_and_nested_paths(tmp_path: Path) -> None:
    entries = [
        {
            "img_name": "sub/a.jpg",
            "mask_name": "sub/a.png",
            "cls": "tumor",
            "sentences_num": 3,
            "prompts": {"p1": "tumor", "p3": ["x", "y"]},
        }
    ]
    [sample] = read_medvlsm(_write_anns(tmp_path, entries), "train", "p3")
    assert sample.image == tmp_path / "images" / "sub" / "a.jpg"
    assert (sample.prompts, sample.class_name) == (("x", "y"), "tumor")


@pytest.mark.parametrize("field", ["img_name", "mask_name"])
@pytest.mark.parametrize("bad", ["../outside.png", "a/../../b.png", "/etc/passwd", "C:\\x.png"])
def test_medvlsm_refuses_paths_outside_root(tmp_path: Path, field: str, bad: str) -> None:
    entry = {"img_name": "a.jpg", "mask_name": "a.png", "prompts": {"p1": "x"}}
    entries = [entry, {**entry, field: bad}]
    with pytest.raises(DatasetFormatError, match=rf"train.json entry 1 {field}"):
        read_medvlsm(_write_anns(tmp_path, entries), "train", "p1")


def test_medvlsm_missing_annotation_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "anns" / "val.json"))):
        read_medvlsm(tmp_path, "val", "p1")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"not": "a list"}, "expected a JSON list"),
        ([], "empty"),
        ([{"img_name": "a.jpg", "prompts": {"p1": "x"}}], "entry 0: missing key 'mask_name'"),
        (
            [{"img_name": "a.jpg", "mask_name": "a.png", "prompts": {"p0": ""}}],
            r"no prompt 'p1' \(available: p0\)",
        ),
        (
            [{"img_name": "a.jpg", "mask_name": "a.png", "prompts": {"p1": []}}],
            "non-empty list of strings",
        ),
    ],
)
def test_medvlsm_malformed_entries(tmp_path: Path, entries: object, message: str) -> None:
    with pytest.raises(DatasetFormatError, match=message):
        read_medvlsm(_write_anns(tmp_path, entries), "train", "p1")


def test_natural_layout(tmp_path: Path) -> None:
    root = write_synthetic_natural(
        tmp_path / "voc",
        n_train=3,
        n_val=2,
        n_test=1,
        image_size=32,
        classes=("car", "traffic_light"),
    )
    samples = read_natural(root, "val")
    assert len(samples) == 2 * 2
    light = samples[-1]
    assert light.prompts == ("traffic light",)
    assert light.class_name == "traffic_light"
    assert light.image == root / "images" / "val" / "val_0001.jpg"
    assert light.mask == root / "annotations" / "val" / "traffic_light" / "val_0001.png"


def test_natural_errors_name_the_paths(tmp_path: Path) -> None:
    root = write_synthetic_natural(tmp_path / "voc", n_train=2, n_val=1, n_test=1, image_size=32)
    with pytest.raises(FileNotFoundError, match=str(root / "annotations" / "extra")):
        read_natural(root, "extra")
    (root / "images" / "train" / "train_0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_0001\.png: no image train_0001"):
        read_natural(root, "train")
