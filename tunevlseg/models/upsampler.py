"""Learnable upsampler for CLIPSeg's coarse decoder output.

TuneVLSeg (Adhikari et al., ACCV 2024) adds a light refinement head: CLIPSeg's decoder works on
the 16x-downsampled patch grid (22x22 at 352 px) and its transposed convolutions give blocky
masks. The head upsamples the decoder's last ``reduce_dim``-channel feature map bilinearly to
the input resolution, turns it into one logit channel with a 5x5 convolution, and mixes that
with the decoder's own logits by a learnable ratio. It is trained with every learner alike (a
flag turns it off for the ablation).

Two details follow settings (docs/fidelity.md rows 25 and 26): the convolution's border padding
(``model.upsampler_padding``: zeros, or replicate as the TuneVLSeg authors' code does) and, for
a wide input such as CRIS's 512-channel decoder output, a 1x1 convolution without bias that first
narrows the map (``hidden_channels``; the authors' CRIS head uses 64).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PADDING_MODES", "LearnableUpsampler", "PaddingMode"]

PaddingMode = Literal["zeros", "replicate"]
PADDING_MODES: tuple[PaddingMode, ...] = ("zeros", "replicate")


class LearnableUpsampler(nn.Module):
    """``out = r · conv5x5(bilinear(features)) + (1 - r) · decoder_logits``, ``r`` learnable.

    The ratio starts at 0.5 so both paths get gradient from the first step; training can move
    it towards whichever path segments better (it is not clamped).

    Args:
        channels: channels of the decoder feature map (``reduce_dim``, 64 for clipseg-rd64).
        kernel_size: size of the refining convolution.
        ratio: initial residual ratio ``r``.
        padding_mode: how the refining convolution pads the border: ``"zeros"`` or
            ``"replicate"`` (the edge pixels repeated, so the border logits see no artificial
            black frame).
        hidden_channels: if given, a 1x1 convolution without bias maps ``channels`` to this
            many channels before the upsampling, at the coarse resolution, where it is cheap.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 5,
        ratio: float = 0.5,
        padding_mode: PaddingMode = "zeros",
        hidden_channels: int | None = None,
    ) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.reduce: nn.Conv2d | None = None
        if hidden_channels is not None:
            self.reduce = nn.Conv2d(channels, hidden_channels, kernel_size=1, bias=False)
            channels = hidden_channels
        self.conv = nn.Conv2d(
            channels, 1, kernel_size, padding=kernel_size // 2, padding_mode=padding_mode
        )
        self.ratio = nn.Parameter(torch.tensor(float(ratio)))

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        """Refine ``logits`` ``(B, 1, H, W)`` using ``features`` ``(B, C, h, w)`` (h = H/16)."""
        if self.reduce is not None:
            features = self.reduce(features)
        upsampled = F.interpolate(
            features, size=logits.shape[-2:], mode="bilinear", align_corners=False
        )
        refined = self.conv(upsampled)
        return self.ratio * refined + (1.0 - self.ratio) * logits
