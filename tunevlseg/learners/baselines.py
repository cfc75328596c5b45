"""Baselines without prompts: end-to-end fine-tuning and zero-shot inference.

TuneVLSeg (Adhikari et al., ACCV 2024) compares prompt tuning against fine-tuning every weight
of the model and against the pretrained model as is. Neither has prompt tensors; the flags tell
the prompted model what to unfreeze.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunevlseg.learners.base import Learner

__all__ = ["EndToEnd", "ZeroShot"]


class EndToEnd(Learner):
    """Fine-tune every weight of the model (plus the upsampler if enabled); no prompts."""

    name: ClassVar[str] = "e2e"
    trains_backbone: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}


class ZeroShot(Learner):
    """The pretrained model unchanged: nothing trains and no upsampler is added."""

    name: ClassVar[str] = "zeroshot"
    trains: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
