"""CRIS's multi-modal FPN: visual features of three strides fused, gated by the sentence.

Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation" (CVPR 2022). The coarsest map (the
dense attention-pool output, stride 32) is multiplied channel-wise by a projection of the
sentence embedding, so the text decides early which visual channels matter. The gated map is
then merged top-down with the stride-16 and stride-8 features (the stride-8 branch is pooled to
stride 16), the three levels are aggregated at stride 16 and two convolutions, the first with
normalised x/y coordinate channels (CoordConv), give the decoder its visual queries.

Submodule names follow the original checkpoints (``txt_proj``, ``f1_v_proj``, ``aggr``...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CoordConv", "TextGatedFPN", "conv_bn_relu"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CoordConv(nn.Module):
    """A 3x3 conv-BN-ReLU that also sees x and y in [-1, 1], so queries know where they are."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + 2, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        ys = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y]).expand(batch, -1, -1, -1)
        return self.conv1(torch.cat([x, coords], dim=1))


class TextGatedFPN(nn.Module):
    """Fuse ``[c3, c4, c5]`` (strides 8, 16, 32) with the sentence into a stride-16 map.

    Args:
        in_channels: channels of ``c3, c4, c5`` (RN50: 512, 1024, 1024).
        out_channels: channels per level (256, 512, 1024); ``out_channels[2]`` must equal the
            sentence embedding size and ``out_channels[1]`` is the output width.
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: tuple[int, int, int]):
        super().__init__()
        in3, in4, in5 = in_channels
        out3, out4, out5 = out_channels
        self.txt_proj = nn.Sequential(
            nn.Linear(in5, out5, bias=False), nn.BatchNorm1d(out5), nn.ReLU(inplace=True)
        )
        self.f1_v_proj = conv_bn_relu(in5, out5, 1)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(out5), nn.ReLU(inplace=True))
        self.f2_v_proj = conv_bn_relu(in4, out4, 3)
        self.f2_cat = conv_bn_relu(out5 + out4, out4, 1)
        self.f3_v_proj = conv_bn_relu(in3, out3, 3)
        self.f3_cat = conv_bn_relu(out3 + out4, out4, 1)
        self.f4_proj5 = conv_bn_relu(out5, out4, 3)
        self.f4_proj4 = conv_bn_relu(out4, out4, 3)
        self.f4_proj3 = conv_bn_relu(out4, out4, 3)
        self.aggr = conv_bn_relu(3 * out4, out4, 1)
        self.coordconv = nn.Sequential(CoordConv(out4, out4), conv_bn_relu(out4, out4, 3))

    def forward(self, features: list[Tensor], sentence: Tensor) -> Tensor:
        """``features``: ``[c3, c4, c5]``; ``sentence``: ``(B, embed_dim)``. Returns stride 16."""
        c3, c4, c5 = features
        gate = self._gate(sentence)[:, :, None, None]
        f5 = self.norm_layer(self.f1_v_proj(c5) * gate)
        f4 = self.f2_v_proj(c4)
        f4 = self.f2_cat(torch.cat([f4, _resize(f5, f4)], dim=1))
        f3 = F.avg_pool2d(self.f3_v_proj(c3), 2, 2)
        f3 = self.f3_cat(torch.cat([f3, f4], dim=1))
        q5 = _resize(self.f4_proj5(f5), f4)
        fused = torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), q5], dim=1)
        return self.coordconv(self.aggr(fused))

    def _gate(self, sentence: Tensor) -> Tensor:
        """``txt_proj(sentence)``, also for a training batch of one sentence.

        BatchNorm1d cannot take batch statistics of a single vector and raises; end-to-end
        training with one image per step (gradient accumulation on a small device) would then
        fail. For that case only, the running statistics normalise instead.
        """
        linear, norm, relu = self.txt_proj
        if not (self.training and sentence.shape[0] == 1):
            return self.txt_proj(sentence)
        assert isinstance(norm, nn.BatchNorm1d)
        normed = F.batch_norm(
            linear(sentence),
            norm.running_mean,
            norm.running_var,
            norm.weight,
            norm.bias,
            training=False,
            eps=norm.eps,
        )
        return relu(normed)


def _resize(x: Tensor, like: Tensor) -> Tensor:
    """Bilinear resize to ``like``'s grid (x2 for the stride-32 level)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
