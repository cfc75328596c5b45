"""Cityscapes and PASCAL VOC 2012, from their official layouts to our binarized natural layout.

The natural reader (:mod:`tunevlseg.data.natural`) wants one 0/255 mask per (image, class
present), ``<dst>/annotations/<split>/<class>/<image>.png``, next to
``<dst>/images/<split>/<image>.<ext>``; the prompt is the class folder name with ``_`` -> space.
The official sets store one label map per image instead:

* **Cityscapes**: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (8-bit grey, one label id
  per pixel). The 19 training classes keep their official label ids (:data:`CITYSCAPES_CLASSES`).
  Images are named ``<city>_<seq>_<frame>`` (unique across cities, the ``_leftImg8bit`` tail
  dropped).
* **PASCAL VOC 2012**: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs:
  the palette *index* is the class, 1..20) and ``ImageSets/Segmentation/<split>.txt``.

Label values that are not one of the classes are **not a class and not background of a
class**: they are 0 in every class's mask, i.e. they count as "not this class". That covers
Cityscapes' ids outside the 19 (unlabeled, ego vehicle, static, dynamic, ground, parking, rail
track, guard rail, bridge, tunnel, pole group, caravan, trailer, ...), VOC's background (0) and
VOC's void band (255) around object outlines. Our masks are strictly 0/255, with no third
"ignore" value that a loss could skip, so the choice is between "not this class" and inventing
the class; the first keeps each mask an exact subset of what the annotators labelled as that
class. The cost: a VOC object's mask stops short of its outline by the void band's width, and a
Cityscapes caravan is a negative for the prompt "car".

An image with no class present gets no masks and is not copied (the reader would never use it).
Images are hard-linked into the destination when it is on the same file system (no second copy
of 11 GB of Cityscapes), otherwise copied; either way the original file and format are kept.
Hard links share the file with the source, so editing one in place edits the other.

**Resumable.** Every file is written to a hidden temporary name (which neither the reader nor
``tvls-data check`` picks up) and renamed into place, so a killed run never leaves a half file
under a real name. When all of an image's files are in place, one JSON line recording them is
appended to ``<dst>/.tvls-binarize.jsonl`` (only the parent process writes it). A later run
skips an image whose line is there, whose sources have the same size and modification time, and
whose recorded files all exist; anything else (no line, a file deleted, a changed source) is
done again from scratch, which also deletes that image's masks of classes no longer present.
Two runs into the same destination at once are not coordinated.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "CITYSCAPES",
    "CITYSCAPES_CLASSES",
    "DEFAULT_SPLITS",
    "JOURNAL",
    "SCHEMES",
    "VOC",
    "VOC_CLASSES",
    "BinarizeError",
    "BinarizePlan",
    "BinarizeReport",
    "ImageJob",
    "LabelScheme",
    "binarize_image",
    "plan_binarize",
    "run_plan",
]

JOURNAL = ".tvls-binarize.jsonl"
DEFAULT_SPLITS = ("train", "val")

#: Cityscapes' official label ids of its 19 training (evaluation) classes -> class folder.
CITYSCAPES_CLASSES: dict[int, str] = {
    7: "road",
    8: "sidewalk",
    11: "building",
    12: "wall",
    13: "fence",
    17: "pole",
    19: "traffic_light",
    20: "traffic_sign",
    21: "vegetation",
    22: "terrain",
    23: "sky",
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}

_VOC_OFFICIAL = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
# The paper's prompts are readable names; the folder name is the prompt with "_" for spaces.
_VOC_READABLE = {
    "diningtable": "dining_table",
    "pottedplant": "potted_plant",
    "tvmonitor": "tv_monitor",
}
#: VOC palette index (1..20) -> class folder; 0 (background) and 255 (void) are not classes.
VOC_CLASSES: dict[int, str] = {
    i: _VOC_READABLE.get(name, name) for i, name in enumerate(_VOC_OFFICIAL, start=1)
}


@dataclass(frozen=True)
class LabelScheme:
    """How one data set's label maps become class masks.

    ``version`` is stored with every finished image: changing a mapping must change it, so that
    a re-run redoes images binarized under the old one instead of skipping them.
    """

    name: str
    version: str
    classes: Mapping[int, str]
    label_mode: str  # the PIL mode the label PNGs must have
    label_kind: str  # how an error message calls a label file


CITYSCAPES = LabelScheme("cityscapes", "cityscapes-19/1", CITYSCAPES_CLASSES, "L", "labelIds PNG")
VOC = LabelScheme("voc", "voc2012-20/1", VOC_CLASSES, "P", "palette PNG")
SCHEMES: dict[str, LabelScheme] = {s.name: s for s in (CITYSCAPES, VOC)}


class BinarizeError(Exception):
    """A source file or folder is missing or unusable; the message names it."""


@dataclass(frozen=True)
class ImageJob:
    """One source image and its label map; ``name`` is the image's stem in the destination."""

    split: str
    name: str
    image: Path
    label: Path

    @property
    def image_file(self) -> str:
        return self.name + self.image.suffix.lower()


@dataclass
class BinarizePlan:
    """What a run will do: every listed image, and which of them are still to be written."""

    scheme: LabelScheme
    src: Path
    dst: Path
    splits: tuple[str, ...]
    jobs: list[ImageJob]
    todo: list[ImageJob]
    records: dict[tuple[str, str], dict[str, Any]]  # (split, name) -> record, done images only

    @property
    def n_skipped(self) -> int:
        return len(self.jobs) - len(self.todo)


@dataclass
class SplitCounts:
    """What the destination holds for one split after a run."""

    split: str
    listed: int = 0
    images: int = 0  # images with at least one class (copied)
    without_class: int = 0
    masks: Counter[str] = field(default_factory=Counter)

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        return {
            "split": self.split,
            "listed": self.listed,
            "images": self.images,
            "without_class": self.without_class,
            "masks": {c: self.masks.get(c, 0) for c in classes},
        }


@dataclass
class BinarizeReport:
    """The outcome of :func:`run_plan`; ``failures`` holds one message per failed image."""

    dataset: str
    dst: Path
    written: int
    skipped: int
    splits: list[SplitCounts]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "dst": str(self.dst),
            "ok": self.ok,
            "written": self.written,
            "skipped": self.skipped,
            "splits": [s.to_dict(classes) for s in self.splits],
            "failures": self.failures,
        }


# ---------------------------------------------------------------------------- listing


def list_cityscapes(src: Path, splits: Sequence[str]) -> list[ImageJob]:
    """Every ``leftImg8bit`` image of ``splits`` with its ``gtFine`` labelIds file.

    Raises:
        BinarizeError: A split folder is missing, or images lack their label file (all of
            them counted, the first few named).
    """
    jobs: list[ImageJob] = []
    missing: list[str] = []
    for split in splits:
        image_dir = src / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise BinarizeError(f"{image_dir}: Cityscapes split folder not found")
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in sorted(city.glob("*_leftImg8bit.png")):
                stem = image.name.removesuffix("_leftImg8bit.png")
                label = src / "gtFine" / split / city.name / f"{stem}_gtFine_labelIds.png"
                if not label.is_file():
                    missing.append(f"{label} (for {image})")
                    continue
                jobs.append(ImageJob(split, stem, image, label))
    _raise_missing(missing, "label file")
    return jobs


def list_voc(src: Path, splits: Sequence[str]) -> list[ImageJob]:
    """Every id of ``ImageSets/Segmentation/<split>.txt`` with its JPEG and label PNG.

    Raises:
        BinarizeError: A list file is missing or names an id that is not a plain file name, or
            images / label files are missing (all counted, the first few named).
    """
    jobs: list[ImageJob] = []
    missing: list[str] = []
    for split in splits:
        listing = src / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise BinarizeError(f"{listing}: VOC split list not found")
        seen: set[str] = set()
        for line_no, line in enumerate(listing.read_text().splitlines(), start=1):
            name = line.strip()
            if not name or name in seen:
                continue
            if "/" in name or "\\" in name or name in (".", ".."):
                raise BinarizeError(f"{listing}:{line_no}: {name!r} is not an image id")
            seen.add(name)
            image = src / "JPEGImages" / f"{name}.jpg"
            label = src / "SegmentationClass" / f"{name}.png"
            absent = [p for p in (image, label) if not p.is_file()]
            if absent:
                missing.extend(f"{p} (listed in {listing}:{line_no})" for p in absent)
                continue
            jobs.append(ImageJob(split, name, image, label))
    _raise_missing(missing, "file")
    return jobs


def _raise_missing(missing: list[str], what: str, shown: int = 5) -> None:
    if not missing:
        return
    more = f"\n  ... and {len(missing) - shown} more" if len(missing) > shown else ""
    lines = "\n  ".join(missing[:shown])
    raise BinarizeError(f"{len(missing)} {what}(s) missing:\n  {lines}{more}")


_LISTERS: dict[str, Callable[[Path, Sequence[str]], list[ImageJob]]] = {
    "cityscapes": list_cityscapes,
    "voc": list_voc,
}


# ---------------------------------------------------------------------------- planning


def plan_binarize(
    dataset: str, src: Path, dst: Path, splits: Sequence[str] = DEFAULT_SPLITS
) -> BinarizePlan:
    """List the source images and find the ones a previous run already finished.

    Nothing is written. Every missing source file is reported before any work starts, so a
    broken copy of the data set fails in seconds rather than half-way.

    Raises:
        ValueError: Unknown ``dataset``.
        BinarizeError: Missing source folders or files (see :func:`list_cityscapes`,
            :func:`list_voc`).
    """
    if dataset not in SCHEMES:
        raise ValueError(f"unknown data set {dataset!r}; expected one of {', '.join(SCHEMES)}")
    scheme = SCHEMES[dataset]
    src, dst = Path(src), Path(dst)
    jobs = _LISTERS[dataset](src, splits)
    journal = _read_journal(dst / JOURNAL, scheme)
    records: dict[tuple[str, str], dict[str, Any]] = {}
    todo: list[ImageJob] = []
    for job in jobs:
        record = journal.get((job.split, job.name))
        if record is not None and _is_done(job, record, dst):
            records[(job.split, job.name)] = record
        else:
            todo.append(job)
    return BinarizePlan(scheme, src, dst, tuple(splits), jobs, todo, records)


def _read_journal(path: Path, scheme: LabelScheme) -> dict[tuple[str, str], dict[str, Any]]:
    """Finished records of this scheme, the last line per image winning.

    A line cut short by a killed run does not parse and is ignored: its image is redone.
    """
    records: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("scheme") == scheme.version:
            records[(record["split"], record["name"])] = record
    return records


def _source_stamp(job: ImageJob) -> list[int]:
    image, label = job.image.stat(), job.label.stat()
    return [image.st_size, image.st_mtime_ns, label.st_size, label.st_mtime_ns]


def _outputs(
    dst: Path, split: str, name: str, image_file: str, classes: Sequence[str]
) -> list[Path]:
    if not classes:
        return []
    files = [dst / "images" / split / image_file]
    files += [dst / "annotations" / split / c / f"{name}.png" for c in classes]
    return files


def _is_done(job: ImageJob, record: dict[str, Any], dst: Path) -> bool:
    if record.get("source") != _source_stamp(job):
        return False
    files = _outputs(dst, job.split, job.name, record["image_file"], record["classes"])
    return all(f.is_file() for f in files)


# ---------------------------------------------------------------------------- one image


def binarize_image(scheme_name: str, job: ImageJob, dst: Path) -> dict[str, Any]:
    """Write one image's class masks and its image; return its journal record.

    Runs in a worker process (hence the scheme by name: a plain, picklable argument).

    Raises:
        BinarizeError: The label PNG cannot be read, has the wrong mode, or differs in size
            from its image (the message names the files).
    """
    scheme = SCHEMES[scheme_name]
    source = _source_stamp(job)  # before reading: a file changed meanwhile is redone next time
    labels = _read_label(job, scheme)
    counts = np.bincount(labels.ravel(), minlength=256)
    present = [(value, name) for value, name in scheme.classes.items() if counts[value] > 0]
    classes = [name for _, name in present]
    ann_dir = dst / "annotations" / job.split
    image_dir = dst / "images" / job.split
    if present:
        image_dir.mkdir(parents=True, exist_ok=True)
        _place_image(job.image, image_dir / job.image_file)
    else:  # a redo after the source changed: an image nothing refers to any more
        (image_dir / job.image_file).unlink(missing_ok=True)
    for value, name in present:
        mask = np.where(labels == value, np.uint8(255), np.uint8(0))
        ok, encoded = cv2.imencode(".png", mask)
        if not ok:
            raise BinarizeError(f"could not encode the {name} mask of {job.label}")
        (ann_dir / name).mkdir(parents=True, exist_ok=True)
        _write_atomic(ann_dir / name / f"{job.name}.png", encoded.tobytes())
    for name in set(scheme.classes.values()) - set(classes):
        # A redo after the source changed: masks of classes no longer present must go.
        (ann_dir / name / f"{job.name}.png").unlink(missing_ok=True)
        _tmp(ann_dir / name / f"{job.name}.png").unlink(missing_ok=True)
    return {
        "scheme": scheme.version,
        "split": job.split,
        "name": job.name,
        "image_file": job.image_file,
        "classes": classes,
        "source": source,
    }


def _read_label(job: ImageJob, scheme: LabelScheme) -> np.ndarray:
    try:
        with Image.open(job.label) as label:
            if label.mode != scheme.label_mode:
                raise BinarizeError(
                    f"{job.label}: expected a {scheme.label_kind} (PIL mode "
                    f"{scheme.label_mode}), got mode {label.mode}"
                )
            array = np.asarray(label, dtype=np.uint8)  # palette indices for mode P
        with Image.open(job.image) as image:
            width, height = image.size  # the header only
    except BinarizeError:
        raise
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise BinarizeError(f"{job.label} or {job.image}: cannot be read: {error}") from error
    if array.shape != (height, width):
        raise BinarizeError(
            f"{job.label}: label map is {array.shape[1]}x{array.shape[0]} but its image "
            f"{job.image} is {width}x{height}"
        )
    return array


def _tmp(path: Path) -> Path:
    """The temporary name of ``path``: hidden and not ending in an image suffix, so neither the
    reader nor ``tvls-data check`` ever takes it for data; fixed, so a killed run's leftover is
    simply overwritten by the redo."""
    return path.with_name(f".{path.name}.tmp")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _place_image(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), or copy it; atomically either way."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # linked by an earlier run (renaming a link onto its own file would do nothing)
    tmp = _tmp(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system (EXDEV), or links not allowed there
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------- running


def run_plan(
    plan: BinarizePlan, *, jobs: int = 1, advance: Callable[[], None] | None = None
) -> BinarizeReport:
    """Binarize ``plan.todo`` with ``jobs`` processes, recording each finished image.

    A failing image does not stop the others (their work is kept and recorded); its message
    lands in ``report.failures``.

    Args:
        plan: From :func:`plan_binarize`.
        jobs: Worker processes; 1 runs everything in this process.
        advance: Called once per image finished or failed (a progress bar).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    plan.dst.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    written = 0
    with _Journal(plan.dst / JOURNAL) as journal:

        def finish(job: ImageJob, result: Callable[[], dict[str, Any]]) -> None:
            nonlocal written
            try:
                record = result()
            except BinarizeError as error:
                failures.append(str(error))
            except Exception as error:  # noqa: BLE001 - e.g. disk full: name the image, keep going
                failures.append(f"{job.image}: {type(error).__name__}: {error}")
            else:
                journal.append(record)
                plan.records[(job.split, job.name)] = record
                written += 1
            if advance is not None:
                advance()

        if jobs == 1 or len(plan.todo) <= 1:
            for job in plan.todo:
                finish(job, partial(binarize_image, plan.scheme.name, job, plan.dst))
        else:
            _run_pool(plan, jobs, finish)
    _remove_empty_class_folders(plan)
    return BinarizeReport(
        dataset=plan.scheme.name,
        dst=plan.dst,
        written=written,
        skipped=plan.n_skipped,
        splits=_counts(plan),
        failures=failures,
    )


def _run_pool(
    plan: BinarizePlan,
    jobs: int,
    finish: Callable[[ImageJob, Callable[[], dict[str, Any]]], None],
) -> None:
    # spawn, not fork: the parent runs rich's refresh thread, and forking a threaded process
    # can copy a held lock into the child.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures: dict[Future[dict[str, Any]], ImageJob] = {
            pool.submit(binarize_image, plan.scheme.name, job, plan.dst): job for job in plan.todo
        }
        try:
            # In submission order, so the journal and the failure list are deterministic.
            for future, job in futures.items():
                finish(job, future.result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


class _Journal:
    """Append-only record of finished images; one line per image, flushed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Journal:
        self.file = self.path.open("a+b")
        self.file.seek(0, os.SEEK_END)
        if self.file.tell() > 0:
            self.file.seek(-1, os.SEEK_END)
            if self.file.read(1) != b"\n":
                self.file.write(b"\n")  # end a line a killed run cut short
        return self

    def append(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, sort_keys=True).encode() + b"\n")
        self.file.flush()

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _remove_empty_class_folders(plan: BinarizePlan) -> None:
    """A class folder emptied by a redo would show up as a class without masks."""
    for split in plan.splits:
        for name in set(plan.scheme.classes.values()):
            folder = plan.dst / "annotations" / split / name
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _counts(plan: BinarizePlan) -> list[SplitCounts]:
    counts = {split: SplitCounts(split) for split in plan.splits}
    for job in plan.jobs:
        split = counts[job.split]
        split.listed += 1
        record = plan.records.get((job.split, job.name))
        if record is None:
            continue  # failed in this run
        if record["classes"]:
            split.images += 1
            split.masks.update(record["classes"])
        else:
            split.without_class += 1
    return list(counts.values())
