"""Learnable upsampler for CLIPSeg's coarse decoder output.

TuneVLSeg (Adhikari et al., ACCV 2024) adds a light refinement head: CLIPSeg's decoder works on
the 16x-downsampled patch grid (22x22 at 352 px) and its transposed convolutions give blocky
masks. The head upsamples the decoder's last ``reduce_dim``-channel feature map bilinearly to
the input resolution, turns it into one logit channel with a 5x5 convolution, and mixes that
with the decoder's own logits by a learnable ratio. It is trained with every learner alike (a
flag turns it off for the ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LearnableUpsampler"]


class LearnableUpsampler(nn.Module):
    """``out = r · conv5x5(bilinear(features)) + (1 - r) · decoder_logits``, ``r`` learnable.

    The ratio starts at 0.5 so both paths get gradient from the first step; training can move
    it towards whichever path segments better (it is not clamped).

    Args:
        channels: channels of the decoder feature map (``reduce_dim``, 64 for clipseg-rd64).
        kernel_size: size of the refining convolution.
        ratio: initial residual ratio ``r``.
    """

    def __init__(self, channels: int, *, kernel_size: int = 5, ratio: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        self.ratio = nn.Parameter(torch.tensor(float(ratio)))

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        """Refine ``logits`` ``(B, 1, H, W)`` using ``features`` ``(B, C, h, w)`` (h = H/16)."""
        upsampled = F.interpolate(
            features, size=logits.shape[-2:], mode="bilinear", align_corners=False
        )
        refined = self.conv(upsampled)
        return self.ratio * refined + (1.0 - self.ratio) * logits
