"""The contract between a context learner and the prompted model.

A *learner* owns every trainable prompt tensor and nothing else. The prompted model (for
example :class:`tunevlseg.models.clipseg.PromptedCLIPSeg`) owns the frozen encoders and
decides where prompts go; the learner only decides what they are. This keeps learners free of
transformers imports and lets one learner work on any model that fills in :class:`EncoderDims`
and :class:`FrozenText`.

Contract:

* Construction: ``Learner(dims, n_ctx=..., frozen_text=..., **params)``. ``params`` are the
  learner's hyperparameters (validated with :meth:`Learner.resolve_params`; unknown names raise
  ``ValueError``). ``frozen_text`` gives read-only access to the frozen text encoder for
  initialisation; a learner must not keep a reference to it (it is not a submodule).
* Depth: ``prompt_depth`` J asks for prompts at the input of layers ``0..J-1`` of every encoder
  the learner prompts. It is clamped per encoder to the layers that actually run
  (:attr:`Learner.text_depth`, :attr:`Learner.vision_depth`).
* Output: :meth:`Learner.forward` returns :class:`Prompts`. ``text[d]`` has shape
  ``(n_ctx, text_width)`` or ``(B, n_ctx, text_width)`` (per image, CoCoOp) and replaces the
  ``n_ctx`` placeholder positions after BOS at the input of text layer ``d``; ``vision[d]`` has
  shape ``(n_ctx, vision_width)`` or ``(B, n_ctx, vision_width)`` and is appended after the
  patch tokens (``d = 0``) or replaces the appended tokens (``d >= 1``).
* Image conditioning: if :attr:`Learner.needs_image_feature`, the model passes the image's
  pooled, projected CLIP feature ``(B, projection_dim)`` to ``forward``; otherwise ``None``.
* Weight decay: parameters named under :attr:`Learner.prompt_attributes` are prompt vectors and
  get no weight decay.
* Baselines: :attr:`Learner.trains_backbone` (end-to-end fine-tuning) and
  :attr:`Learner.trains` (False for zero-shot) tell the model what to freeze.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from tunevlseg.learners.options import TEXT_INITS, option_problems

__all__ = [
    "MAX_PROMPT_DEPTH",
    "EncoderDims",
    "FrozenText",
    "Learner",
    "Prompts",
    "init_text_context",
    "low_rank_or_mlp",
]

MAX_PROMPT_DEPTH = 11
INIT_TEXT = "a photo of a"
GAUSSIAN_STD = 0.02


@dataclass(frozen=True)
class EncoderDims:
    """Sizes of the frozen encoders a learner must match.

    Attributes:
        text_width: hidden size of the text encoder (512 for CLIP ViT-B/16).
        vision_width: hidden size of the vision encoder (768).
        text_layers: number of text layers that run (12).
        vision_layers: number of vision layers that run (10 for CLIPSeg: up to layer index 9).
        projection_dim: size of the pooled, projected CLIP features (512).
        patch_size: vision patch size, for VPT's uniform initialisation range.
    """

    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int
    projection_dim: int
    patch_size: int = 16


class FrozenText(Protocol):
    """Read-only access to the frozen text encoder, used only to initialise prompts."""

    def token_embeddings(self, text: str) -> Tensor:
        """Token embeddings of ``text`` without BOS/EOS and positions: ``(n_tokens, width)``."""
        ...

    def layer_inputs(self, text: str) -> list[Tensor]:
        """Hidden states of ``text``'s word tokens at the input of each text layer.

        Returns one ``(n_tokens, width)`` tensor per layer that runs (index 0 = the embeddings
        with positions), all detached.
        """
        ...


@dataclass
class Prompts:
    """Per-depth prompts; an empty list means the encoder is not prompted."""

    text: list[Tensor] = field(default_factory=list)
    vision: list[Tensor] = field(default_factory=list)


class Learner(nn.Module):
    """Base class of all context learners and baselines (see the module docstring)."""

    name: ClassVar[str] = ""
    prompts_text: ClassVar[bool] = False
    prompts_vision: ClassVar[bool] = False
    needs_image_feature: ClassVar[bool] = False
    trains_backbone: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    prompt_attributes: ClassVar[tuple[str, ...]] = ()
    init_choices: ClassVar[tuple[str, ...]] = TEXT_INITS
    """The values of the ``init`` parameter, for learners that have one."""

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__()
        resolved = self.resolve_params(params)
        if n_ctx < 1 and (self.prompts_text or self.prompts_vision):
            raise ValueError(f"{self.name}: n_ctx must be >= 1, got {n_ctx}")
        self.dims = dims
        self.n_ctx = n_ctx
        self.params = resolved
        depth = int(resolved.get("prompt_depth", 0))
        self.text_depth = min(depth, dims.text_layers) if self.prompts_text else 0
        self.vision_depth = min(depth, dims.vision_layers) if self.prompts_vision else 0

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Fill in defaults and check names and values.

        Raises:
            ValueError: naming unknown keys (with the valid ones and their defaults) or bad values.
        """
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in cls.defaults.items()) or "none"
            raise ValueError(
                f"unknown parameter(s) for learner {cls.name!r}: {', '.join(unknown)}; "
                f"valid parameters (with defaults): {valid}"
            )
        resolved = {**cls.defaults, **params}
        if "prompt_depth" in resolved:
            depth = resolved["prompt_depth"]
            if isinstance(depth, bool) or not isinstance(depth, int):
                raise ValueError(f"{cls.name}: prompt_depth must be an int, got {depth!r}")
            if not 1 <= depth <= MAX_PROMPT_DEPTH:
                raise ValueError(f"{cls.name}: prompt_depth must be in 1..{MAX_PROMPT_DEPTH}")
        if "init" in resolved and resolved["init"] not in cls.init_choices:
            raise ValueError(
                f"{cls.name}: init must be one of {cls.init_choices}, got {resolved['init']!r}"
            )
        problems = option_problems(cls.name, params)
        if problems:
            raise ValueError(f"{cls.name}: {'; '.join(problems)}")
        for key in ("intermediate_dim", "shared_dim", "ff_dim", "n_heads"):
            if key in resolved and (not isinstance(resolved[key], int) or resolved[key] < 1):
                raise ValueError(f"{cls.name}: {key} must be a positive int, got {resolved[key]!r}")
        return resolved

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        """Produce the prompts for one batch (``image_feature`` only for conditional learners)."""
        return Prompts()

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, text_depth={self.text_depth}, vision_depth={self.vision_depth}"


def gaussian(*shape: int) -> nn.Parameter:
    """A prompt tensor drawn from N(0, 0.02²), CoOp's generic initialisation."""
    return nn.Parameter(torch.randn(*shape) * GAUSSIAN_STD)


def _fit_rows(rows: Tensor, n_ctx: int) -> Tensor:
    """Crop or Gaussian-pad initialisation rows to ``n_ctx`` (the init phrase may differ)."""
    if rows.shape[0] >= n_ctx:
        return rows[:n_ctx].clone()
    pad = torch.randn(n_ctx - rows.shape[0], rows.shape[1], dtype=rows.dtype) * GAUSSIAN_STD
    return torch.cat([rows, pad])


def init_text_context(
    depth: int, n_ctx: int, width: int, init: str, frozen_text: FrozenText | None
) -> nn.ParameterList:
    """CoOp-style text context vectors for ``depth`` layers.

    Layer 0 starts from the token embeddings of "a photo of a" (``init="embedding"``, CoOp's
    choice, which starts training from a sensible prompt) or N(0, 0.02²). Deeper layers are
    Gaussian, or with ``init="layerwise"`` the frozen encoder's own hidden states of "a photo of
    a" at that layer, so every layer starts on the manifold it expects.
    """
    if init != "gaussian" and frozen_text is None:
        raise ValueError(f"init={init!r} needs access to the frozen text encoder")
    contexts = []
    layer_inputs = (
        frozen_text.layer_inputs(INIT_TEXT) if init == "layerwise" and frozen_text else None
    )
    for d in range(depth):
        if d == 0 and init in ("embedding", "layerwise") and frozen_text is not None:
            rows = frozen_text.token_embeddings(INIT_TEXT)
            contexts.append(nn.Parameter(_fit_rows(rows.detach().float(), n_ctx)))
        elif layer_inputs is not None and d < len(layer_inputs):
            contexts.append(nn.Parameter(_fit_rows(layer_inputs[d].detach().float(), n_ctx)))
        else:
            contexts.append(gaussian(n_ctx, width))
    return nn.ParameterList(contexts)


def low_rank_or_mlp(
    in_dim: int,
    hidden: int,
    out_dim: int,
    *,
    use_lora: bool,
    final_norm: bool = False,
    norm_bias: bool = True,
) -> nn.Sequential:
    """A projection ``in_dim -> out_dim`` through ``hidden`` units.

    With ``use_lora`` it is a rank-``hidden`` linear map (two linear layers, no nonlinearity,
    the first without bias): cheap and easy to keep close to a linear coupling. Otherwise it is a
    two-layer MLP with ReLU, as in CoCoOp's meta-network.

    ``final_norm`` ends the projection with a LayerNorm over ``out_dim`` (with a bias only if
    ``norm_bias``), which keeps the output at a fixed scale whatever the input's scale: the
    TuneVLSeg authors' projection heads do this. The last linear layer then has no bias, since
    the normalisation would remove it anyway.
    """
    if use_lora:
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=False)]
    else:
        layers = [nn.Linear(in_dim, hidden), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden, out_dim, bias=not final_norm))
    if final_norm:
        layers.append(nn.LayerNorm(out_dim, bias=norm_bias))
    return nn.Sequential(*layers)
