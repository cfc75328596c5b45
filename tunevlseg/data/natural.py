"""Reader for binarized natural-image sets (Cityscapes, VOC, ...).

Layout::

    <root>/images/<split>/<image>.{jpg,jpeg,png}
    <root>/annotations/<split>/<class>/<image>.png      one 0/255 mask per class present

Images sit in a per-split folder (like the annotations) so that splits can share image names
without clashing. Each mask file gives one sample whose prompt is the class folder's name with
underscores replaced by spaces (``traffic_light`` -> ``"traffic light"``).
"""

from __future__ import annotations

from pathlib import Path

from tunevlseg.data.sample import DatasetFormatError, Sample

__all__ = ["IMAGE_SUFFIXES", "class_prompt", "read_natural"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
