"""Reader for binarized natural-image sets (Cityscapes, VOC, ...).

Layout::

    <root>/images/<split>/<image>.{jpg,jpeg,png}
    <root>/annotations/<split>/<class>/<image>.png      one 0/255 mask per class present

Images sit in a per-split folder (like the annotations) so that splits can share image names
without clashing. Each mask file gives one sample whose prompt is the class folder's name with
underscores replaced by spaces (``traffic_light`` -> ``"traffic light"``).

Split policy
------------
Natural sets have no labelled test split (Cityscapes' test labels are not public; ``tvls-data
binarize`` writes the official ``train`` and ``val`` only). Selecting checkpoints and trials on
the split that is then reported would leak the test images into model selection, so a root with
``annotations/train`` and ``annotations/val`` but no ``annotations/test`` is read with the
``val_from_train`` policy (:func:`split_policy`):

* **test** = the official ``val`` folder, untouched;
* **val** = a fraction (``data.val_fraction``, default 10 %) of the *images* of the official
  ``train`` folder; all class masks of a held-out image go to val together, so no picture is
  on both sides;
* **train** = the other training images.

Which images are held out depends only on their names, the fraction and :data:`SPLIT_SEED`, a
fixed data seed, never on ``training.seed`` or a trial's seed: the split is part of the data, the
same for every trial of every study on the set, for every requeue and resume, and for a
``training.seed`` grid axis (whose cells would otherwise differ in data as well as in seed).
Images are ranked by a hash of (seed, name) and the first ``round(fraction x n)`` are held out.
Adding or removing images therefore moves few existing ones: an image's rank among the others
never changes, so only images near the cut can change side (adding ``m`` images moves at most
``m + 1`` existing images, where a reshuffle would move about a fifth of them); renaming an image
re-draws its side. A root that has ``annotations/test`` keeps its three splits as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunevlseg.data.sample import DatasetFormatError, Sample

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "IMAGE_SUFFIXES",
    "SPLIT_SEED",
    "SplitPolicy",
    "class_prompt",
    "held_out_images",
    "read_natural",
    "read_natural_split",
    "split_policy",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_VAL_FRACTION = 0.1
"""Share of the training images held out for validation when a natural set has no test split
(the default of ``data.val_fraction``)."""
SPLIT_SEED = 0
"""The fixed data seed of the held-out validation images. A constant, not ``training.seed``:
the split must be the same for every trial, study and seed of an experiment (see the module
docstring)."""


def class_prompt(class_name: str) -> str:
    """The prompt for a class folder name."""
    return class_name.replace("_", " ")


def read_natural(root: Path, split: str) -> list[Sample]:
    """Read one split of a binarized natural-image data set.

    Args:
        root: The data set folder.
        split: The split folder name (``"train"``, ``"val"``, ...).

    Returns:
        Samples sorted by class, then image name.

    Raises:
        FileNotFoundError: ``annotations/<split>`` or ``images/<split>`` does not exist, or a
            mask has no image of the same name (the message names the paths).
        DatasetFormatError: The split has no masks.
    """
    root = Path(root)
    ann_dir = root / "annotations" / split
    image_dir = root / "images" / split
    for folder in (ann_dir, image_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{split} split folder not found: {folder}")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.setdefault(path.stem, path)
    samples: list[Sample] = []
    for class_dir in sorted(p for p in ann_dir.iterdir() if p.is_dir()):
        prompt = class_prompt(class_dir.name)
        for mask in sorted(class_dir.glob("*.png")):
            image = images.get(mask.stem)
            if image is None:
                raise FileNotFoundError(
                    f"{mask}: no image {mask.stem}{{{','.join(IMAGE_SUFFIXES)}}} in {image_dir}"
                )
            samples.append(
                Sample(image=image, mask=mask, prompts=(prompt,), class_name=class_dir.name)
            )
    if not samples:
        raise DatasetFormatError(f"{ann_dir}: no <class>/<image>.png masks found")
    return samples


@dataclass(frozen=True)
class SplitPolicy:
    """Where the train, val and test splits that training reads come from.

    Attributes:
        kind: ``"explicit"`` (each split is its own folder or annotation file) or
            ``"val_from_train"`` (test = the official val folder; val = ``val_fraction`` of the
            official train images, held out by image with ``seed``; train = the rest).
        val_fraction: The held-out share (``val_from_train`` only).
        seed: The data seed of the held-out images (``val_from_train`` only).
    """

    kind: Literal["explicit", "val_from_train"] = "explicit"
    val_fraction: float | None = None
    seed: int | None = None

    def source(self, split: str) -> str:
        """The on-disk split folder that ``split`` is read from."""
        if self.kind == "val_from_train":
            return {"train": "train", "val": "train", "test": "val"}.get(split, split)
        return split

    def describe(self) -> str:
        """One line for logs and ``tvls-data check``: which policy, and what it means."""
        if self.kind == "explicit":
            return "explicit: train, val and test as on disk"
        return (
            f"val_from_train: test = the official val split; val = "
            f"{(self.val_fraction or 0) * 100:g} % of the train images, held out by image "
            f"(data seed {self.seed}); train = the other train images"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``tvls-data check --json`` and records)."""
        return {
            "policy": self.kind,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "sources": {split: self.source(split) for split in ("train", "val", "test")},
            "description": self.describe(),
        }


def split_policy(root: Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> SplitPolicy:
    """The split policy of the natural-layout folder ``root``.

    ``val_from_train`` when ``annotations/train`` and ``annotations/val`` exist but
    ``annotations/test`` does not (what ``tvls-data binarize`` writes); otherwise ``explicit``,
    so a root with its own test split keeps it, and a root missing train or val gets the
    reader's message naming the missing folder.

    Raises:
        ValueError: ``val_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    annotations = Path(root) / "annotations"
    if (annotations / "test").is_dir():
        return SplitPolicy("explicit")
    if (annotations / "train").is_dir() and (annotations / "val").is_dir():
        return SplitPolicy("val_from_train", val_fraction, SPLIT_SEED)
    return SplitPolicy("explicit")


def _rank(name: str, seed: int) -> bytes:
    """A stable pseudo-random key of one image name (the same on every machine and Python)."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).digest()


def held_out_images(names: Iterable[str], fraction: float, seed: int = SPLIT_SEED) -> set[str]:
    """The image names that go to validation: the ``round(fraction x n)`` first by hash rank.

    At least one image is held out and at least one stays for training. The result depends on
    the set of names only (not their order), so every process and every trial agrees.

    Raises:
        ValueError: Fewer than two distinct names, or ``fraction`` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    unique = sorted(set(names))
    if len(unique) < 2:
        raise ValueError(f"{len(unique)} image(s): holding out a validation split needs at least 2")
    count = min(len(unique) - 1, max(1, int(len(unique) * fraction + 0.5)))  # half rounds up
    ranked = sorted(unique, key=lambda name: (_rank(name, seed), name))
    return set(ranked[:count])


def read_natural_split(root: Path, split: str, policy: SplitPolicy) -> list[Sample]:
    """Read the ``split`` that training uses under ``policy`` (see :class:`SplitPolicy`).

    Images are identified by their name without suffix (the name their masks share).

    Raises:
        FileNotFoundError, DatasetFormatError: As :func:`read_natural`; also a
            ``DatasetFormatError`` when the train folder has fewer than two images to split.
    """
    if policy.kind == "explicit" or split not in ("train", "val"):
        return read_natural(root, policy.source(split))
    samples = read_natural(root, "train")
    try:
        held = held_out_images(
            (s.image.stem for s in samples),
            policy.val_fraction or DEFAULT_VAL_FRACTION,
            policy.seed if policy.seed is not None else SPLIT_SEED,
        )
    except ValueError as error:
        raise DatasetFormatError(
            f"{Path(root) / 'annotations' / 'train'}: {error} (no annotations/test, so val is "
            "held out from train; add images or give an explicit test split)"
        ) from error
    want_val = split == "val"
    return [s for s in samples if (s.image.stem in held) == want_val]
