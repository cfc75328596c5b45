"""The unseen-class protocol (LDVC, H-CLIP): tune on some classes of a multi-class set, test on all.

``data.unseen_classes`` (or a data set's own ``unseen_classes``) names classes of a natural set
whose samples never reach training or validation; the test split keeps every class, so the
collector can compare the tuned prompt on classes it saw with classes it did not
(:mod:`tunevlseg.collect.zero_shot`).

Class names are matched by :func:`class_key`, one normalisation for every reader: lower case,
letters and digits only. A class folder ``potted_plant`` (what ``tvls-data binarize`` writes for
VOC's ``pottedplant``) is therefore named by ``potted plant``, ``pottedplant`` or
``potted_plant`` alike, and ``tv monitor`` names ``tv_monitor``.

Only a sample's own class decides: an image of a seen class that also shows an unseen object
stays in training, with the unseen object's pixels as background of the seen class's mask (what
a binarised set can express; the inductive setting of LDVC's and H-CLIP's benchmarks ignores
those pixels instead).

Nothing here imports torch: the config schema and the preflight use it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "class_folders",
    "class_key",
    "duplicate_problems",
    "is_unseen",
    "split_by_unseen",
    "unseen_problems",
]

T = TypeVar("T")


def class_key(name: str) -> str:
    """The spelling-free key of a class name: ``"Potted plant"`` -> ``"pottedplant"``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def class_folders(root: Path) -> list[str]:
    """The class folder names under ``annotations/<split>/`` of a natural root, every split.

    Empty when the root has no annotation folders (yet).
    """
    annotations = Path(root) / "annotations"
    if not annotations.is_dir():
        return []
    names = {
        folder.name
        for split in annotations.iterdir()
        if split.is_dir()
        for folder in split.iterdir()
        if folder.is_dir()
    }
    return sorted(names)


def duplicate_problems(names: Sequence[str]) -> list[tuple[int, str]]:
    """``(position, message)`` for each name that repeats an earlier one (up to spelling)."""
    problems = []
    for index, name in enumerate(names):
        if not class_key(name):
            problems.append((index, f"{name!r} names no class (letters or digits needed)"))
            continue
        earlier = [other for other in names[:index] if class_key(other) == class_key(name)]
        if earlier:
            problems.append((index, f"{name!r} names the same class as {earlier[0]!r}"))
    return problems


def unseen_problems(names: Sequence[str], classes: Sequence[str]) -> list[tuple[int | None, str]]:
    """What is wrong with the unseen ``names`` for a data set with the class folders ``classes``.

    Returns:
        ``(position in names, message)`` for a name that is no class (with the closest class
        folder), and ``(None, message)`` when no class would be left to tune on.
    """
    by_key = {class_key(name): name for name in classes}
    listed = ", ".join(classes)
    problems: list[tuple[int | None, str]] = []
    for index, name in enumerate(names):
        if class_key(name) in by_key:
            continue
        close = difflib.get_close_matches(class_key(name), list(by_key), n=1, cutoff=0.6)
        hint = f"did you mean {by_key[close[0]]!r}? " if close else ""
        problems.append(
            (index, f"{name!r} is not a class of the data set ({hint}its classes: {listed})")
        )
    if classes and {class_key(name) for name in names} >= set(by_key):
        problems.append(
            (
                None,
                f"every class of the data set is unseen ({listed}); keep at least one to tune on",
            )
        )
    return problems


def is_unseen(class_name: str, unseen: Iterable[str]) -> bool:
    """Whether ``class_name`` (a class folder or a stored result's class) is in ``unseen``."""
    return class_key(class_name) in {class_key(name) for name in unseen}


def split_by_unseen(
    by_class: Mapping[str, T], unseen: Iterable[str]
) -> tuple[dict[str, T], dict[str, T]]:
    """``by_class`` (class name -> anything) as (seen classes, unseen classes)."""
    keys = {class_key(name) for name in unseen}
    seen = {name: value for name, value in by_class.items() if class_key(name) not in keys}
    hidden = {name: value for name, value in by_class.items() if class_key(name) in keys}
    return seen, hidden
