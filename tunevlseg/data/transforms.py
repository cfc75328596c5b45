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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MASK_THRESHOLD",
    "build_resize",
    "build_transform",
    "load_image",
    "load_mask",
    "normalize_pixels",
]

MASK_THRESHOLD = 127


def load_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (grey images are expanded)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as HxW uint8 in {0, 1} (pixels ``> 127`` are foreground).

    Args:
        path: The mask file.
        shape: If given and different, the (height, width) to resize to (nearest), for data
            sets whose masks are not stored at exactly the image's size.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    if shape is not None and mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (mask > MASK_THRESHOLD).astype(np.uint8)


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
