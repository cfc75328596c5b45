"""A local-disk cache of decoded, resized images and masks, so epochs never decode JPEG/PNG again.

Decoding a full-size JPEG and PNG and resizing them costs far more than the augmentation that
follows on the small image, and it is the same work every epoch. The cache does it once per
(sample list, model input size) and stores the result as plain uint8 ``.npy`` arrays that every
process (DataLoader workers, DDP ranks) maps read-only with ``np.load(mmap_mode="r")``: the page
cache is shared and nothing is copied into each worker.

Layout of one entry, a folder ``<cache_dir>/<label>-<H>x<W>-<digest>/``::

    images.npy    U x H x W x 3 uint8 RGB, one row per distinct image file
    masks.npy     N x H x W uint8 in {0, 1}, one row per sample
    index.npy     N int64, the row of images.npy each sample uses
    meta.json     what the entry was built from (for people; the digest is what counts)

Multi-class sets list the same image once per class, so images are stored once per file.

The digest covers a format version, the OpenCV and albumentations versions (the resize they
implement defines the bytes), the input size, and every sample's absolute image and mask path
with the files' sizes and modification times. A changed, added or removed file therefore gives
a new entry; an old entry is never reused for new data (stale entries are not deleted: remove
the folder when disk space matters).

Writers build an entry in a temporary sibling folder and rename it into place, so a reader
never sees half an entry, and concurrent writers (several ranks or array tasks) are safe: the
first rename wins and the others discard their copy. Concurrent writers do duplicate the work.

Where to put it: the cache is read at random offsets every step, so it belongs on fast local
disk. On a cluster use node-local scratch (``$TMPDIR``, ``/scratch/$USER``); it is rebuilt once
per node and job. A shared scratch file system works too (built once, read by every node),
but a home or NFS directory may be slower than decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from tunevlseg.data.sample import Sample
from tunevlseg.data.transforms import build_resize, load_image, load_mask_of

__all__ = ["CACHE_VERSION", "CachedArrays", "cache_key", "ensure_cache"]

CACHE_VERSION = 2  # 2: a mask of another size than its image is refused, no longer stretched
_FILES = ("images.npy", "masks.npy", "index.npy")


def _size_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def cache_key(samples: Sequence[Sample], image_size: int | tuple[int, int]) -> str:
    """The hex digest that names the cache entry of ``samples`` at ``image_size``.

    Stats every image and mask once (two ``stat`` calls per sample), which is cheap next to
    decoding them and is what makes a changed data set rebuild instead of serving old pixels.

    Raises:
        FileNotFoundError: A file of a sample does not exist (the message names it).
    """
    digest = hashlib.sha256()
    height, width = _size_hw(image_size)
    header = {
        "version": CACHE_VERSION,
        "opencv": cv2.__version__,
        "albumentations": A.__version__,
        "size": [height, width],
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for sample in samples:
        for path in (sample.image, sample.mask):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"cannot cache missing file {path}") from None
            digest.update(f"\0{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@dataclass
class CachedArrays:
    """The arrays of one cache entry, opened lazily and read-only in each process.

    Instances pickle as their folder only (the maps are reopened on first use), so sending one
    to a spawned DataLoader worker does not copy the data.

    Attributes:
        folder: The entry's folder.
    """

    folder: Path

    def __post_init__(self) -> None:
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.folder = Path(state["folder"])  # type: ignore[arg-type]
        self._arrays = None

    def _open(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            images, masks, index = (
                np.load(self.folder / name, mmap_mode="r", allow_pickle=False) for name in _FILES
            )
            self._arrays = (images, masks, np.asarray(index))
        return self._arrays

    def __len__(self) -> int:
        return len(self._open()[1])

    def __getitem__(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Writable copies of sample ``item``'s resized image (HxWx3) and mask (HxW, {0,1})."""
        images, masks, index = self._open()
        return np.array(images[index[item]]), np.array(masks[item])


def ensure_cache(
    samples: Sequence[Sample],
    image_size: int | tuple[int, int],
    cache_dir: Path,
    *,
    label: str = "samples",
    data_root: Path | None = None,
) -> CachedArrays:
    """Return the cache entry of ``samples``, building it first if it does not exist.

    Building streams: one image and one mask are decoded at a time and written straight into
    memory-mapped files, so memory use does not grow with the data set.

    Args:
        samples: The samples, in dataset order (row ``i`` is ``samples[i]``).
        image_size: The model's input size, ``s`` or ``(height, width)``.
        cache_dir: The folder holding entries (created if needed); see the module docstring on
            where it should live.
        label: A readable prefix of the entry's folder name, e.g. ``"kvasir-train"``.
        data_root: The data set's folder, named in the error about a mask of another size.

    Raises:
        FileNotFoundError: A sample's file is missing or cannot be decoded.
        MaskSizeError: A mask's size differs from its image's (exactly as without the cache).
    """
    if not samples:
        raise ValueError("cannot cache an empty sample list")
    height, width = _size_hw(image_size)
    safe_label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "samples"
    digest = cache_key(samples, (height, width))
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{safe_label}-{height}x{width}-{digest[:20]}"
    if not _complete(folder):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _build(samples, (height, width), tmp, digest=digest, label=label, data_root=data_root)
            try:
                tmp.rename(folder)
            except OSError:
                # Another writer renamed its (identical) entry first; keep theirs.
                if not _complete(folder):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return CachedArrays(folder)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*_FILES, "meta.json"))


def _build(
    samples: Sequence[Sample],
    size: tuple[int, int],
    tmp: Path,
    *,
    digest: str,
    label: str,
    data_root: Path | None,
) -> None:
    """Decode, resize and write every sample into ``tmp`` (a fresh folder)."""
    tmp.mkdir()
    rows: dict[str, tuple[int, tuple[int, int]]] = {}  # image path -> (row, original shape)
    for sample in samples:
        rows.setdefault(os.path.abspath(sample.image), (len(rows), (0, 0)))
    height, width = size
    open_memmap = np.lib.format.open_memmap
    images = open_memmap(tmp / "images.npy", "w+", np.uint8, (len(rows), height, width, 3))
    masks = open_memmap(tmp / "masks.npy", "w+", np.uint8, (len(samples), height, width))
    index = np.empty(len(samples), np.int64)
    resize = build_resize(size)
    done: dict[str, tuple[int, int]] = {}
    for i, sample in enumerate(samples):
        key = os.path.abspath(sample.image)
        row = rows[key][0]
        shape = done.get(key)
        if shape is None:
            # Exactly the uncached path: decode, then the transform's own resize step.
            image = load_image(sample.image)
            shape = image.shape[:2]
            images[row] = resize.apply(image)
            done[key] = shape
        mask = load_mask_of(sample.mask, sample.image, shape, data_root=data_root)
        masks[i] = resize.apply_to_mask(mask)
        index[i] = row
    images.flush()
    masks.flush()
    del images, masks
    np.save(tmp / "index.npy", index)
    meta = {
        "version": CACHE_VERSION,
        "label": label,
        "digest": digest,
        "size": [height, width],
        "n_samples": len(samples),
        "n_images": len(rows),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
