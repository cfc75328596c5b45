"""Local-consensus self-attention on a feature map: attention routed between windows.

LDVC's local-consensus block lets each region of the decoder's feature map agree with the
regions that look like it, without the cost of full attention. "Route attention" (the routing
of BiFormer, Zhu et al., CVPR 2023):

1. the map is cut into windows of ``window × window`` tokens (the map is zero-padded on the
   bottom and right to whole windows; padded tokens are never attended to);
2. each window is average-pooled to a descriptor, from its queries and from its keys (padded
   tokens left out of the mean), and window-to-window similarity is the descriptors' dot
   product;
3. each window keeps its ``top_m`` most similar windows (fewer if the map has fewer);
4. each token attends, token-wise, only to the tokens of its window's ``top_m`` windows.

With ``top_m`` at least the number of windows, step 4 is full self-attention over the map's
tokens (the order of the gathered keys does not matter to a softmax), which the tests check.

The block is residual with a per-channel LayerScale (Touvron et al., CaiT, 2021) started at
:data:`LAYER_SCALE_INIT`: the frozen decoder's features pass through almost unchanged at the
start, and every weight still gets a gradient from the first step (a zero start would leave the
attention weights without one). It has no feed-forward part.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LAYER_SCALE_INIT", "LocalConsensus"]

LAYER_SCALE_INIT = 1e-4


class LocalConsensus(nn.Module):
    """``x + γ · RoutedAttention(LayerNorm(x))`` on a ``(B, C, H, W)`` map.

    Args:
        channels: ``C``, the map's channels (CLIPSeg's ``reduce_dim``).
        window: window side in tokens.
        top_m: windows each window attends to (clamped to the number of windows).
        n_heads: attention heads; must divide ``channels``.
    """

    def __init__(self, channels: int, *, window: int, top_m: int, n_heads: int = 1) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide the channels ({channels})")
        if window < 1 or top_m < 1:
            raise ValueError(f"window and top_m must be >= 1, got {window} and {top_m}")
        self.window = window
        self.top_m = top_m
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), LAYER_SCALE_INIT))

    def extra_repr(self) -> str:
        return f"window={self.window}, top_m={self.top_m}, n_heads={self.n_heads}"

    def forward(self, features: Tensor) -> Tensor:
        batch, channels, height, width = features.shape
        s = self.window
        pad_h, pad_w = -height % s, -width % s
        grid = F.pad(features, (0, pad_w, 0, pad_h)).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
        rows, cols = (height + pad_h) // s, (width + pad_w) // s
        # (B, rows, s, cols, s, C) -> (B, windows, s·s, C), windows in row-major order
        windows = grid.reshape(batch, rows, s, cols, s, channels).transpose(2, 3)
        windows = windows.reshape(batch, rows * cols, s * s, channels)
        valid = torch.zeros(height + pad_h, width + pad_w, dtype=torch.bool, device=grid.device)
        valid[:height, :width] = True
        valid = valid.reshape(rows, s, cols, s).transpose(1, 2).reshape(rows * cols, s * s)

        attended = self._routed_attention(self.norm(windows), valid)
        # back to the map: (B, windows, s·s, C) -> (B, C, H, W), padding cropped
        attended = attended.reshape(batch, rows, cols, s, s, channels).transpose(2, 3)
        attended = attended.reshape(batch, rows * s, cols * s, channels)[:, :height, :width]
        return features + (self.gamma * attended).permute(0, 3, 1, 2)

    def _routed_attention(self, windows: Tensor, valid: Tensor) -> Tensor:
        """Token attention within each window's ``top_m`` windows.

        Args:
            windows: ``(B, n, t, C)`` normalised tokens of ``n`` windows of ``t`` tokens.
            valid: ``(n, t)``, False at padding.

        Returns:
            ``(B, n, t, C)`` after the output projection.
        """
        batch, n_windows, tokens, channels = windows.shape
        heads, head_dim = self.n_heads, channels // self.n_heads
        query, key, value = self.qkv(windows).chunk(3, dim=-1)  # each (B, n, t, C)

        weights = valid.to(windows.dtype)[None, :, :, None]  # mean over real tokens only
        counts = weights.sum(dim=2)
        query_descriptor = (query * weights).sum(dim=2) / counts  # (B, n, C)
        key_descriptor = (key * weights).sum(dim=2) / counts
        similarity = torch.einsum("bic,bjc->bij", query_descriptor, key_descriptor)
        top_m = min(self.top_m, n_windows)
        routes = similarity.topk(top_m, dim=-1).indices  # (B, n, m)

        # Gather the routed windows' keys, values and padding flags: (B, n, m·t, ...).
        picked = torch.arange(batch, device=windows.device)[:, None, None], routes
        routed_key = key[picked].reshape(batch, n_windows, top_m * tokens, heads, head_dim)
        routed_value = value[picked].reshape(batch, n_windows, top_m * tokens, heads, head_dim)
        routed_valid = valid[routes].reshape(batch, n_windows, top_m * tokens)
        query = query.reshape(batch, n_windows, tokens, heads, head_dim)

        logits = torch.einsum("bnqhd,bnkhd->bnhqk", query, routed_key) / math.sqrt(head_dim)
        logits = logits.masked_fill(~routed_valid[:, :, None, None, :], float("-inf"))
        attention = logits.softmax(dim=-1)
        mixed = torch.einsum("bnhqk,bnkhd->bnqhd", attention, routed_value)
        return self.out(mixed.reshape(batch, n_windows, tokens, channels))
