"""Image/mask loading and the paper's transforms (albumentations).

Training uses the TuneVLSeg augmentation: affine scale 0.98-1.02, translation drawn from
(-2 %, +2 %) per axis, rotation +-5 deg, brightness/contrast +-10 %. Evaluation never augments.
How often each transform runs and what the warp brings in at the border are an
:class:`Augmentation` (the experiment file's ``data.augmentation``); its defaults are the
package's behaviour before these were settings (p = 0.5 each, zeros outside the image).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from tunevlseg.data.sample import DatasetFormatError

__all__ = [
    "BORDER_MODES",
    "MASK_THRESHOLD",
    "Augmentation",
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

BorderMode = Literal["constant", "replicate"]
BORDER_MODES: dict[str, int] = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
}
"""The affine warp's border modes by name: zeros (image and mask), or the nearest edge pixel."""


@dataclass(frozen=True)
class Augmentation:
    """How the training augmentation runs (evaluation never augments).

    Attributes:
        affine_p: Probability of the scale/translate/rotate warp.
        color_p: Probability of the brightness/contrast change.
        border_mode: What the warp fills in where it shows pixels from outside the image:
            ``"constant"`` zeros (the mask is background there), ``"replicate"`` the nearest
            edge pixel of the image and of the mask.
    """

    affine_p: float = 0.5
    color_p: float = 0.5
    border_mode: BorderMode = "constant"

    def __post_init__(self) -> None:
        # Checked here too: the data module is also built from code, not only from a file.
        for name in ("affine_p", "color_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.border_mode not in BORDER_MODES:
            raise ValueError(
                f"border_mode must be one of {', '.join(BORDER_MODES)}, got {self.border_mode!r}"
            )


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
    image_size: int | tuple[int, int],
    *,
    train: bool,
    augment_p: float | None = None,
    augmentation: Augmentation | None = None,
) -> A.Compose:
    """The transform applied to ``image=`` (uint8 RGB) and ``mask=`` (uint8 {0,1}).

    Args:
        image_size: The model's input size, ``s`` or ``(height, width)``.
        train: Add the paper's augmentation; evaluation transforms are deterministic.
        augment_p: Shorthand for the same probability of both transforms (with the default
            border); not together with ``augmentation``.
        augmentation: Probabilities and border mode; ``None``: :class:`Augmentation`'s
            defaults. A transform with probability 0 is left out, so probabilities of 0 make
            the training transform exactly the evaluation one.

    Returns:
        A ``Compose`` whose output image is uint8 HxWx3 (normalise the batch with
        :func:`normalize_pixels`) and mask uint8 HxW.
    """
    if augment_p is not None:
        if augmentation is not None:
            raise ValueError("give augment_p or augmentation, not both")
        augmentation = Augmentation(affine_p=augment_p, color_p=augment_p)
    augmentation = augmentation or Augmentation()
    # On inputs already at the model's size (the cache's arrays) the resize is an exact copy.
    steps: list[A.BasicTransform] = [build_resize(image_size)]
    if train and augmentation.affine_p > 0:
        steps.append(
            A.Affine(
                scale=(0.98, 1.02),
                # A tuple is a range to draw from, per axis; a bare number would be a fixed shift.
                translate_percent={"x": (-0.02, 0.02), "y": (-0.02, 0.02)},
                rotate=(-5.0, 5.0),
                interpolation=cv2.INTER_LINEAR,  # see the module docstring
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=BORDER_MODES[augmentation.border_mode],
                fill=0,  # used by "constant" only
                fill_mask=0,
                p=augmentation.affine_p,
            )
        )
    if train and augmentation.color_p > 0:
        steps.append(
            A.RandomBrightnessContrast(
                brightness_limit=0.1, contrast_limit=0.1, p=augmentation.color_p
            )
        )
    return A.Compose(steps)
