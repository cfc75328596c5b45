"""CRIS's text-to-pixel projector: a per-sentence dynamic convolution.

Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation" (CVPR 2022). The decoder output
(stride 16) is upsampled twice (x2, conv, x2, conv, 1x1: stride 4), and the sentence embedding
is mapped by one linear layer to the weights and bias of a ``k x k`` convolution with one output
channel. Each image is convolved with the kernel generated from its own sentence, so the mask is
literally a text-to-pixel similarity map. Names follow the original checkpoints (``vis``,
``txt``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tunevlseg.models.cris.neck import conv_bn_relu

__all__ = ["Projector"]


class Projector(nn.Module):
    """Stride-16 map + sentence -> stride-4 logits and the stride-4 feature map.

    Args:
        sentence_dim: size of the sentence embedding (``embed_dim``).
        channels: channels of the output feature map (half the decoder width).
        kernel_size: size of the generated convolution.
    """

    def __init__(self, sentence_dim: int, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(channels * 2, channels * 2, 3),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(channels * 2, channels, 3),
            nn.Conv2d(channels, channels, 1),
        )
        self.txt = nn.Linear(sentence_dim, channels * kernel_size * kernel_size + 1)

    def forward(self, x: Tensor, sentence: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, 1, 4h, 4w)`` and the feature map ``(B, channels, 4h, 4w)``.

        The per-image kernels run as one grouped convolution (batch folded into channels).
        """
        features = self.vis(x)
        batch, channels, height, width = features.shape
        generated = self.txt(sentence)
        weight = generated[:, :-1].reshape(batch, channels, self.kernel_size, self.kernel_size)
        bias = generated[:, -1]
        logits = F.conv2d(
            features.reshape(1, batch * channels, height, width),
            weight,
            bias=bias,
            padding=self.kernel_size // 2,
            groups=batch,
        )
        return logits.reshape(batch, 1, height, width), features
