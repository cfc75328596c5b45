"""Prompted CRIS: CoOp / CoCoOp context in CRIS's CLIP text encoder, plus baselines.

Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation" (CVPR 2022), prompt-tuned as in
TuneVLSeg (Adhikari et al., ACCV 2024). :class:`PromptedCRIS` has the same API as
:class:`tunevlseg.models.clipseg.PromptedCLIPSeg`, so training, tuning and the CLI treat both
alike.

* Text: :meth:`PromptedCRIS.tokenize` puts ``n_ctx`` placeholder tokens right after BOS; the
  learner's layer-0 context replaces their token embeddings (positions are then added) and its
  deeper context replaces the states at those positions at the input of text layers
  ``1..J-1`` (J = ``prompt_depth``, clamped to the 12 text layers). The mask stays causal and
  the sentence embedding is still read at EOS. Both CRIS outputs of the text encoder change with
  the prompts: the word states (the decoder's keys and values) and the sentence embedding (the
  neck's gate and the projector's dynamic kernel).
* Vision: CRIS's image encoder is a ResNet; there are no tokens to prompt, so visual and
  multimodal learners are refused. CoCoOp conditions on CLIP's attention-pooled image vector
  (``embed_dim``, 1024 for RN50), computed in the same attention pass as CRIS's dense map.
* Upsampler: by default the learnable upsampler reads the projector's stride-4 feature map
  (half the decoder width, 256 channels) and refines the logits at the input resolution. With
  ``upsampler_input="decoder"`` it reads the decoder output instead (stride 16, 512 channels),
  narrowed to 64 channels by a 1x1 convolution without bias before the upsampling: the
  TuneVLSeg authors' CRIS head (docs/fidelity.md row 26).

For prompt learners every CRIS weight is frozen and :meth:`PromptedCRIS.train` keeps CRIS in
eval mode (BatchNorm statistics and dropout as at inference). ``e2e`` trains everything except
CLIP's unused ``logit_scale``; ``decoder`` trains the neck, the decoder and the projector (with
their BatchNorm statistics and dropout) on the frozen image and text encoders; ``zeroshot``
trains nothing and has no upsampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from tunevlseg.catalog import LEARNERS, load_object
from tunevlseg.learners.base import EncoderDims, Learner, Prompts
from tunevlseg.models.block_rotation import AdaptedWeight, EncoderWeights
from tunevlseg.models.context_tokens import ContextTokenizerMixin, placeholder_token_id
from tunevlseg.models.cris.checkpoint import LoadedCRIS, load_cris
from tunevlseg.models.cris.clip_text import TextBlock, causal_mask
from tunevlseg.models.cris.model import CRIS
from tunevlseg.models.trainable import TrainableParametersMixin
from tunevlseg.models.upsampler import LearnableUpsampler, PaddingMode

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["UPSAMPLER_INPUTS", "PromptedCRIS", "UpsamplerInput", "build_prompted_cris"]

UpsamplerInput = Literal["projector", "decoder"]
UPSAMPLER_INPUTS: tuple[UpsamplerInput, ...] = ("projector", "decoder")
DECODER_UPSAMPLER_CHANNELS = 64
"""Channels the decoder output is narrowed to before the upsampling (the authors' choice)."""

VISION_REFUSAL = (
    "learner {name!r} prompts the image encoder, but CRIS's image encoder is a ResNet: there are "
    "no tokens to prompt. Use a text learner (coop, cocoop) or a baseline (zeroshot, e2e, "
    "decoder) with CRIS, or a ViT model (clipseg) for visual and multimodal learners."
)


class _FrozenTextAccess:
    """The :class:`tunevlseg.learners.base.FrozenText` view of CRIS's text encoder."""

    def __init__(self, owner: PromptedCRIS) -> None:
        self._owner = owner

    def _word_ids(self, text: str) -> list[int]:
        return list(self._owner.tokenizer(text)["input_ids"][1:-1])  # drop BOS and EOS

    @torch.no_grad()
    def token_embeddings(self, text: str) -> Tensor:
        embedding = self._owner.cris.backbone.token_embedding
        ids = torch.tensor(self._word_ids(text), device=embedding.weight.device)
        return embedding(ids).detach().cpu()

    @torch.no_grad()
    def layer_inputs(self, text: str) -> list[Tensor]:
        backbone = self._owner.cris.backbone
        tokenizer = self._owner.tokenizer
        words = self._word_ids(text)
        device = backbone.token_embedding.weight.device
        sequence = [tokenizer.bos_token_id, *words, tokenizer.eos_token_id]
        ids = torch.tensor([sequence], device=device)
        hidden = backbone.token_embedding(ids) + backbone.positional_embedding[: ids.shape[1]]
        mask = causal_mask(ids.shape[1], hidden.dtype, device)
        inputs = []
        for block in backbone.transformer.resblocks:
            inputs.append(hidden[0, 1 : 1 + len(words)].detach().cpu())
            hidden = block(hidden, mask)
        return inputs


class PromptedCRIS(TrainableParametersMixin, ContextTokenizerMixin):
    """CRIS whose text encoder takes a context learner's prompts (see the module docstring).

    The training API comes from :class:`tunevlseg.models.trainable.TrainableParametersMixin`,
    ``tokenize`` from :class:`tunevlseg.models.context_tokens.ContextTokenizerMixin`.

    Attributes:
        cris: the CRIS network (frozen for prompt learners).
        learner: the context learner (owns every prompt tensor).
        upsampler: the learnable upsampler, or ``None``.
        tokenizer: the checkpoint's CLIP tokenizer (use :meth:`tokenize`, not it directly).
        image_size: working resolution in pixels (416 for CRIS-R50).
        image_mean, image_std: CLIP's per-channel normalisation for the data pipeline.
        dims: the sizes the learner sees (text 512 x 12 layers, projection 1024 for RN50).
    """

    backbone_attribute: ClassVar[str] = "cris"
    decoder_parts: ClassVar[tuple[str, ...]] = ("neck", "decoder", "proj")
    """What follows the encoders in :class:`CRIS`: the parts the ``decoder`` learner trains."""

    def __init__(
        self,
        loaded: LoadedCRIS,
        learner_cls: type[Learner],
        learner_params: dict[str, Any],
        *,
        n_ctx: int = 4,
        use_upsampler: bool = True,
        upsampler_padding: PaddingMode = "zeros",
        upsampler_input: UpsamplerInput = "projector",
    ) -> None:
        super().__init__()
        if learner_cls.prompts_vision:
            raise ValueError(VISION_REFUSAL.format(name=learner_cls.name))
        if upsampler_input not in UPSAMPLER_INPUTS:
            raise ValueError(
                f"upsampler_input must be one of {UPSAMPLER_INPUTS}, got {upsampler_input!r}"
            )
        self.upsampler_input: UpsamplerInput = upsampler_input
        self.cris: CRIS = loaded.model
        self.tokenizer: PreTrainedTokenizerBase = loaded.tokenizer
        config = loaded.config
        self.image_size = int(loaded.image_size)
        self.image_mean = tuple(loaded.image_mean)
        self.image_std = tuple(loaded.image_std)
        self._max_length = int(config.word_length)
        self.dims = EncoderDims(
            text_width=config.text_width,
            vision_width=config.vision_width * 32,
            text_layers=config.text_layers,
            vision_layers=0,
            projection_dim=config.embed_dim,
            patch_size=32,
        )
        self.learner: Learner = learner_cls(
            self.dims, n_ctx=n_ctx, frozen_text=_FrozenTextAccess(self), **learner_params
        )
        self.n_text_ctx = n_ctx if learner_cls.prompts_text else 0
        if self.n_text_ctx > self._max_length - 3:
            raise ValueError(
                f"n_ctx={n_ctx} leaves no room for words in CRIS's {self._max_length} positions"
            )
        self._placeholder_id = placeholder_token_id(self.tokenizer)
        use_upsampler = use_upsampler and learner_cls.trains
        self.upsampler = (
            self._make_upsampler(config.projector_dim, config.vis_dim, upsampler_padding)
            if use_upsampler
            else None
        )

        self.cris.requires_grad_(learner_cls.trains_backbone)
        if self.trains_decoder:
            for part in self.decoder_parts:
                getattr(self.cris, part).requires_grad_(True)
        self.cris.backbone.logit_scale.requires_grad_(False)  # contrastive only; never runs
        if not learner_cls.trains:
            self.requires_grad_(False)
        if self.adapts_encoder_weights:
            self.learner.attach(self.encoder_weights())  # type: ignore[operator]
        self.train(False)

    def _make_upsampler(
        self, projector_dim: int, decoder_dim: int, padding: PaddingMode
    ) -> LearnableUpsampler:
        if self.upsampler_input == "decoder":
            return LearnableUpsampler(
                decoder_dim, padding_mode=padding, hidden_channels=DECODER_UPSAMPLER_CHANNELS
            )
        return LearnableUpsampler(projector_dim, padding_mode=padding)

    @property
    def trains_decoder(self) -> bool:
        """The learner trains neck, decoder and projector on frozen encoders (``decoder``)."""
        return bool(getattr(type(self.learner), "trains_decoder", False))

    def train(self, mode: bool = True) -> Self:
        """Keep the frozen encoders in eval mode, but let trained decoding parts follow ``mode``.

        The mixin puts all of CRIS in eval mode when its backbone is frozen. The parts the
        ``decoder`` learner trains must switch back: their BatchNorm layers (neck, projector)
        should learn batch statistics for the new data, and the decoder's dropout should act,
        as in a full fine-tuning of those parts; the ResNet's statistics stay pretrained.
        """
        super().train(mode)
        if self.trains_decoder:
            for part in self.decoder_parts:
                getattr(self.cris, part).train(mode)
        return self

    def _trained_buffers(self) -> dict[str, Tensor]:
        """Also the BatchNorm statistics of the parts ``decoder`` trains.

        They change in training as much as the weights do, and the predictions depend on them,
        so ``trainable_state_dict`` must carry them for a saved state to reproduce the model.
        """
        buffers = super()._trained_buffers()
        if self.trains_decoder:
            parameters = {name for name, _ in self.named_parameters()}
            prefixes = tuple(f"{self.backbone_attribute}.{part}." for part in self.decoder_parts)
            buffers.update(
                (name, value)
                for name, value in self.state_dict(keep_vars=True).items()
                if name.startswith(prefixes) and name not in parameters
            )
        return buffers

    def encoder_weights(self) -> EncoderWeights:
        """The frozen weights a weight-adapting learner (``hclip``) may change: every text
        layer's stacked q/k/v, attention output and MLP weights. The ResNet has none."""
        return EncoderWeights(
            text=[
                [
                    AdaptedWeight(block.attn, "in_proj_weight", "qkv", groups=3),
                    AdaptedWeight(block.attn.out_proj, "weight", "out"),
                    AdaptedWeight(block.mlp.get_submodule("c_fc"), "weight", "fc1"),
                    AdaptedWeight(block.mlp.get_submodule("c_proj"), "weight", "fc2"),
                ]
                for block in cast(list[TextBlock], self.cris.backbone.transformer.resblocks)
            ]
        )

    def encode_image(
        self, pixel_values: Tensor, *, pooled: bool = False
    ) -> tuple[list[Tensor], Tensor | None]:
        """``([c3, c4, c5], CLIP pooled vector or None)`` from the (frozen) ResNet."""
        with self._grad_context(False):
            return self.cris.encode_image(pixel_values, pooled=pooled)

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor, prompts: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Word states and sentence embedding with the context at text layers ``0..J-1``."""
        with self._grad_context(bool(prompts)):
            return self.cris.backbone.encode_text(input_ids, attention_mask, prompts)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Segmentation logits ``(B, 1, H, W)`` at the input resolution."""
        learner = self.learner
        features, vector = self.encode_image(pixel_values, pooled=learner.needs_image_feature)
        prompts: Prompts = learner(vector) if learner.needs_image_feature else learner(None)
        words, sentence = self.encode_text(input_ids, attention_mask, prompts.text)
        logits, upsampler_features = self._decode(features, words, sentence, attention_mask)
        logits = F.interpolate(
            logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
        )
        if self.upsampler is not None:
            logits = self.upsampler(upsampler_features, logits)
        return logits

    def _decode(
        self, features: list[Tensor], words: Tensor, sentence: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Stride-4 logits and the map the upsampler reads (see ``upsampler_input``).

        :meth:`CRIS.decode` runs the same three parts but keeps the decoder output to itself,
        so the decoder input variant runs them here one by one.
        """
        if self.upsampler_input == "projector":
            return self.cris.decode(features, words, sentence, attention_mask)
        cris = self.cris
        decoded = cris.decoder(cris.neck(features, sentence), words, attention_mask == 0)
        logits, _ = cris.proj(decoded, sentence)
        return logits, decoded


def resolve_learner(learner: str, learner_params: dict[str, Any]) -> type[Learner]:
    """The learner class for CRIS, after checking name, modality and parameters.

    Raises:
        ValueError: unknown learner, a visual / multimodal learner, or bad parameters.
    """
    if learner not in LEARNERS:
        raise ValueError(f"unknown learner {learner!r}; valid: {', '.join(LEARNERS)}")
    if LEARNERS[learner].modality in ("visual", "multimodal"):
        raise ValueError(VISION_REFUSAL.format(name=learner))
    learner_cls: type[Learner] = load_object(LEARNERS[learner].implementation)
    learner_cls.resolve_params(dict(learner_params))
    return learner_cls


def build_prompted_cris(
    pretrained: str,
    learner: str,
    learner_params: dict[str, Any],
    *,
    n_ctx: int = 4,
    use_upsampler: bool = True,
    upsampler_padding: PaddingMode = "zeros",
    upsampler_input: UpsamplerInput = "projector",
) -> PromptedCRIS:
    """Load CRIS offline and attach a context learner.

    Args:
        pretrained: a CRIS model folder or a hub id already in the HF cache.
        learner: ``coop``, ``cocoop``, ``zeroshot``, ``e2e`` or ``decoder``.
        learner_params: the learner's hyperparameters (missing ones take its ``defaults``).
        n_ctx: number of context tokens per prompted text layer.
        use_upsampler: add the learnable upsampler (ignored for ``zeroshot``).
        upsampler_padding: border padding of the upsampler's convolution, ``"zeros"`` or
            ``"replicate"`` (the authors').
        upsampler_input: the map the upsampler reads: ``"projector"`` (its stride-4 feature
            map) or ``"decoder"`` (the decoder output, as the authors' CRIS head).

    Raises:
        ValueError: unknown or unsupported learner, or invalid learner parameters (checked
            before any weights load).
        tunevlseg.models.loading.ModelNotFoundError: the model is not available offline.
        tunevlseg.models.cris.checkpoint.CheckpointMismatchError: weights do not fit the config.
    """
    learner_cls = resolve_learner(learner, learner_params)
    loaded = load_cris(pretrained)
    return PromptedCRIS(
        loaded,
        learner_cls,
        dict(learner_params),
        n_ctx=n_ctx,
        use_upsampler=use_upsampler,
        upsampler_padding=upsampler_padding,
        upsampler_input=upsampler_input,
    )
