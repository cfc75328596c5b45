"""Reader for the MedVLSM annotation layout.

Layout::

    <root>/images/...            image files (any depth)
    <root>/masks/...             0/255 masks (PNG; JPEG tolerated, thresholded at load)
    <root>/anns/{train,val,test}.json

Each JSON file is a list of entries ``{"img_name", "mask_name", "prompts": {"p0": "",
"p1": "polyp", "p2": ["a polyp", ...]}, ...}``; ``img_name`` is relative to ``images/`` and
``mask_name`` to ``masks/``. Multi-class sets hold one entry per (image, class). Extra keys are
ignored, except that a class name is taken from the first of ``class_name``, ``class``, ``cls``
(string values) so multi-class results can be broken down per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunevlseg.data.sample import DatasetFormatError, Sample, resolve_inside

__all__ = ["CLASS_KEYS", "SPLITS", "annotation_path", "read_medvlsm"]

SPLITS = ("train", "val", "test")
CLASS_KEYS = ("class_name", "class", "cls")


def annotation_path(root: Path, split: str) -> Path:
    """Where the annotation list of ``split`` lives."""
    return Path(root) / "anns" / f"{split}.json"


def read_medvlsm(root: Path, split: str, prompt_key: str) -> list[Sample]:
    """Read one split of a MedVLSM data set.

    Args:
        root: The data set folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        prompt_key: Which prompt of each entry to use (``"p0"`` .. ``"pN"``).

    Returns:
        The samples in file order. File existence is not checked here (a stat per image is
        slow on network file systems); the loader names a missing file when it meets one.

    Raises:
        FileNotFoundError: The annotation file does not exist (the message names it).
        DatasetFormatError: The file is not a list of well-formed entries, an entry lacks
            ``prompt_key``, or a path escapes the root (the message names file and entry).
    """
    root = Path(root)
    path = annotation_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(entries, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of entries")
    if not entries:
        raise DatasetFormatError(f"{path}: the split is empty")
    return [
        _parse_entry(root, entry, where=f"{path} entry {i}", prompt_key=prompt_key)
        for i, entry in enumerate(entries)
    ]


def _parse_entry(root: Path, entry: Any, *, where: str, prompt_key: str) -> Sample:
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("img_name", "mask_name", "prompts"):
        if key not in entry:
            raise DatasetFormatError(f"{where}: missing key {key!r}")
    image = resolve_inside(root / "images", entry["img_name"], where=f"{where} img_name")
    mask = resolve_inside(root / "masks", entry["mask_name"], where=f"{where} mask_name")
    prompts = entry["prompts"]
    if not isinstance(prompts, dict) or prompt_key not in prompts:
        available = sorted(prompts) if isinstance(prompts, dict) else []
        raise DatasetFormatError(
            f"{where}: no prompt {prompt_key!r} (available: {', '.join(available) or 'none'})"
        )
    return Sample(
        image=image,
        mask=mask,
        prompts=_as_prompt_tuple(prompts[prompt_key], where=f"{where} prompts.{prompt_key}"),
        class_name=next((entry[k] for k in CLASS_KEYS if isinstance(entry.get(k), str)), ""),
    )


def _as_prompt_tuple(value: Any, *, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DatasetFormatError(f"{where}: expected a string or a non-empty list of strings")
