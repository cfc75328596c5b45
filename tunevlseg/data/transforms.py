"""Image/mask loading and the paper's transforms (albumentations).

Training uses the TuneVLSeg augmentation: affine scale 0.98-1.02, translation drawn from
(-2 %, +2 %) per axis, rotation +-5 deg, brightness/contrast +-10 %. Evaluation never augments.
Both resize bicubically to the model's input size (masks: nearest) and normalise with the model's
mean/std. The resize comes first so the augmentation runs on the small image.

Masks are binarised when they are read (``> 127``), because JPEG masks are not exactly 0/255.
Nearest-neighbour resizing and warping cannot create new values, so they stay in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

__all__ = [
    "MASK_THRESHOLD",
    "LutNormalize",
    "build_resize",
    "build_transform",
    "load_image",
    "load_mask",
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


class LutNormalize(A.ImageOnlyTransform):
    """``(image / 255 - mean) / std`` as float32, by one table lookup for uint8 RGB images.

    Gives exactly the values of ``A.Normalize(mean, std, max_pixel_value=255)`` (same float32
    table), but builds the table once and looks all channels up in one OpenCV call instead of
    one call per channel plus a merge: at 352 px that was a large share of the per-item cost
    once decoding is cached. Other inputs (float, not 3 channels) take the arithmetic path.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(p=1.0)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = np.array(self.mean, np.float32) * 255.0
        self._denominator = np.reciprocal(np.array(self.std, np.float32) * 255.0)
        table = (np.arange(256, dtype=np.float32)[:, None] - self._mean) * self._denominator
        self._table = np.ascontiguousarray(table.astype(np.float32).reshape(256, 1, len(mean)))

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == self._table.shape[2]:
            return cv2.LUT(img, self._table)
        return ((img.astype(np.float32) - self._mean) * self._denominator).astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std")


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
    image_size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    augment_p: float = 0.5,
) -> A.Compose:
    """The transform applied to ``image=`` (uint8 RGB) and ``mask=`` (uint8 {0,1}).

    Args:
        image_size: The model's input size, ``s`` or ``(height, width)``.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel std in [0, 1] units.
        train: Add the paper's augmentation; evaluation transforms are deterministic.
        augment_p: Probability of each of the two augmentations.

    Returns:
        A ``Compose`` whose output image is float32 HxWx3 (normalised) and mask uint8 HxW.
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
                interpolation=cv2.INTER_CUBIC,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=augment_p,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=augment_p),
        ]
    steps.append(LutNormalize(mean, std))
    return A.Compose(steps)
