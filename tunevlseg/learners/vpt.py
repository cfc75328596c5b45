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

from tunevlseg.learners.base import (
    GAUSSIAN_STD,
    EncoderDims,
    FrozenText,
    Learner,
    Prompts,
)
from tunevlseg.learners.options import INIT_CHOICES

__all__ = ["VPT"]


class VPT(Learner):
    """Deep visual prompts, initialised uniformly like VPT, or from a Gaussian.

    The uniform range ``±sqrt(6 / (3·patch² + width))`` is Xavier-uniform for the patch
    embedding's fan-in/fan-out, so the tokens start at the scale of real patch embeddings (VPT's
    choice). ``init: gaussian`` draws N(0, init_std²) instead, what the TuneVLSeg authors' code
    does with ``init_std`` 0.02 (docs/fidelity.md row 29).

    Parameters:
        prompt_depth: number of vision layers whose input gets visual tokens.
        init: ``"uniform"`` or ``"gaussian"``.
        init_std: the standard deviation of ``init: gaussian`` (given only with it).
    """

    name: ClassVar[str] = "vpt"
    prompts_vision: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "prompt_depth": 1,
        "init": "uniform",
        "init_std": GAUSSIAN_STD,
    }
    prompt_attributes: ClassVar[tuple[str, ...]] = ("vision_ctx",)
    init_choices: ClassVar[tuple[str, ...]] = INIT_CHOICES["vpt"]

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        self.vision_ctx = nn.ParameterList(
            nn.Parameter(self._initial_tokens(n_ctx, dims)) for _ in range(self.vision_depth)
        )

    def _initial_tokens(self, n_ctx: int, dims: EncoderDims) -> Tensor:
        tokens = torch.empty(n_ctx, dims.vision_width)
        if self.params["init"] == "gaussian":
            return tokens.normal_(0.0, float(self.params["init_std"]))
        bound = math.sqrt(6.0 / float(3 * dims.patch_size**2 + dims.vision_width))
        return tokens.uniform_(-bound, bound)

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        return Prompts(vision=list(self.vision_ctx))
