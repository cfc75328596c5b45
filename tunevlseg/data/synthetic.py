"""Small, easy, learnable data sets in the real on-disk layouts, for tests and the demo.

Each image is a dark, textured background with one or two bright ellipses per class (each class
has its own colour). The files go through the same formats as real data (JPEG images, PNG 0/255
masks, annotation JSON or class folders), so the readers and loaders are exercised for real.

Writing is idempotent: a marker is written first (``.synthetic-in-progress``) and a completion
marker with the parameters last (``.synthetic-complete``). A complete folder with the same
parameters is left alone; a half-written one (or one written with other parameters) is rebuilt.
A non-empty folder without either marker is refused, so real data is never deleted. Concurrent
writers to the same folder are not coordinated.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tunevlseg.data.natural import class_prompt

__all__ = ["COMPLETE_MARKER", "write_synthetic_medvlsm", "write_synthetic_natural"]

COMPLETE_MARKER = ".synthetic-complete"
PROGRESS_MARKER = ".synthetic-in-progress"
_OWNED = ("images", "masks", "anns", "annotations")
_PALETTE = ((235, 215, 180), (120, 235, 120), (130, 170, 250), (250, 120, 200), (240, 240, 90))


def write_synthetic_medvlsm(
    root: Path,
    *,
    n_train: int = 24,
    n_val: int = 8,
    n_test: int = 8,
    image_size: int = 96,
    seed: int = 0,
    classes: Sequence[str] = ("polyp",),
) -> Path:
    """Write a MedVLSM-layout set; one annotation entry per (image, class).

    Prompts: ``p0`` = ``""``, ``p1`` = the class name, ``p2`` = a list of two phrasings.
    Entries also carry ``class_name``.

    Returns:
        ``root``.
    """
    params = _params("medvlsm", n_train, n_val, n_test, image_size, seed, classes)
    root = Path(root)
    with _writer_lock(root):
        if _already_written(root, params):
            return root
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        (root / "anns").mkdir()
        for split_index, (split, n) in enumerate(_splits(n_train, n_val, n_test)):
            rng = np.random.default_rng([seed, split_index])
            entries: list[dict[str, Any]] = []
            for i in range(n):
                stem = f"{split}_{i:04d}"
                image, masks = _paint(rng, image_size, len(classes))
                _write(root / "images" / f"{stem}.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                for name, mask in zip(classes, masks, strict=True):
                    mask_name = f"{stem}_{name}.png"
                    _write(root / "masks" / mask_name, mask)
                    prompt = class_prompt(name)
                    entries.append(
                        {
                            "img_name": f"{stem}.jpg",
                            "mask_name": mask_name,
                            "class_name": name,
                            "prompts": {
                                "p0": "",
                                "p1": prompt,
                                "p2": [f"a {prompt}", f"a bright round {prompt} region"],
                            },
                        }
                    )
            (root / "anns" / f"{split}.json").write_text(json.dumps(entries, indent=1))
        _finish(root, params)
    return root


def write_synthetic_natural(
    root: Path,
    *,
    n_train: int = 24,
    n_val: int = 8,
    n_test: int = 8,
    image_size: int = 96,
    seed: int = 0,
    classes: Sequence[str] = ("bright_object",),
) -> Path:
    """Write a binarized natural-layout set (``images/<split>/``, ``annotations/<split>/<class>/``).

    Every class appears in every image. Class names may contain underscores (prompts use spaces).
    ``n_test=0`` writes no test split, like ``tvls-data binarize`` (official train and val
    only): the set is then read with the ``val_from_train`` split policy
    (:mod:`tunevlseg.data.natural`).

    Returns:
        ``root``.
    """
    params = _params(
        "natural", n_train, n_val, n_test, image_size, seed, classes, test_optional=True
    )
    root = Path(root)
    with _writer_lock(root):
        if _already_written(root, params):
            return root
        for split_index, (split, n) in enumerate(_splits(n_train, n_val, n_test)):
            if n == 0:
                continue  # only the test split may be empty: no folder at all, as binarize writes
            rng = np.random.default_rng([seed, split_index])
            (root / "images" / split).mkdir(parents=True)
            for name in classes:
                (root / "annotations" / split / name).mkdir(parents=True)
            for i in range(n):
                stem = f"{split}_{i:04d}"
                image, masks = _paint(rng, image_size, len(classes))
                _write(
                    root / "images" / split / f"{stem}.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                )
                for name, mask in zip(classes, masks, strict=True):
                    _write(root / "annotations" / split / name / f"{stem}.png", mask)
        _finish(root, params)
    return root


def _params(
    layout: str,
    n_train: int,
    n_val: int,
    n_test: int,
    image_size: int,
    seed: int,
    classes: Sequence[str],
    *,
    test_optional: bool = False,
) -> dict[str, Any]:
    """The parameters recorded in the completion marker, validated.

    ``test_optional`` lets ``n_test`` be 0 (natural sets, whose test split may be absent).
    """
    min_test = 0 if test_optional else 1
    if min(n_train, n_val) < 1 or n_test < min_test or image_size < 16 or not classes:
        what = "train and val (test: >= 0)" if test_optional else "per split"
        raise ValueError(f"need >= 1 image {what}, image_size >= 16 and at least one class")
    if len(set(classes)) != len(classes) or any("/" in c or c in ("", ".", "..") for c in classes):
        raise ValueError(f"class names must be unique plain names, got {list(classes)}")
    return {
        "layout": layout,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "image_size": image_size,
        "seed": seed,
        "classes": list(classes),
    }


def _splits(n_train: int, n_val: int, n_test: int) -> list[tuple[str, int]]:
    return [("train", n_train), ("val", n_val), ("test", n_test)]


@contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """One writer of ``root`` at a time, across processes (an exclusive ``flock`` on a hidden
    file beside it, released if the writer dies).

    Two launches of sweeps that share a synthetic data set used to write it at once: the second
    found the first's half-written folder, cleared it and wrote again, and the first then read
    an annotation file that had just been deleted. Under the lock the second finds the set
    complete and leaves it alone.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".{root.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _already_written(root: Path, params: dict[str, Any]) -> bool:
    """True if ``root`` is complete with ``params``; otherwise clear it for a fresh write."""
    complete = root / COMPLETE_MARKER
    if complete.is_file():
        try:
            if json.loads(complete.read_text()) == params:
                return True
        except json.JSONDecodeError:
            pass
    elif root.is_dir() and any(root.iterdir()) and not (root / PROGRESS_MARKER).exists():
        raise FileExistsError(
            f"{root} is not empty and was not written by the synthetic generator; refusing to "
            "overwrite it"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / PROGRESS_MARKER).touch()
    complete.unlink(missing_ok=True)
    for name in _OWNED:
        shutil.rmtree(root / name, ignore_errors=True)
    return False


def _finish(root: Path, params: dict[str, Any]) -> None:
    tmp = root / f"{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(params))
    tmp.replace(root / COMPLETE_MARKER)
    (root / PROGRESS_MARKER).unlink()


def _write(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _paint(
    rng: np.random.Generator, size: int, n_classes: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One RGB image and a 0/255 mask per class (later ellipses occlude earlier ones)."""
    coarse = rng.normal(40.0, 12.0, (max(2, size // 8), max(2, size // 8), 3)).astype(np.float32)
    background = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.clip(background + rng.normal(0.0, 6.0, (size, size, 3)), 0, 90).astype(np.uint8)
    masks = [np.zeros((size, size), np.uint8) for _ in range(n_classes)]
    for k in range(n_classes):
        colour = np.clip(np.array(_PALETTE[k % len(_PALETTE)]) + rng.integers(-15, 16, 3), 0, 255)
        for _ in range(int(rng.integers(1, 3))):
            shape = np.zeros((size, size), np.uint8)
            centre = (
                int(rng.integers(size // 5, size - size // 5)),
                int(rng.integers(size // 5, size - size // 5)),
            )
            axes = (
                int(rng.integers(size // 10, size // 5)),
                int(rng.integers(size // 10, size // 5)),
            )
            cv2.ellipse(shape, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, thickness=-1)
            for earlier in masks:
                earlier[shape > 0] = 0
            masks[k][shape > 0] = 255
            image[shape > 0] = colour
    return image, masks
