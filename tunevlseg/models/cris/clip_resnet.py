"""CLIP's ModifiedResNet image encoder, as CRIS uses it.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML
2021) changed the torchvision ResNet in three ways: a 3-convolution stem with an average pool,
anti-aliased downsampling (an average pool before each strided step instead of a stride-2
convolution) and an attention pool instead of global average pooling.

CRIS (Wang et al., CVPR 2022) needs dense features, so its attention pool lets *every* spatial
token query the map (not only the mean token), adds a 1x1-conv + BN shortcut ("connect") and a
ReLU, and returns a ``(B, embed_dim, H/32, W/32)`` map. The pool's position table (learned at
CLIP's 224 px) is resized bicubically to the actual grid. We additionally compute CLIP's own
pooled vector (the mean token as query) in the same attention pass: CoCoOp conditions on it.

Parameter names follow the original checkpoints (``conv1``, ``layer1.0.downsample.0``,
``attnpool.connect.1`` ...) so released CRIS weights load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionPool", "Bottleneck", "ModifiedResNet"]

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg-pool if strided) -> 1x1 with a pooled 1x1 shortcut when shapes change."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride > 1 or in_channels != out_channels:
            # "-1" is the parameter-free pool; the names keep checkpoint keys "downsample.0/1".
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out_channels)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool(nn.Module):
    """QKV attention over the last ResNet map, dense (CRIS) and pooled (CLIP) in one pass.

    Args:
        grid: side of the position grid learned by CLIP (``clip_image_size // 32``).
        width: input channels (``vision_width * 32``).
        heads: attention heads.
        out_dim: output channels (CLIP's ``embed_dim``).
    """

    def __init__(self, grid: int, width: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.heads = heads
        # Filled by CRIS.init_weights (random models) or a checkpoint.
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, out_dim)
        self.connect = nn.Sequential(
            nn.Conv2d(width, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim)
        )

    def _spatial_positions(self, height: int, width: int) -> Tensor:
        """The learned grid positions resized to ``height x width``: ``(H*W, C)``."""
        table = self.positional_embedding[1:]
        if (height, width) == (self.grid, self.grid):
            return table
        grid = table.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)[0]

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, channels = x.shape
        return x.reshape(batch, length, self.heads, channels // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, *, pooled: bool = False) -> tuple[Tensor, Tensor | None]:
        """Dense map ``(B, out_dim, H, W)`` and, if asked, CLIP's pooled vector ``(B, out_dim)``.

        The dense path follows CRIS: positions without the class row, every token attends to
        every token, output + ``connect`` shortcut, ReLU. The pooled path is CLIP's: the mean
        token (with the class position) attends to itself and all tokens.
        """
        batch, channels, height, width = x.shape
        shortcut = self.connect(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = tokens + self._spatial_positions(height, width).to(tokens.dtype)
        if pooled:
            mean = x.flatten(2).mean(-1)[:, None] + self.positional_embedding[:1].to(x.dtype)
            tokens = torch.cat([mean, tokens], dim=1)
        keys = self._heads(self.k_proj(tokens))
        values = self._heads(self.v_proj(tokens))
        queries = self._heads(self.q_proj(tokens))
        spatial = slice(1, None) if pooled else slice(None)
        dense = F.scaled_dot_product_attention(
            queries[:, :, spatial], keys[:, :, spatial], values[:, :, spatial]
        )
        dense = self.c_proj(dense.transpose(1, 2).reshape(batch, height * width, channels))
        dense = dense.transpose(1, 2).reshape(batch, -1, height, width)
        dense = F.relu(dense + shortcut)
        vector = None
        if pooled:
            vector = F.scaled_dot_product_attention(queries[:, :, :1], keys, values)
            vector = self.c_proj(vector.transpose(1, 2).reshape(batch, channels))
        return dense, vector


class ModifiedResNet(nn.Module):
    """CLIP's ResNet returning the stride-8, stride-16 and attention-pooled stride-32 features.

    Args:
        layers: blocks per stage.
        width: stem width (64 for RN50).
        heads: attention-pool heads.
        out_dim: attention-pool output channels (CLIP's ``embed_dim``).
        clip_image_size: CLIP's pretraining resolution (sets the pool's position grid).
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        width: int,
        heads: int,
        out_dim: int,
        clip_image_size: int = 224,
    ) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        channels = width
        stages = []
        for index, blocks in enumerate(layers):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            stage = [Bottleneck(channels, planes, stride)]
            channels = planes * EXPANSION
            stage += [Bottleneck(channels, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool(clip_image_size // 32, channels, heads, out_dim)

    def stem(self, x: Tensor) -> Tensor:
        for conv, norm in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(norm(conv(x)))
        return self.avgpool(x)

    def forward(self, x: Tensor, *, pooled: bool = False) -> tuple[list[Tensor], Tensor | None]:
        """``[layer2, layer3, attention pool]`` maps and optionally CLIP's pooled vector."""
        x = self.layer1(self.stem(x.to(self.conv1.weight.dtype)))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5, vector = self.attnpool(self.layer4(c4), pooled=pooled)
        return [c3, c4, c5], vector
