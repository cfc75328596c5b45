"""Shared Separate: one shared prompt space, separate projections per modality.

TuneVLSeg (Adhikari et al., "TuneVLSeg: Prompt Tuning Benchmark for Vision-Language
Segmentation Models", ACCV 2024). Each depth has shared prompt vectors of width ``shared_dim``;
a linear layer followed by LayerNorm maps them to the text width and another to the vision
width. The modalities share their source but are projected independently.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from tunevlseg.learners.base import EncoderDims, FrozenText, Learner, Prompts, gaussian

__all__ = ["SharedSeparate"]


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))


class SharedSeparate(Learner):
    """Shared prompts ``(n_ctx, shared_dim)`` per depth, projected to text and vision.

    Parameters:
        prompt_depth: number of prompted layers in each encoder.
        shared_dim: width of the shared prompt vectors.
    """

    name: ClassVar[str] = "shared_separate"
    prompts_text: ClassVar[bool] = True
    prompts_vision: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"prompt_depth": 1, "shared_dim": 64}  # paper: {32, 64}
    prompt_attributes: ClassVar[tuple[str, ...]] = ("shared_ctx",)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        shared_dim = self.params["shared_dim"]
        depth = max(self.text_depth, self.vision_depth)
        self.shared_ctx = nn.ParameterList(gaussian(n_ctx, shared_dim) for _ in range(depth))
        self.to_text = nn.ModuleList(
            _projection(shared_dim, dims.text_width) for _ in range(self.text_depth)
        )
        self.to_vision = nn.ModuleList(
            _projection(shared_dim, dims.vision_width) for _ in range(self.vision_depth)
        )

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        shared = list(self.shared_ctx)
        return Prompts(
            text=[project(ctx) for ctx, project in zip(shared, self.to_text, strict=False)],
            vision=[project(ctx) for ctx, project in zip(shared, self.to_vision, strict=False)],
        )
