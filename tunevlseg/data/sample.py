"""The unit every reader returns, and the path rule every reader enforces.

Readers turn an on-disk layout into a list of :class:`Sample`; nothing after them knows which
layout a data set came from. Annotation files are data from elsewhere, so a reader never lets a
name in them point outside the data set's root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["DatasetFormatError", "Sample", "resolve_inside"]


class DatasetFormatError(ValueError):
    """An annotation file or folder does not follow the expected layout."""


@dataclass(frozen=True)
class Sample:
    """One (image, binary mask, prompts) triple.

    Attributes:
        image: Path of the RGB image.
        mask: Path of the 0/255 mask of ``class_name`` in that image.
        prompts: One or more phrasings of the prompt; training may pick any, evaluation uses the
            first. Never empty (an empty *string* is a valid prompt: the paper's ``p0``).
        class_name: The class the mask shows ("" when the layout does not record it).
    """

    image: Path
    mask: Path
    prompts: tuple[str, ...]
    class_name: str = ""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"sample {self.image} has no prompt")


def resolve_inside(base: Path, name: object, *, where: str) -> Path:
    """Join ``name`` (a relative POSIX path from an annotation) onto ``base``.

    The check is lexical (no ``resolve()``): data sets on shared disks are often symlinked
    farms, and following links would refuse legitimate layouts while adding nothing against
    names crafted to climb out of the root.

    Args:
        base: The folder names are relative to.
        name: The name as read from the annotation.
        where: Describes the entry for the error message (file and index, field).

    Raises:
        DatasetFormatError: ``name`` is not a non-empty string, is absolute, or contains ``..``.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetFormatError(f"{where}: expected a non-empty relative path, got {name!r}")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if (
        posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or name.startswith(("/", "\\"))
    ):
        raise DatasetFormatError(f"{where}: absolute path {name!r} is not allowed")
    if ".." in posix.parts or ".." in windows.parts:
        raise DatasetFormatError(f"{where}: path {name!r} escapes the data set root")
    return base.joinpath(*posix.parts)
