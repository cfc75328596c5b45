"""MaPLe: multimodal prompts coupled from text to vision.

Khattak et al., "MaPLe: Multi-modal Prompt Learning" (CVPR 2023). Text context vectors are
learned as in CoOp; the visual prompts of each layer are a learned function of that layer's
text context, so the two branches are tuned together instead of independently. The TuneVLSeg
authors' coupling ends with a LayerNorm over the vision width (``proj_norm: true``;
docs/fidelity.md row 28).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from tunevlseg.learners.base import (
    EncoderDims,
    FrozenText,
    Learner,
    Prompts,
    init_text_context,
    low_rank_or_mlp,
)

__all__ = ["MaPLe"]


class MaPLe(Learner):
    """Text context per depth and ``couplings[d]`` mapping it to that depth's visual prompts.

    Text context exists for ``max(text_depth, vision_depth)`` layers, so every visual depth has
    a source even when the text encoder runs fewer layers.

    Parameters:
        prompt_depth: number of prompted layers in each encoder.
        init: text context initialisation (see :class:`tunevlseg.learners.coop.CoOp`).
        intermediate_dim: hidden size (or rank, with ``use_lora``) of each coupling function.
        use_lora: a low-rank linear coupling instead of Linear-ReLU-Linear.
        proj_norm: end each coupling with a LayerNorm (with bias: its output is the visual
            prompt itself, which needs an offset of its own), so the prompts keep the scale of
            the vision tokens whatever the text context's scale.
    """

    name: ClassVar[str] = "maple"
    prompts_text: ClassVar[bool] = True
    prompts_vision: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "prompt_depth": 1,
        "init": "embedding",
        "intermediate_dim": 32,
        "use_lora": False,
        "proj_norm": False,
    }
    prompt_attributes: ClassVar[tuple[str, ...]] = ("text_ctx",)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        p = self.params
        depth = max(self.text_depth, self.vision_depth)
        self.text_ctx = init_text_context(depth, n_ctx, dims.text_width, p["init"], frozen_text)
        self.couplings = nn.ModuleList(
            low_rank_or_mlp(
                dims.text_width,
                p["intermediate_dim"],
                dims.vision_width,
                use_lora=bool(p["use_lora"]),
                final_norm=p["proj_norm"],
            )
            for _ in range(self.vision_depth)
        )

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        text = list(self.text_ctx)
        vision = [couple(ctx) for ctx, couple in zip(text, self.couplings, strict=False)]
        return Prompts(text=text[: self.text_depth], vision=vision)
