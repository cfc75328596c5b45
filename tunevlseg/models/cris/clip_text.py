"""CLIP's text transformer blocks, as CRIS uses them.

A pre-norm transformer (LayerNorm, multi-head self-attention, LayerNorm, 4x MLP with QuickGELU)
run under a causal mask. CRIS reads two things from it: the per-token states after the final
LayerNorm (the decoder's *word* features, not projected: ``text_width`` channels) and the EOS
state projected by ``text_projection`` (the *sentence* embedding, ``embed_dim`` channels).

The loop over blocks is not here: the prompted model runs it itself so that context vectors can
replace the placeholder states at the input of any layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["QuickGELU", "TextBlock", "TextTransformer", "causal_mask"]


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)`` (the weights were trained with it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive ``(L, L)`` mask: position ``i`` sees positions ``0..i`` only.

    Padding needs no extra mask here: it comes after EOS, so no real token can see it.
    """
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class TextBlock(nn.Module):
    """One pre-norm residual attention block (checkpoint names ``attn``, ``ln_1``, ``mlp``...)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x``: ``(B, L, width)``; ``mask``: additive ``(L, L)``."""
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """The stack of blocks (kept as ``resblocks`` for checkpoint compatibility)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(TextBlock(width, heads) for _ in range(layers))
