"""The natural half of the benchmark end to end on the tiny models: official Cityscapes and VOC
layouts -> ``tvls-data binarize`` -> ``tvls-data check`` -> ``tvls-launch --local`` (official val
as test, validation held out of train) -> ``tvls-collect`` with its per-class table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from _slurm_sweeps import cli
from PIL import Image

from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
VOC = {1: "aeroplane", 8: "cat", 15: "person"}
CITY = {7: "road", 26: "car", 24: "person"}


def _scene(rng: np.random.Generator, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A photo with a bright square per class present, and its label map (0 elsewhere)."""
    photo = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    for slot, label in enumerate(ids):
        y, x = 4 + 12 * (slot % 2), 4 + 12 * (slot // 2)
        labels[y : y + 10, x : x + 10] = label
        photo[y : y + 10, x : x + 10] = 80 + 40 * slot
    return photo, labels


def _write_voc(src: Path, rng: np.random.Generator) -> None:
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (src / folder).mkdir(parents=True)
    for split, count in (("train", 24), ("val", 8)):
        names = []
        for i in range(count):
            name = f"2007_{split}{i:03d}"
            photo, labels = _scene(rng, [k for k in VOC if rng.random() < 0.7] or [15])
            Image.fromarray(photo).save(src / "JPEGImages" / f"{name}.jpg", quality=95)
            palette = Image.new("P", (SIZE, SIZE))
            palette.putpalette([(i * 37) % 256 for i in range(768)])
            palette.putdata(labels.ravel().tolist())
            palette.save(src / "SegmentationClass" / f"{name}.png")
            names.append(name)
        (src / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def _write_cityscapes(src: Path, rng: np.random.Generator) -> None:
    for split, count in (("train", 24), ("val", 8)):
        for i in range(count):
            city = ("aachen", "bochum")[i % 2] if split == "train" else "frankfurt"
            stem = f"{city}_000000_{i:06d}"
            photo, labels = _scene(rng, [k for k in CITY if rng.random() < 0.7] or [7])
            for kind, data, suffix in (
                ("leftImg8bit", photo, "leftImg8bit"),
                ("gtFine", labels, "gtFine_labelIds"),
            ):
                folder = src / kind / split / city
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(data).save(folder / f"{stem}_{suffix}.png")


def test_natural_sets_from_official_layouts_to_the_per_class_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_voc(tmp_path / "official/voc", rng)
    _write_cityscapes(tmp_path / "official/cityscapes", rng)
    for kind in ("voc", "cityscapes"):
        done = cli(
            "tunevlseg.cli.data",
            "binarize",
            kind,
            str(tmp_path / "official" / kind),
            str(tmp_path / "data" / kind),
            "--jobs",
            "2",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        check = cli(
            "tunevlseg.cli.data",
            "check",
            str(tmp_path / "data" / kind),
            "--format",
            "natural",
            cwd=tmp_path,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "test" in check.stdout + check.stderr and "held out" in check.stdout + check.stderr

    text = (ROOT / "experiments/natural.yaml").read_text()
    text = re.sub(
        r"models:\n(  .*\n)+",
        "models:\n  - {name: clipseg, pretrained: ./assets/clipseg-tiny, image_size: 32, synthetic: true}\n",
        text,
    )
    text = text.replace(
        "learners: [coop, cocoop, vpt, maple, shared_separate, shared_attention]",
        "learners: [coop, vpt]",
    )
    text = text.replace("root: ../data/natural/cityscapes", "root: ./data/cityscapes").replace(
        "root: ../data/natural/pascal_voc", "root: ./data/voc"
    )
    text = text.replace("output_dir: ../runs/natural", "output_dir: ./runs")
    text = re.sub(
        r"training:\n(  .*\n)+",
        'training: {max_epochs: 2, patience: 2, batch_size: 8, effective_batch_size: 8, precision: "32"}\n',
        text,
    )
    text = re.sub(
        r"search:\n(  .*\n)+",
        "search: {n_trials: 1, space: {prompt_depth: {low: 1, high: 2}}}\n",
        text,
    )
    text = re.sub(
        r"cluster:\n(  .*\n)+", "cluster: {parallelism: 2}\ndata: {num_workers: 0}\n", text
    )
    experiment = tmp_path / "natural.yaml"
    experiment.write_text(text)

    launched = cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    collected = cli(
        "tunevlseg.cli.collect", str(experiment), "--main-metric", "mdice", cwd=tmp_path
    )
    assert collected.returncode == 0, collected.stderr
    results = SweepPaths.of(load_experiment(experiment)).results
    per_class = (results / "per_class.md").read_text()
    for name in ("aeroplane", "cat", "person", "road", "car"):
        assert name in per_class, per_class
    main = (results / "main_table.md").read_text()
    assert "mDice" in main and "cityscapes" in main and "pascal-voc" in main
