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

__all__ = [
    "CLASS_KEYS",
    "ENTRY_KEYS",
    "PROMPT_RULE",
    "SPLITS",
    "EntryError",
    "MissingPromptError",
    "annotation_path",
    "is_prompt",
    "load_annotation",
    "parse_entries",
    "read_medvlsm",
]

SPLITS = ("train", "val", "test")
CLASS_KEYS = ("class_name", "class", "cls")
ENTRY_KEYS = ("img_name", "mask_name", "prompts")
PROMPT_RULE = "a string or a non-empty list of strings"
"""What a prompt value must be; training, `tvls-data check` and preflight say it in these words."""


class EntryError(DatasetFormatError):
    """One entry of an annotation file that the reader cannot use.

    ``str()`` is the reader's message (file, entry, what is wrong); the attributes let preflight
    and the data check group thousands of such entries into a count and a few examples.
    """

    def __init__(self, message: str, *, path: Path, index: int, entry: Any, detail: str) -> None:
        super().__init__(message)
        self.path = path
        self.index = index
        self.img_name = entry.get("img_name") if isinstance(entry, dict) else None
        self.detail = detail


class MissingPromptError(EntryError):
    """An entry has no prompt under the key a study reads: the fix is another ``prompt_key``."""

    def __init__(self, *, path: Path, index: int, entry: Any, prompt_key: str) -> None:
        prompts = entry.get("prompts") if isinstance(entry, dict) else None
        self.prompt_key = prompt_key
        self.available = tuple(sorted(prompts)) if isinstance(prompts, dict) else ()
        detail = f"no prompt {prompt_key!r} (available: {', '.join(self.available) or 'none'})"
        super().__init__(
            f"{path} entry {index}: {detail}", path=path, index=index, entry=entry, detail=detail
        )


def annotation_path(root: Path, split: str) -> Path:
    """Where the annotation list of ``split`` lives."""
    return Path(root) / "anns" / f"{split}.json"


def is_prompt(value: object) -> bool:
    """Whether ``value`` can be a prompt: :data:`PROMPT_RULE` (``""`` is one: the paper's p0)."""
    return isinstance(value, str) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    )


def load_annotation(root: Path, split: str) -> list[Any]:
    """The raw entries of one split's annotation file, not yet checked one by one.

    The one place that reads an annotation file, so training, ``tvls-data check`` and the
    launch's preflight refuse the same files with the same words.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        DatasetFormatError: The file is not valid JSON or not a list.
    """
    path = annotation_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(entries, list):
        raise DatasetFormatError(
            f"{path}: expected a JSON list of entries, found {_json_kind(entries)}"
        )
    return entries


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def parse_entries(
    root: Path, split: str, entries: list[Any], prompt_key: str
) -> tuple[list[Sample], list[EntryError]]:
    """Turn raw entries into samples, collecting every unusable entry instead of stopping.

    Training stops at the first error (:func:`read_medvlsm`); preflight reports all of them
    with counts. Both therefore apply exactly the same rules.

    Returns:
        The samples of the good entries and the errors of the others, both in file order.
    """
    root = Path(root)
    path = annotation_path(root, split)
    samples: list[Sample] = []
    errors: list[EntryError] = []
    for index, entry in enumerate(entries):
        try:
            samples.append(_parse_entry(root, entry, path=path, index=index, prompt_key=prompt_key))
        except EntryError as error:
            errors.append(error)
    return samples, errors


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
            ``prompt_key``, or a path escapes the root (the message names file and entry; the
            first such entry, :class:`EntryError`, when there are several).
    """
    entries = load_annotation(root, split)
    if not entries:
        raise DatasetFormatError(f"{annotation_path(root, split)}: the split is empty")
    samples, errors = parse_entries(root, split, entries, prompt_key)
    if errors:
        raise errors[0]
    return samples


def _parse_entry(root: Path, entry: Any, *, path: Path, index: int, prompt_key: str) -> Sample:
    where = f"{path} entry {index}"

    def fail(detail: str, field: str = "") -> EntryError:
        """The error for this entry; ``field`` names the key the problem is in."""
        if field:
            detail = f"{field}: {detail}"
        sep = " " if field else ": "  # "<file> entry 3 img_name: ...", "<file> entry 3: ..."
        return EntryError(
            f"{where}{sep}{detail}", path=path, index=index, entry=entry, detail=detail
        )

    if not isinstance(entry, dict):
        raise fail(f"expected an object, got {type(entry).__name__}")
    for key in ENTRY_KEYS:
        if key not in entry:
            raise fail(f"missing key {key!r}")
    names = []
    for key, base in (("img_name", root / "images"), ("mask_name", root / "masks")):
        try:
            names.append(resolve_inside(base, entry[key], where=f"{where} {key}"))
        except DatasetFormatError as error:
            raise fail(str(error).removeprefix(f"{where} {key}: "), key) from None
    prompts = entry["prompts"]
    if not isinstance(prompts, dict) or prompt_key not in prompts:
        raise MissingPromptError(path=path, index=index, entry=entry, prompt_key=prompt_key)
    value = prompts[prompt_key]
    if not is_prompt(value):
        raise fail(f"expected {PROMPT_RULE}", f"prompts.{prompt_key}")
    image, mask = names
    return Sample(
        image=image,
        mask=mask,
        prompts=(value,) if isinstance(value, str) else tuple(value),
        class_name=next((entry[k] for k in CLASS_KEYS if isinstance(entry.get(k), str)), ""),
    )
