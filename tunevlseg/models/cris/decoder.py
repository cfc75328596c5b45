"""CRIS's vision-language decoder: visual queries attend to themselves, then to the words.

Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation" (CVPR 2022). Each layer is
pre-norm: self-attention over the stride-16 visual tokens (2-D sine positions added to queries
and keys), cross-attention from vision to the word features (1-D sine positions on the words,
padding hidden by a key padding mask) and a feed-forward net; each attention output gets its own
LayerNorm before the residual sum. A final LayerNorm closes the stack.

Submodule names follow the original checkpoints (``self_attn``, ``multihead_attn``, ``ffn``,
``norm1..3``, ``self_attn_norm``, ``cross_attn_norm``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["DecoderLayer", "VisionLanguageDecoder", "sine_positions_1d", "sine_positions_2d"]


def _sine(positions: Tensor, channels: int) -> Tensor:
    """``(N, channels)``: sin/cos interleaved at geometric frequencies (Transformer style)."""
    frequencies = torch.exp(
        torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels)
    )
    angles = positions.float()[:, None] * frequencies[None]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def sine_positions_1d(length: int, channels: int) -> Tensor:
    """Word positions ``(length, channels)``; ``channels`` must be even."""
    if channels % 2:
        raise ValueError(f"1-D sine positions need an even width, got {channels}")
    return _sine(torch.arange(length), channels)


def sine_positions_2d(height: int, width: int, channels: int) -> Tensor:
    """Grid positions ``(height * width, channels)``, row-major.

    The first half of the channels encodes the column (x), the second half the row (y).
    """
    if channels % 4:
        raise ValueError(f"2-D sine positions need a width divisible by 4, got {channels}")
    half = channels // 2
    xs = _sine(torch.arange(width), half)  # (W, half)
    ys = _sine(torch.arange(height), half)  # (H, half)
    grid = torch.cat([xs[None].expand(height, -1, -1), ys[:, None].expand(-1, width, -1)], dim=-1)
    return grid.reshape(height * width, channels)


class DecoderLayer(nn.Module):
    """Self-attention over vision, cross-attention to words, feed-forward (all pre-norm)."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(width)
        self.cross_attn_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.LayerNorm(ffn),
            nn.Linear(ffn, width),
        )
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, vis: Tensor, words: Tensor, vis_pos: Tensor, word_pos: Tensor, pad_mask: Tensor
    ) -> Tensor:
        """``vis`` ``(B, HW, C)``, ``words`` ``(B, L, C)``, ``pad_mask`` ``(B, L)`` True = pad."""
        normed = self.norm1(vis)
        query = normed + vis_pos
        attended = self.self_attn(query, query, normed, need_weights=False)[0]
        vis = vis + self.dropout1(self.self_attn_norm(attended))
        normed = self.norm2(vis)
        attended = self.multihead_attn(
            normed + vis_pos,
            words + word_pos,
            words,
            key_padding_mask=pad_mask,
            need_weights=False,
        )[0]
        vis = vis + self.dropout2(self.cross_attn_norm(attended))
        return vis + self.dropout3(self.ffn(self.norm3(vis)))


class VisionLanguageDecoder(nn.Module):
    """A stack of :class:`DecoderLayer` plus a final LayerNorm; keeps the map's shape."""

    def __init__(self, layers: int, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(width, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, vis: Tensor, words: Tensor, pad_mask: Tensor) -> Tensor:
        """``vis`` ``(B, C, H, W)``, ``words`` ``(B, L, C)`` -> ``(B, C, H, W)``."""
        batch, channels, height, width = vis.shape
        vis_pos = sine_positions_2d(height, width, channels).to(vis)
        word_pos = sine_positions_1d(words.shape[1], words.shape[2]).to(words)
        tokens = vis.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens, words, vis_pos, word_pos, pad_mask)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)
