"""VPT: learnable visual tokens.

Jia et al., "Visual Prompt Tuning" (ECCV 2022), the deep variant: ``n_ctx`` learnable tokens
are appended to the vision transformer's input sequence and replaced by fresh ones at the input
of each of the first ``prompt_depth`` layers. The text encoder is untouched.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tunevlseg.learners.base import EncoderDims, FrozenText, Learner, Prompts

__all__ = ["VPT"]


class VPT(Learner):
    """Deep visual prompts, initialised uniformly like VPT.

    The range ``±sqrt(6 / (3·patch² + width))`` is Xavier-uniform for the patch embedding's
    fan-in/fan-out, so the tokens start at the scale of real patch embeddings.

    Parameters:
        prompt_depth: number of vision layers whose input gets visual tokens.
    """

    name: ClassVar[str] = "vpt"
    prompts_vision: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"prompt_depth": 1}
    prompt_attributes: ClassVar[tuple[str, ...]] = ("vision_ctx",)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        bound = math.sqrt(6.0 / float(3 * dims.patch_size**2 + dims.vision_width))
        self.vision_ctx = nn.ParameterList(
            nn.Parameter(torch.empty(n_ctx, dims.vision_width).uniform_(-bound, bound))
            for _ in range(self.vision_depth)
        )

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        return Prompts(vision=list(self.vision_ctx))
