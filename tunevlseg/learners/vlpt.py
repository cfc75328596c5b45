"""VLPT: independent deep text and visual prompts, LDVC's vision-language prompt tuning.

After LDVC's vision-language prompt tuning of CLIP for dense prediction; it is also the
"naive" multimodal baseline the TuneVLSeg paper names (§4.3) but did not run: text and visual
prompts learned side by side with no coupling between them (unlike MaPLe or Shared Separate).

* Text: ``n_ctx_text`` context vectors per prompted text layer, initialised layer-wise (the
  default ``init``): layer 0 from the token embeddings of "a photo of a", layer ``d`` from the
  frozen text encoder's own hidden states of that phrase at the input of layer ``d``
  (:func:`tunevlseg.learners.base.init_text_context`).
* Vision: ``n_ctx_vision`` tokens per prompted vision layer, drawn as VPT draws them
  (:class:`tunevlseg.learners.vpt.VPT`).
* Depth: one ``prompt_depth`` for both encoders, as MaPLe; each encoder clamps it to the layers
  it runs (CLIPSeg: 12 text, 10 vision). The token counts differ per encoder: LDVC used 6 text
  and 40-100 visual tokens per layer. ``n_ctx_text`` is an option (default ``model.n_ctx``);
  ``n_ctx_vision`` is searched (:data:`tunevlseg.config.spaces.PAPER_SPACES`).

Two optional LDVC components, off by default (learner options, so that each variant is a row of
its own in the tables, as an ablation, rather than a coin TPE flips inside one study):

* ``text_adapter``: LDVC's eq. 3, ``T_new = Proj([T ⊙ V_g; T])``. ``T`` is CLIPSeg's
  conditional embedding (the projected text feature FiLM reads) and ``V_g`` the pooled,
  projected image feature of the same, prompted, vision pass (CoCoOp's meta-net input, so the
  vision encoder then runs all its layers). ``T_new`` replaces ``T`` before FiLM. ``V_g`` is
  L2-normalised and scaled to unit RMS, so ``T ⊙ V_g`` has ``T``'s scale whatever the image
  feature's norm. Ours: ``Proj`` is written ``[0 | I] + P`` with ``P`` a zero-initialised
  linear map, so training starts from ``T_new = T`` (what the frozen FiLM expects) and weight
  decay pulls towards it rather than towards zero.
* ``consensus``: a local-consensus self-attention block
  (:class:`tunevlseg.models.consensus.LocalConsensus`) on the CLIPSeg decoder's last feature
  map, before the transposed convolutions and the upsampler (both read the refined map).
  LDVC used 4×4 windows, 64 windows and m = 16 on its map. CLIPSeg's map is the 22×22 patch
  grid at 352 px, so we keep LDVC's window of 4×4 *tokens* (``consensus_window``), which gives
  6×6 = 36 windows (the last row and column of windows half padding), and keep LDVC's share of
  routed windows, a quarter: ``consensus_top_m`` = 9. One attention head (the map has 64
  channels; LDVC gives no head count to carry over).

The model reaches the optional parts through three hooks (see
:class:`tunevlseg.models.clipseg.PromptedCLIPSeg`): the class attribute ``takes_decoder_width``
(the model passes its decoder's channels to the constructor), the property
``adapts_condition`` with :meth:`VLPT.adapt_condition`, and :meth:`VLPT.refine_features`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunevlseg.learners.base import EncoderDims, FrozenText, Learner, Prompts, init_text_context
from tunevlseg.learners.vlpt_options import VLPT_DEFAULTS, vlpt_problems
from tunevlseg.models.consensus import LocalConsensus

__all__ = ["VLPT", "TextAdapter", "visual_prompt_tokens"]


def visual_prompt_tokens(depth: int, n_tokens: int, dims: EncoderDims) -> nn.ParameterList:
    """VPT's visual prompts: ``depth`` tensors ``(n_tokens, vision_width)``, uniform in
    ``±sqrt(6 / (3·patch² + width))`` (Xavier for the patch embedding's fan-in and fan-out)."""
    bound = math.sqrt(6.0 / float(3 * dims.patch_size**2 + dims.vision_width))
    return nn.ParameterList(
        nn.Parameter(torch.empty(n_tokens, dims.vision_width).uniform_(-bound, bound))
        for _ in range(depth)
    )


class TextAdapter(nn.Module):
    """``T_new = T + P([T ⊙ V_g; T])`` with ``P`` zero at the start (LDVC eq. 3, see the module
    docstring for why it is written as a residual).

    Args:
        dim: size of ``T`` and ``V_g`` (CLIP's projection dim, 512 for ViT-B/16).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, text: Tensor, image: Tensor) -> Tensor:
        """``text`` ``(B, dim)``, ``image`` ``(B, dim)`` -> ``(B, dim)``."""
        image = F.normalize(image.to(text.dtype), dim=-1) * math.sqrt(image.shape[-1])
        return text + self.proj(torch.cat([text * image, text], dim=-1))


class VLPT(Learner):
    """Independent deep text and visual prompts, with LDVC's optional text adapter and local
    consensus (see the module docstring).

    Parameters:
        prompt_depth: prompted layers of each encoder.
        init: text context initialisation (``layerwise`` by default; see
            :func:`tunevlseg.learners.base.init_text_context`).
        n_ctx_text, n_ctx_vision: tokens per prompted text / vision layer (``None``: ``n_ctx``).
        text_adapter: fuse the global image feature into the class embedding.
        consensus: local-consensus attention on the decoder's feature map.
        consensus_window, consensus_top_m: its window side (tokens) and routed windows.
    """

    name: ClassVar[str] = "vlpt"
    prompts_text: ClassVar[bool] = True
    prompts_vision: ClassVar[bool] = True
    takes_decoder_width: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = VLPT_DEFAULTS
    prompt_attributes: ClassVar[tuple[str, ...]] = ("text_ctx", "vision_ctx")

    def __init__(
        self,
        dims: EncoderDims,
        *,
        n_ctx: int,
        frozen_text: FrozenText | None = None,
        decoder_width: int | None = None,
        **params: Any,
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, frozen_text=frozen_text, **params)
        p = self.params
        self.n_ctx_text = int(p["n_ctx_text"] or n_ctx)
        self.n_ctx_vision = int(p["n_ctx_vision"] or n_ctx)
        self.text_ctx = init_text_context(
            self.text_depth, self.n_ctx_text, dims.text_width, p["init"], frozen_text
        )
        self.vision_ctx = visual_prompt_tokens(self.vision_depth, self.n_ctx_vision, dims)
        self.text_adapter = TextAdapter(dims.projection_dim) if p["text_adapter"] else None
        self.consensus: LocalConsensus | None = None
        if p["consensus"]:
            if decoder_width is None:
                raise ValueError("vlpt: consensus needs the decoder's width (decoder_width)")
            self.consensus = LocalConsensus(
                decoder_width, window=p["consensus_window"], top_m=p["consensus_top_m"]
            )

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        resolved = super().resolve_params(params)
        problems = vlpt_problems(params)  # the given values: a default never needs consensus
        if problems:
            raise ValueError(f"{cls.name}: " + "; ".join(problems))
        return resolved

    @property
    def adapts_condition(self) -> bool:
        """The model must pass the pooled image feature to :meth:`adapt_condition`."""
        return self.text_adapter is not None

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        return Prompts(text=list(self.text_ctx), vision=list(self.vision_ctx))

    def adapt_condition(self, condition: Tensor, image_feature: Tensor | None) -> Tensor:
        """The class embedding FiLM reads, ``(B, projection_dim)``, fused with ``V_g``."""
        if self.text_adapter is None:
            return condition
        if image_feature is None:
            raise ValueError("vlpt's text adapter needs the pooled image feature")
        return self.text_adapter(condition, image_feature)

    def refine_features(self, features: Tensor) -> Tensor:
        """The decoder's last feature map ``(B, C, h, w)``, through the consensus block if on."""
        return features if self.consensus is None else self.consensus(features)

    def extra_repr(self) -> str:
        return (
            f"n_ctx_text={self.n_ctx_text}, n_ctx_vision={self.n_ctx_vision}, "
            f"text_depth={self.text_depth}, vision_depth={self.vision_depth}"
        )
