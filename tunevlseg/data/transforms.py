"""Image/mask loading and the paper's transforms (albumentations).

Training uses the TuneVLSeg augmentation: affine scale 0.98-1.02, translation drawn from
(-2 %, +2 %) per axis, rotation +-5 deg, brightness/contrast +-10 %. Evaluation never augments.
Both resize bicubically to the model's input size (masks: nearest). The resize comes first so the
augmentation runs on the small image; the small warp of the augmentation interpolates bilinearly
(albumentations' default; bicubic cost 45 % of a cached item for no visible difference at +-2 %).

Images leave the loader as uint8: :func:`normalize_pixels` (the model's mean/std) runs on the
batch after it reaches the device (``SegmentationDataModule.on_after_batch_transfer``), so the
loader neither writes nor collates float32 images and the host-to-GPU copy is a quarter the size.

Masks are binarised when they are read (``> 127``), because JPEG masks are not exactly 0/255.
Nearest-neighbour resizing and warping cannot create new values, so they stay in {0, 1}.

A mask must have its image's height and width (:func:`mask_size_mismatch`, the one rule that
``tvls-data check`` reports and training enforces): a mask of another size is a data error (a
mask of another image, a crop, a thumbnail), and stretching it to fit would train on wrong
labels without a word. Training stops with :class:`MaskSizeError` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from tunevlseg.data.sample import DatasetFormatError

__all__ = [
    "MASK_THRESHOLD",
    "MaskSizeError",
    "build_resize",
    "build_transform",
    "load_image",
    "load_mask",
    "load_mask_of",
    "mask_size_mismatch",
    "normalize_pixels",
]

MASK_THRESHOLD = 127


def load_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (grey images are expanded)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class MaskSizeError(DatasetFormatError):
    """A mask whose height and width differ from its image's (see :func:`mask_size_mismatch`)."""


def mask_size_mismatch(image_shape: Sequence[int], mask_shape: Sequence[int]) -> str:
    """The rule that a mask has its image's size: ``""`` when it holds, else what differs.

    The one definition: ``tvls-data check`` reports the returned text (``size_mismatch``) and
    training raises it (:func:`load_mask_of`), so both always agree on which pairs are wrong
    and describe them in the same words.

    Args:
        image_shape: The decoded image's shape (height, width[, channels]).
        mask_shape: The decoded mask's shape (height, width).

    Returns:
        ``""``, or e.g. ``"mask 40x30, image 48x48"`` (height x width).
    """
    (image_h, image_w), (mask_h, mask_w) = image_shape[:2], mask_shape[:2]
    if (image_h, image_w) == (mask_h, mask_w):
        return ""
    return f"mask {mask_h}x{mask_w}, image {image_h}x{image_w}"


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return mask


def _binarize(mask: np.ndarray) -> np.ndarray:
    return (mask > MASK_THRESHOLD).astype(np.uint8)


def load_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as HxW uint8 in {0, 1} (pixels ``> 127`` are foreground).

    Training does not use ``shape``: it reads masks with :func:`load_mask_of`, which refuses a
    mask of another size instead of stretching it.

    Args:
        path: The mask file.
        shape: If given and different, the (height, width) to resize to (nearest).
    """
    mask = _read_mask(path)
    if shape is not None and mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return _binarize(mask)


def load_mask_of(
    path: Path, image: Path, image_shape: Sequence[int], *, data_root: Path | None = None
) -> np.ndarray:
    """Read the mask of ``image`` as HxW uint8 in {0, 1}, refusing one of another size.

    Args:
        path: The mask file.
        image: Its image file (for the message).
        image_shape: The decoded image's shape.
        data_root: The data set's folder, so the message can give the exact command that
            lists every such pair (training stops at the first).

    Raises:
        MaskSizeError: The sizes differ (:func:`mask_size_mismatch`); the message names both
            files and both sizes and says to run ``tvls-data check``.
        FileNotFoundError: The mask cannot be read.
    """
    mask = _read_mask(path)
    mismatch = mask_size_mismatch(image_shape, mask.shape)
    if mismatch:
        root = str(data_root) if data_root is not None else "<data set root>"
        raise MaskSizeError(
            f"mask {path} does not have the size of its image {image} ({mismatch}, height x "
            f"width); every mask must have its image's size. Run `tvls-data check {root}` to "
            "list every such pair, then fix or drop them"
        )
    return _binarize(mask)


def normalize_pixels(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images (B, 3, H, W) -> float32 ``(pixels / 255 - mean) / std``, on their device.

    The memory layout (e.g. ``torch.channels_last``) is kept.
    """
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, -1, 1, 1).to(pixels.device)
    shift = (torch.tensor(mean, dtype=torch.float64) / std_t).to(torch.float32).view(1, -1, 1, 1)
    return pixels.to(torch.float32).mul_(scale).sub_(shift.to(pixels.device))


def build_resize(image_size: int | tuple[int, int]) -> A.Resize:
    """The resize to the model's input size: bicubic for images, nearest for masks.

    One definition shared by :func:`build_transform` and the preprocessing cache
    (:mod:`tunevlseg.data.cache`), so that cached and uncached inputs are bit-identical.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return A.Resize(
        height, width, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST
    )


def build_transform(
    image_size: int | tuple[int, int], *, train: bool, augment_p: float = 0.5
) -> A.Compose:
    """The transform applied to ``image=`` (uint8 RGB) and ``mask=`` (uint8 {0,1}).

    Args:
        image_size: The model's input size, ``s`` or ``(height, width)``.
        train: Add the paper's augmentation; evaluation transforms are deterministic.
        augment_p: Probability of each of the two augmentations.

    Returns:
        A ``Compose`` whose output image is uint8 HxWx3 (normalise the batch with
        :func:`normalize_pixels`) and mask uint8 HxW.
    """
    # On inputs already at the model's size (the cache's arrays) the resize is an exact copy.
    steps: list[A.BasicTransform] = [build_resize(image_size)]
    if train:
        steps += [
            A.Affine(
                scale=(0.98, 1.02),
                # A tuple is a range to draw from, per axis; a bare number would be a fixed shift.
                translate_percent={"x": (-0.02, 0.02), "y": (-0.02, 0.02)},
                rotate=(-5.0, 5.0),
                interpolation=cv2.INTER_LINEAR,  # see the module docstring
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=augment_p,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=augment_p),
        ]
    return A.Compose(steps)
