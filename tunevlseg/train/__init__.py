"""Training: loss, metrics, the LightningModule and a resumable ``fit``.

Names are imported lazily so that reading settings does not pull in torch or lightning. The
function ``fit`` is not re-exported here: its module has the same name, and whichever is
imported first would shadow the other. Use ``from tunevlseg.train.fit import fit``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunevlseg.train.fit import FitResult
    from tunevlseg.train.loss import dice_bce_loss, soft_dice_loss
    from tunevlseg.train.metrics import SegmentationScores, per_image_scores
    from tunevlseg.train.module import SegmentationModule
    from tunevlseg.train.paths import RunPaths
    from tunevlseg.train.settings import FitSettings

_EXPORTS = {
    "FitResult": "fit",
    "dice_bce_loss": "loss",
    "soft_dice_loss": "loss",
    "SegmentationScores": "metrics",
    "per_image_scores": "metrics",
    "SegmentationModule": "module",
    "RunPaths": "paths",
    "FitSettings": "settings",
}

__all__ = [
    "FitResult",
    "FitSettings",
    "RunPaths",
    "SegmentationModule",
    "SegmentationScores",
    "dice_bce_loss",
    "per_image_scores",
    "soft_dice_loss",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
