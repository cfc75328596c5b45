"""Check a data set before spending GPU hours on it: every problem, counted, with examples.

The readers stop at the first malformed entry and the loader at the first unreadable file,
hours into a run. :func:`check_dataset` instead walks every split once and collects all
problems, each under a stable ``kind``:

=====================  ======================================================================
kind                   meaning
=====================  ======================================================================
missing_annotation     ``anns/<split>.json`` (MedVLSM) or ``annotations/<split>`` /
                       ``images/<split>`` (natural) does not exist
bad_annotation         the annotation is not valid JSON, not a list, or an entry lacks
                       ``img_name`` / ``mask_name`` / ``prompts`` or has malformed prompts
empty_split            a split has no entries (MedVLSM) or no masks (natural)
path_escapes_root      a name in an annotation is absolute or climbs out with ``..``
duplicate_entry        the same (image, mask) pair is listed twice in a split, or (natural) two
                       image files share a name stem, so which one is used is ambiguous
missing_file           an image or mask file does not exist
unreadable_image       OpenCV cannot decode the file, or it is truncated (a JPEG that does not
                       end with its end-of-image marker, a PNG without its ``IEND`` chunk:
                       OpenCV would silently fill the missing part with grey)
size_mismatch          a mask's height x width differs from its image's (training stops at
                       such a pair: ``transforms.mask_size_mismatch`` is the one rule)
non_binary_mask        more than 1 % of a mask's pixels lie strictly between 30 and 225, i.e.
                       far from both 0 and 255: thresholding at 127 would invent a boundary.
                       JPEG ringing around edges stays well below this; a grey-scale or
                       soft (probability) mask does not
low_value_mask         (warning) a mask has foreground pixels but none above 30, e.g. saved as
                       0/1 instead of 0/255: thresholding at 127 makes it empty
image_without_class    (warning, natural layout) an image in ``images/<split>`` has no mask in
                       any class folder of ``annotations/<split>``, so no sample uses it (a
                       MedVLSM ``images/`` folder is shared by the splits: not checked there)
class_missing_from_split
                       (warning) a class has masks in one split but none in another (natural:
                       class folders; MedVLSM: the entries' ``class_name``, when present), one
                       per (class, split), counted over the splits training reads (below)
=====================  ======================================================================

Everything except the warnings is an error. A file is reported once, however many entries
use it. The check streams: one image and one mask are
decoded at a time, and an image shared by several entries (multi-class sets) is decoded once.
It keeps one small record per distinct image and per (image, mask) pair, never pixels.

Natural sets are checked under the split policy training uses
(:func:`tunevlseg.data.natural.split_policy`): without ``annotations/test`` only ``train`` and
``val`` must exist, and the report gives the *effective* splits (train minus the held-out
images, val held out from train, test = the official val) with their images and classes,
computed by the data module's own hold-out function. A train folder with fewer than two images
cannot be split and is an ``empty_split`` (the held-out val would be empty).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from tunevlseg.data.medvlsm import (
    CLASS_KEYS,
    ENTRY_KEYS,
    PROMPT_RULE,
    SPLITS,
    annotation_path,
    is_prompt,
    load_annotation,
)
from tunevlseg.data.natural import (
    DEFAULT_VAL_FRACTION,
    IMAGE_SUFFIXES,
    SPLIT_SEED,
    SplitPolicy,
    held_out_images,
    split_policy,
)
from tunevlseg.data.sample import DatasetFormatError, resolve_inside
from tunevlseg.data.transforms import MASK_THRESHOLD, mask_size_mismatch

__all__ = [
    "ERROR_KINDS",
    "MIDTONE_HIGH",
    "MIDTONE_LOW",
    "MIDTONE_MAX_FRACTION",
    "WARNING_KINDS",
    "CheckReport",
    "EffectiveSplit",
    "ProblemGroup",
    "SplitSummary",
    "check_dataset",
    "iter_problem_rows",
]

ERROR_KINDS = (
    "missing_annotation",
    "bad_annotation",
    "empty_split",
    "path_escapes_root",
    "duplicate_entry",
    "missing_file",
    "unreadable_image",
    "size_mismatch",
    "non_binary_mask",
)
WARNING_KINDS = ("low_value_mask", "image_without_class", "class_missing_from_split")
MIDTONE_LOW, MIDTONE_HIGH = 30, 225
MIDTONE_MAX_FRACTION = 0.01

Format = Literal["medvlsm", "natural"]


@dataclass
class ProblemGroup:
    """All problems of one kind: how many, and the first few (path, detail) examples."""

    kind: str
    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return self.kind not in WARNING_KINDS


@dataclass
class SplitSummary:
    """What a split holds (counted over the entries that could be read)."""

    split: str
    samples: int = 0
    images: int = 0
    classes: list[str] = field(default_factory=list)
    prompt_keys: list[str] = field(default_factory=list)


@dataclass
class EffectiveSplit:
    """A split as training reads it under the split policy (counted over readable entries).

    ``source`` is the on-disk split it comes from; ``held_out`` says whether it is the held-out
    part of that split (val under ``val_from_train``) rather than the whole or the rest of it.
    """

    split: str
    source: str
    held_out: bool = False
    samples: int = 0
    images: int = 0
    classes: list[str] = field(default_factory=list)
    masks_per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`."""

    root: Path
    format: Format
    splits: list[SplitSummary] = field(default_factory=list)
    problems: dict[str, ProblemGroup] = field(default_factory=dict)
    max_examples: int = 5
    policy: SplitPolicy = field(default_factory=SplitPolicy)
    effective: list[EffectiveSplit] = field(default_factory=list)

    @property
    def n_errors(self) -> int:
        return sum(g.count for g in self.problems.values() if g.is_error)

    @property
    def n_warnings(self) -> int:
        return sum(g.count for g in self.problems.values() if not g.is_error)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return self.n_errors == 0

    def add(self, kind: str, path: Path | str, detail: str = "") -> None:
        """Record one problem (only the first ``max_examples`` per kind keep their path)."""
        if kind not in ERROR_KINDS and kind not in WARNING_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        group = self.problems.setdefault(kind, ProblemGroup(kind))
        group.count += 1
        if len(group.examples) < self.max_examples:
            group.examples.append((str(path), detail))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; problems in the order of :data:`ERROR_KINDS` then warnings."""
        order = [*ERROR_KINDS, *WARNING_KINDS]
        return {
            "root": str(self.root),
            "format": self.format,
            "ok": self.ok,
            "errors": self.n_errors,
            "warnings": self.n_warnings,
            "splits": [vars(s) for s in self.splits],
            "split_policy": {
                **self.policy.to_dict(),
                "effective": [vars(e) for e in self.effective],
            },
            "problems": [
                {
                    "kind": g.kind,
                    "severity": "error" if g.is_error else "warning",
                    "count": g.count,
                    "examples": [{"path": p, "detail": d} for p, d in g.examples],
                }
                for g in sorted(self.problems.values(), key=lambda g: order.index(g.kind))
            ],
        }


@dataclass(frozen=True)
class _Entry:
    image: Path
    mask: Path
    class_name: str


def check_dataset(
    root: Path,
    format: Format = "medvlsm",
    *,
    splits: Sequence[str] | None = None,
    max_examples: int = 5,
    progress: Callable[[str, int], None] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> CheckReport:
    """Check every split of the data set at ``root``.

    Args:
        root: The data set folder.
        format: ``"medvlsm"`` or ``"natural"``.
        splits: The on-disk splits to check; ``None``: the ones training reads (MedVLSM: train,
            val and test; natural: the same, or train and val when there is no
            ``annotations/test``, see :func:`~tunevlseg.data.natural.split_policy`).
        max_examples: Paths kept per problem kind.
        progress: Called with (split, number of entries) before each split's files are read.
        val_fraction: The experiment's ``data.val_fraction``: the share of the train images a
            natural set without a test split holds out for validation.

    Returns:
        The report; ``report.ok`` is False when any error was found.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        ValueError: Unknown ``format``, or ``val_fraction`` outside (0, 1).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"data set root {root} is not a folder")
    if format not in ("medvlsm", "natural"):
        raise ValueError(f"unknown data format {format!r}; expected 'medvlsm' or 'natural'")
    policy = split_policy(root, val_fraction) if format == "natural" else SplitPolicy()
    if splits is None:
        splits = ("train", "val") if policy.kind == "val_from_train" else SPLITS
    report = CheckReport(root=root, format=format, max_examples=max_examples, policy=policy)
    shapes: dict[Path, tuple[int, int] | None] = {}  # decoded images, shared by the splits
    read_entries: dict[str, list[_Entry]] = {}
    for split in splits:
        summary = SplitSummary(split)
        report.splits.append(summary)
        read = _medvlsm_entries if format == "medvlsm" else _natural_entries
        entries = read(root, split, report, summary)
        if entries is None:
            continue
        if not entries:
            report.add("empty_split", _split_location(root, format, split), "no entries")
            continue
        if progress is not None:
            progress(split, len(entries))
        _check_files(entries, report, summary, shapes)
        read_entries[split] = entries
    report.effective = _effective_splits(report, read_entries)
    _report_missing_classes(report)
    return report


def _contents(entries: list[_Entry]) -> dict[Path, set[tuple[Path, str]]]:
    """Image -> its distinct (mask, class) pairs (a duplicated entry counts once)."""
    images: dict[Path, set[tuple[Path, str]]] = {}
    for entry in entries:
        images.setdefault(entry.image, set()).add((entry.mask, entry.class_name))
    return images


def _effective(
    split: str, source: str, images: dict[Path, set[tuple[Path, str]]], *, held_out: bool = False
) -> EffectiveSplit:
    pairs = [pair for masks in images.values() for pair in masks]
    per_class = Counter(name for _, name in pairs if name)
    return EffectiveSplit(
        split=split,
        source=source,
        held_out=held_out,
        samples=len(pairs),
        images=len(images),
        classes=sorted(per_class),
        masks_per_class=dict(sorted(per_class.items())),
    )


def _effective_splits(
    report: CheckReport, read_entries: dict[str, list[_Entry]]
) -> list[EffectiveSplit]:
    """The splits training would read, from the checked on-disk splits that could be read.

    Under ``val_from_train`` the hold-out is :func:`~tunevlseg.data.natural.held_out_images`,
    the very function the data module uses, so the counts are the training's.
    """
    policy = report.policy
    if policy.kind == "explicit":
        return [
            _effective(split, split, _contents(entries)) for split, entries in read_entries.items()
        ]
    effective: list[EffectiveSplit] = []
    if "train" in read_entries:
        train = _contents(read_entries["train"])
        try:
            held = held_out_images(
                (image.stem for image in train),
                policy.val_fraction or DEFAULT_VAL_FRACTION,
                SPLIT_SEED if policy.seed is None else policy.seed,
            )
        except ValueError as error:
            report.add(
                "empty_split",
                _split_location(report.root, report.format, "train"),
                f"val is held out from train (no annotations/test), but {error}",
            )
        else:
            rest = {image: masks for image, masks in train.items() if image.stem not in held}
            out = {image: masks for image, masks in train.items() if image.stem in held}
            effective.append(_effective("train", "train", rest))
            effective.append(_effective("val", "train", out, held_out=True))
    if "val" in read_entries:
        effective.append(_effective("test", "val", _contents(read_entries["val"])))
    return effective


def _report_missing_classes(report: CheckReport) -> None:
    """Warn for each (class, split) where a class that another split has has no mask.

    Counted over the effective splits: a class can be in the official train folder and still
    miss the held-out val. Splits without class names (single-class MedVLSM sets without
    ``class_name``) take no part.
    """
    named = [e for e in report.effective if e.classes]
    if len(named) < 2:
        return
    every = sorted({name for e in named for name in e.classes})
    for effective in named:
        origin = ""
        if effective.held_out:
            origin = f" (held out from {effective.source})"
        elif effective.source != effective.split:
            origin = f" (the official {effective.source})"
        for name in every:
            if name in effective.masks_per_class:
                continue
            elsewhere = ", ".join(
                f"{e.split} {e.masks_per_class[name]}" for e in named if name in e.masks_per_class
            )
            report.add(
                "class_missing_from_split",
                _split_location(report.root, report.format, effective.source),
                f"class {name!r}: no mask in {effective.split}{origin}; masks in {elsewhere}",
            )


def _split_location(root: Path, format: Format, split: str) -> Path:
    return annotation_path(root, split) if format == "medvlsm" else root / "annotations" / split


def _medvlsm_entries(
    root: Path, split: str, report: CheckReport, summary: SplitSummary
) -> list[_Entry] | None:
    path = annotation_path(root, split)
    try:
        data = load_annotation(root, split)  # the reader's own rules for the whole file
    except FileNotFoundError:
        report.add("missing_annotation", path, "annotation file not found")
        return None
    except DatasetFormatError as error:
        report.add("bad_annotation", path, str(error).removeprefix(f"{path}: "))
        return None
    entries: list[_Entry] = []
    prompt_keys: set[str] = set()
    for i, raw in enumerate(data):
        where = f"{path} entry {i}"
        if not isinstance(raw, dict):
            report.add("bad_annotation", where, f"expected an object, got {type(raw).__name__}")
            continue
        missing = [k for k in ENTRY_KEYS if k not in raw]
        if missing:
            report.add("bad_annotation", where, f"missing {', '.join(missing)}")
            continue
        prompts = raw["prompts"]
        if not isinstance(prompts, dict) or not prompts:
            report.add("bad_annotation", where, 'prompts: expected an object like {"p1": "polyp"}')
        elif bad := [key for key, value in prompts.items() if not is_prompt(value)]:
            # The reader's words for the same value (medvlsm.PROMPT_RULE).
            report.add("bad_annotation", where, f"prompts.{bad[0]}: expected {PROMPT_RULE}")
        else:
            prompt_keys.update(prompts)
        image = _inside(root / "images", raw["img_name"], f"{where} img_name", report)
        mask = _inside(root / "masks", raw["mask_name"], f"{where} mask_name", report)
        if image is None or mask is None:
            continue
        name = next((raw[k] for k in CLASS_KEYS if isinstance(raw.get(k), str)), "")
        entries.append(_Entry(image, mask, name))
    summary.prompt_keys = sorted(prompt_keys)
    return entries


def _inside(base: Path, name: object, where: str, report: CheckReport) -> Path | None:
    try:
        return resolve_inside(base, name, where=where)
    except DatasetFormatError as error:
        kind = "path_escapes_root" if isinstance(name, str) and name.strip() else "bad_annotation"
        report.add(kind, where, str(error).removeprefix(f"{where}: "))
        return None


def _natural_entries(
    root: Path, split: str, report: CheckReport, summary: SplitSummary
) -> list[_Entry] | None:
    ann_dir, image_dir = root / "annotations" / split, root / "images" / split
    absent = [folder for folder in (ann_dir, image_dir) if not folder.is_dir()]
    for folder in absent:
        report.add("missing_annotation", folder, "split folder not found")
    if absent:
        return None
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            report.add("duplicate_entry", path, f"same name as {images[path.stem].name}")
            continue
        images[path.stem] = path
    entries: list[_Entry] = []
    for class_dir in sorted(p for p in ann_dir.iterdir() if p.is_dir()):
        for mask in sorted(class_dir.glob("*.png")):
            image = images.get(mask.stem)
            if image is None:
                report.add("missing_file", mask, f"no image {mask.stem}.* in {image_dir}")
                continue
            entries.append(_Entry(image, mask, class_dir.name))
    used = {entry.image for entry in entries}
    for image in images.values():
        if image not in used:  # no sample will ever show it: a binarize leftover or a lost mask
            report.add("image_without_class", image, f"no mask in any class folder of {ann_dir}")
    summary.prompt_keys = ["<class name>"] if entries else []
    return entries


def _check_files(
    entries: list[_Entry],
    report: CheckReport,
    summary: SplitSummary,
    shapes: dict[Path, tuple[int, int] | None],
) -> None:
    seen_pairs: set[tuple[Path, Path]] = set()
    split_images: set[Path] = set()
    classes: set[str] = set()
    for entry in entries:
        pair = (entry.image, entry.mask)
        if pair in seen_pairs:
            report.add("duplicate_entry", entry.mask, f"listed again with {entry.image.name}")
            continue
        seen_pairs.add(pair)
        summary.samples += 1
        split_images.add(entry.image)
        if entry.class_name:
            classes.add(entry.class_name)
        if entry.image not in shapes:
            shapes[entry.image] = _image_shape(entry.image, report)
        image_shape = shapes[entry.image]
        mask = _decode(entry.mask, cv2.IMREAD_GRAYSCALE, report)
        if mask is None:
            continue
        mismatch = "" if image_shape is None else mask_size_mismatch(image_shape, mask.shape)
        if mismatch:  # the rule training enforces (transforms.load_mask_of), in its words
            report.add("size_mismatch", entry.mask, mismatch)
        _check_mask_values(entry.mask, mask, report)
    summary.images = len(split_images)
    summary.classes = sorted(classes)


def _image_shape(path: Path, report: CheckReport) -> tuple[int, int] | None:
    image = _decode(path, cv2.IMREAD_COLOR, report)
    return None if image is None else (int(image.shape[0]), int(image.shape[1]))


def _decode(path: Path, flags: int, report: CheckReport) -> np.ndarray | None:
    """Read and decode one file, recording why it could not be (the same decoder as training)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.add("missing_file", path, "file not found")
        return None
    except OSError as error:
        report.add("unreadable_image", path, f"cannot read: {error.strerror or error}")
        return None
    truncated = _truncation(path, data)
    if truncated:
        report.add("unreadable_image", path, truncated)
        return None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if array is None:
        report.add("unreadable_image", path, "OpenCV cannot decode it")
        return None
    return array


def _truncation(path: Path, data: bytes) -> str:
    """Why ``data`` looks cut off ("" if it does not); OpenCV decodes such files without error."""
    is_jpeg, is_png = data.startswith(b"\xff\xd8"), data.startswith(b"\x89PNG\r\n\x1a\n")
    if is_jpeg and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    if is_png and b"IEND" not in data[-32:]:
        return "truncated PNG (no IEND chunk)"
    return ""


def _check_mask_values(path: Path, mask: np.ndarray, report: CheckReport) -> None:
    histogram = np.bincount(mask.ravel(), minlength=256)
    midtones = int(histogram[MIDTONE_LOW + 1 : MIDTONE_HIGH].sum())
    fraction = midtones / mask.size
    if fraction > MIDTONE_MAX_FRACTION:
        report.add(
            "non_binary_mask",
            path,
            f"{fraction:.1%} of pixels in ({MIDTONE_LOW}, {MIDTONE_HIGH})",
        )
    elif histogram[1 : MIDTONE_LOW + 1].any() and not histogram[MASK_THRESHOLD + 1 :].any():
        report.add(
            "low_value_mask",
            path,
            f"foreground values <= {int(np.flatnonzero(histogram).max())}: empty after "
            f"thresholding at {MASK_THRESHOLD} (saved as 0/1?)",
        )


def iter_problem_rows(report: CheckReport) -> Iterator[tuple[str, str, int, str]]:
    """(kind, severity, count, first examples) rows in a stable order, for tables."""
    for group in report.to_dict()["problems"]:
        examples = "; ".join(
            f"{e['path']}" + (f" ({e['detail']})" if e["detail"] else "") for e in group["examples"]
        )
        yield group["kind"], group["severity"], group["count"], examples
