"""CoOp: learnable text context.

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022). The words of a
hand-written prompt ("a photo of a") are replaced by ``n_ctx`` learnable vectors in the text
encoder's input; here optionally also at the input of the first ``prompt_depth`` layers (deep
text prompts, as in TuneVLSeg).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from tunevlseg.learners.base import EncoderDims, FrozenText, Learner, Prompts, init_text_context

__all__ = ["CoOp"]


class CoOp(Learner):
    """Text context vectors shared by all images, one set per prompted layer.

    Parameters:
        prompt_depth: number of text layers whose input gets context vectors (1 = shallow).
        init: ``"embedding"`` (layer 0 from "a photo of a", deeper Gaussian), ``"gaussian"``
            (all N(0, 0.02²)) or ``"layerwise"`` (every layer from the frozen encoder's hidden
            states of "a photo of a").
    """

    name: ClassVar[str] = "coop"
    prompts_text: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"prompt_depth": 1, "init": "embedding"}
    prompt_attributes: ClassVar[tuple[str, ...]] = ("text_ctx",)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        self.text_ctx = init_text_context(
            self.text_depth, n_ctx, dims.text_width, self.params["init"], frozen_text
        )

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        return Prompts(text=list(self.text_ctx))
