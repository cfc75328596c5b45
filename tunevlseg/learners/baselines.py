"""Baselines without prompts: end-to-end and decoder fine-tuning, and zero-shot inference.

TuneVLSeg (Adhikari et al., ACCV 2024) compares prompt tuning against fine-tuning the model
("E2E") and against the pretrained model as is. None of them has prompt tensors; the flags tell
the prompted model what to unfreeze.

The paper's "E2E" is two different things in the authors' code (``docs/fidelity.md`` rows 2
and 3): on CRIS every weight trains, which :class:`EndToEnd` reproduces; on CLIPSeg, HF's
forward runs both CLIP encoders under ``no_grad``, so only the decoder learned, which
:class:`DecoderOnly` reproduces. Both exist so that either reading can be run on either model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunevlseg.learners.base import Learner

__all__ = ["DecoderOnly", "EndToEnd", "ZeroShot"]


class EndToEnd(Learner):
    """Fine-tune every weight of the model (plus the upsampler if enabled); no prompts."""

    name: ClassVar[str] = "e2e"
    trains_backbone: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}


class DecoderOnly(Learner):
    """Fine-tune what follows the encoders (plus the upsampler if enabled); no prompts.

    ``trains_decoder`` tells the prompted model to unfreeze its decoding part, which each model
    names (CLIPSeg: the decoder's reduces, FiLM, transformer layers and transposed
    convolutions; CRIS: the neck, the decoder and the projector), while the image and text
    encoders stay frozen and in eval mode. Neither encoder receives prompts, so it works on
    every model (modality ``"none"``). This is what the authors' CLIPSeg "E2E" trained.
    """

    name: ClassVar[str] = "decoder"
    trains_decoder: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}


class ZeroShot(Learner):
    """The pretrained model unchanged: nothing trains and no upsampler is added."""

    name: ClassVar[str] = "zeroshot"
    trains: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
