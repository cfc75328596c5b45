"""Shared Attention: shared prompts mixed by self-attention, then split per modality.

TuneVLSeg (Adhikari et al., "TuneVLSeg: Prompt Tuning Benchmark for Vision-Language
Segmentation Models", ACCV 2024). Each depth has shared prompt vectors as wide as text width +
vision width. A transformer block (self-attention across the ``n_ctx`` prompt tokens, then a
feed-forward layer) mixes them, and the output is split channel-wise into the text prompts
(first ``text_width`` channels) and the visual prompts (the rest). Attention lets every prompt
token, and so both modalities, depend on all the others.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from tunevlseg.learners.base import EncoderDims, FrozenText, Learner, Prompts, gaussian

__all__ = ["SharedAttention"]


class SharedAttention(Learner):
    """Shared prompts ``(n_ctx, text_width + vision_width)`` through one block per depth.

    The blocks are ``nn.TransformerEncoderLayer`` with ``batch_first=True`` and the prompts fed
    as a batch of one sequence of ``n_ctx`` tokens, so attention runs across the prompt tokens.

    Parameters:
        prompt_depth: number of prompted layers in each encoder.
        n_heads: attention heads; must divide text_width + vision_width (1280 for ViT-B/16).
        dropout: dropout inside the blocks.
        ff_dim: hidden size of the blocks' feed-forward layer.
        norm_first: pre-norm blocks (True) or post-norm (False).
    """

    name: ClassVar[str] = "shared_attention"
    prompts_text: ClassVar[bool] = True
    prompts_vision: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "prompt_depth": 1,
        "n_heads": 16,
        "dropout": 0.0,
        "ff_dim": 1280,
        "norm_first": True,
    }
    prompt_attributes: ClassVar[tuple[str, ...]] = ("shared_ctx",)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        p = self.params
        width = dims.text_width + dims.vision_width
        if width % p["n_heads"]:
            raise ValueError(
                f"shared_attention: n_heads={p['n_heads']} does not divide the prompt width {width}"
            )
        if not 0.0 <= float(p["dropout"]) < 1.0:
            raise ValueError(f"shared_attention: dropout must be in [0, 1), got {p['dropout']!r}")
        depth = max(self.text_depth, self.vision_depth)
        self.shared_ctx = nn.ParameterList(gaussian(n_ctx, width) for _ in range(depth))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=width,
                nhead=p["n_heads"],
                dim_feedforward=p["ff_dim"],
                dropout=float(p["dropout"]),
                batch_first=True,
                norm_first=bool(p["norm_first"]),
            )
            for _ in range(depth)
        )

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        mixed = [
            block(ctx.unsqueeze(0)).squeeze(0)
            for ctx, block in zip(self.shared_ctx, self.blocks, strict=True)
        ]
        split = self.dims.text_width
        return Prompts(
            text=[m[:, :split] for m in mixed[: self.text_depth]],
            vision=[m[:, split:] for m in mixed[: self.vision_depth]],
        )
