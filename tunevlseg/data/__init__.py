"""Data: readers for the on-disk layouts, transforms, synthetic sets and the DataModule.

Names are imported lazily so that reading annotations does not pull in torch or lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunevlseg.data.cache import CachedArrays, ensure_cache
    from tunevlseg.data.check import CheckReport, check_dataset
    from tunevlseg.data.datamodule import SegmentationDataModule, read_split
    from tunevlseg.data.medvlsm import read_medvlsm
    from tunevlseg.data.natural import read_natural
    from tunevlseg.data.sample import DatasetFormatError, Sample
    from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural
    from tunevlseg.data.transforms import build_transform, load_image, load_mask

_EXPORTS = {
    "CachedArrays": "cache",
    "ensure_cache": "cache",
    "CheckReport": "check",
    "check_dataset": "check",
    "DatasetFormatError": "sample",
    "Sample": "sample",
    "read_medvlsm": "medvlsm",
    "read_natural": "natural",
    "build_transform": "transforms",
    "load_image": "transforms",
    "load_mask": "transforms",
    "write_synthetic_medvlsm": "synthetic",
    "write_synthetic_natural": "synthetic",
    "SegmentationDataModule": "datamodule",
    "read_split": "datamodule",
}

__all__ = [
    "CachedArrays",
    "CheckReport",
    "DatasetFormatError",
    "Sample",
    "SegmentationDataModule",
    "build_transform",
    "check_dataset",
    "ensure_cache",
    "load_image",
    "load_mask",
    "read_medvlsm",
    "read_natural",
    "read_split",
    "write_synthetic_medvlsm",
    "write_synthetic_natural",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
