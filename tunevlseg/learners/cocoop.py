"""CoCoOp: image-conditional text context.

Zhou et al., "Conditional Prompt Learning for Vision-Language Models" (CVPR 2022). CoOp's
context vectors get a per-image shift computed by a small meta-network from the image's CLIP
feature, so the prompt adapts to each input. Here there is one meta-network per prompted text
layer; the input is the pooled, projected CLIP image feature, L2-normalised as in CLIP by
default. The TuneVLSeg authors' meta-network instead reads the feature as it is and ends with a
LayerNorm without bias (``normalize_image_features: false``, ``proj_norm: true``;
docs/fidelity.md row 27).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from tunevlseg.learners.base import (
    EncoderDims,
    FrozenText,
    Learner,
    Prompts,
    init_text_context,
    low_rank_or_mlp,
)

__all__ = ["CoCoOp"]


class CoCoOp(Learner):
    """CoOp context plus ``meta_nets[d](image_feature)`` added to every context vector.

    Parameters:
        prompt_depth: number of prompted text layers.
        init: text context initialisation (see :class:`tunevlseg.learners.coop.CoOp`).
        intermediate_dim: hidden size (or rank, with ``use_lora``) of each meta-network.
        use_lora: a low-rank linear map instead of the Linear-ReLU-Linear meta-network.
        proj_norm: end each meta-network with a LayerNorm without bias (the authors' head). No
            bias because the context vectors the shift is added to are already a learned
            constant.
        normalize_image_features: L2-normalise the image feature before the meta-networks, so
            they see its direction only (CoCoOp's choice); ``False`` passes it as it is.
    """

    name: ClassVar[str] = "cocoop"
    prompts_text: ClassVar[bool] = True
    needs_image_feature: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "prompt_depth": 1,
        "init": "embedding",
        "intermediate_dim": 32,
        "use_lora": False,
        "proj_norm": False,
        "normalize_image_features": True,
    }
    prompt_attributes: ClassVar[tuple[str, ...]] = ("text_ctx",)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        p = self.params
        self.text_ctx = init_text_context(
            self.text_depth, n_ctx, dims.text_width, p["init"], frozen_text
        )
        self.meta_nets = nn.ModuleList(
            low_rank_or_mlp(
                dims.projection_dim,
                p["intermediate_dim"],
                dims.text_width,
                use_lora=bool(p["use_lora"]),
                final_norm=p["proj_norm"],
                norm_bias=False,
            )
            for _ in range(self.text_depth)
        )
        self.normalizes = bool(p["normalize_image_features"])

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        if image_feature is None:
            raise ValueError("CoCoOp needs the image feature")
        feature = F.normalize(image_feature, dim=-1) if self.normalizes else image_feature
        text = [
            ctx.unsqueeze(0) + meta(feature).unsqueeze(1)  # (B, n_ctx, width)
            for ctx, meta in zip(self.text_ctx, self.meta_nets, strict=True)
        ]
        return Prompts(text=text)
