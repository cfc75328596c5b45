"""Prompted CLIPSeg on Hugging Face ``CLIPSegForImageSegmentation``.

Lüddecke and Ecker, "Image Segmentation Using Text and Image Prompts" (CVPR 2022), prompt-tuned
as in TuneVLSeg (Adhikari et al., ACCV 2024).

HF's own forward runs both CLIP encoders under ``torch.no_grad()``, so prompts inserted there
would never learn. :class:`PromptedCLIPSeg` therefore re-runs the encoder loops itself over the
HF submodules (embeddings, ``encoder.layers[i]``, final norms, projections, decoder parts) and
inserts the learner's prompts on the way:

* Text: :meth:`PromptedCLIPSeg.tokenize` puts ``n_ctx`` placeholder tokens right after BOS (only
  for learners that prompt text). Their token embeddings are replaced by the learner's layer-0
  context (positions are then added as usual), and the hidden states at those positions are
  replaced again at the input of text layers ``1..J-1``. The attention stays causal (we pass an
  explicit causal + padding mask: an sdpa layer called without one attends both ways), and the
  pooled token is still the EOS token, whose index does not move.
* Vision: ``n_ctx`` visual prompts are appended after the patch tokens before ``pre_layrnorm``
  (as MaPLe does) and replaced at the input of layers ``1..J-1``; after layer J-1 they travel on
  "as if they were token embeddings" (TuneVLSeg eq. 8). Only layers up to the last of
  ``extract_layers`` run (the decoder reads ``hidden_states[i + 1]`` for ``i`` in
  ``extract_layers``); a learner that needs the pooled image feature (CoCoOp) makes all run.
* Decoder: by default (``vision_prompts_in_decoder=True``, the paper's protocol, as in the
  authors' code) the extracted activations keep the prompt tokens, so the decoder's ``reduces``,
  FiLM and transformer layers attend over CLS + patches + prompts; CLS and prompts are dropped
  only before the reshape to the patch grid (HF drops CLS there too). With ``False`` the prompts
  are dropped before the decoder, which then sees exactly the tokens it was trained on.
* Depth J is clamped per encoder to the layers that run: 12 text and 10 vision layers for
  ``CIDAS/clipseg-rd64*``, so J = 11 prompts 11 text and 10 vision layers.
* The decoder runs part by part, so the learnable upsampler can read its last feature map
  (always the ``(B, reduce_dim, h, w)`` map of the patch grid, prompts or not).
* Optional learner hooks (``vlpt``, :mod:`tunevlseg.learners.vlpt`): a learner whose class sets
  ``takes_decoder_width`` gets ``decoder_width=reduce_dim``; its ``n_ctx_text`` sets the text
  placeholders; with ``adapts_condition`` the vision encoder runs every layer and
  ``adapt_condition(condition, pooled feature)`` replaces FiLM's condition; its
  ``refine_features`` maps the decoder's last feature map before the transposed convolutions
  and the upsampler.

For prompt learners every CLIPSeg weight is frozen and :meth:`PromptedCLIPSeg.train` keeps the
CLIPSeg submodule in eval mode, so a frozen network behaves exactly as at inference (no dropout)
while the learner and upsampler train. ``e2e`` unfreezes and trains everything; ``decoder``
trains CLIPSeg's decoder (reduces, FiLM, decoder layers, transposed convolutions) with both CLIP
encoders frozen, as HF's own forward did for the authors' "E2E"; ``zeroshot`` has no trainable
tensor and no upsampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor

from tunevlseg.catalog import LEARNERS, load_object
from tunevlseg.learners.base import EncoderDims, Learner, Prompts
from tunevlseg.models.block_rotation import AdaptedWeight, EncoderWeights
from tunevlseg.models.context_tokens import ContextTokenizerMixin, placeholder_token_id
from tunevlseg.models.loading import LoadedCLIPSeg, load_clipseg
from tunevlseg.models.trainable import TrainableParametersMixin
from tunevlseg.models.upsampler import LearnableUpsampler, PaddingMode

if TYPE_CHECKING:
    from transformers import CLIPSegForImageSegmentation, PreTrainedTokenizerBase

__all__ = ["PromptedCLIPSeg", "build_prompted_clipseg", "causal_attention_mask"]


def causal_attention_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive ``(B, 1, L, L)`` mask: causal, and padded keys hidden.

    Position 0 (BOS) is always visible, so no query row is fully masked.
    """
    length = attention_mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def _batched(prompt: Tensor, batch_size: int) -> Tensor:
    """``(n, W)`` shared prompts become ``(B, n, W)``; per-image prompts pass through."""
    return prompt.unsqueeze(0).expand(batch_size, -1, -1) if prompt.dim() == 2 else prompt


def _replace_after_bos(hidden: Tensor, prompt: Tensor) -> Tensor:
    """Put ``prompt`` at positions ``1..n`` of ``hidden`` (out of place, so autograd is simple)."""
    prompt = _batched(prompt, hidden.shape[0]).to(hidden.dtype)
    return torch.cat([hidden[:, :1], prompt, hidden[:, 1 + prompt.shape[1] :]], dim=1)


class _FrozenTextAccess:
    """The :class:`tunevlseg.learners.base.FrozenText` view of a CLIPSeg text encoder."""

    def __init__(self, owner: PromptedCLIPSeg) -> None:
        self._owner = owner

    def _word_ids(self, text: str) -> list[int]:
        ids = self._owner.tokenizer(text)["input_ids"]
        return list(ids[1:-1])  # drop BOS and EOS

    @torch.no_grad()
    def token_embeddings(self, text: str) -> Tensor:
        text_model = self._owner.clipseg.clip.text_model
        weight = text_model.embeddings.token_embedding.weight
        ids = torch.tensor(self._word_ids(text), device=weight.device)
        return text_model.embeddings.token_embedding(ids).detach().cpu()

    @torch.no_grad()
    def layer_inputs(self, text: str) -> list[Tensor]:
        owner = self._owner
        text_model = owner.clipseg.clip.text_model
        device = text_model.embeddings.token_embedding.weight.device
        words = self._word_ids(text)
        tokenizer = owner.tokenizer
        ids = torch.tensor(
            [[tokenizer.bos_token_id, *words, tokenizer.eos_token_id]], device=device
        )
        hidden = text_model.embeddings(input_ids=ids)
        mask = causal_attention_mask(torch.ones_like(ids), hidden.dtype)
        inputs = []
        for layer in text_model.encoder.layers:
            inputs.append(hidden[0, 1 : 1 + len(words)].detach().cpu())
            hidden = layer(hidden, mask)
        return inputs


class PromptedCLIPSeg(TrainableParametersMixin, ContextTokenizerMixin):
    """CLIPSeg whose encoders take the prompts of a context learner (see the module docstring).

    The training API (``train``, ``param_groups``, ``trainable_state_dict``, ...) comes from
    :class:`tunevlseg.models.trainable.TrainableParametersMixin`, ``tokenize`` from
    :class:`tunevlseg.models.context_tokens.ContextTokenizerMixin`.

    Attributes:
        clipseg: the HF ``CLIPSegForImageSegmentation`` (frozen for prompt learners).
        learner: the context learner (owns every prompt tensor).
        upsampler: the learnable upsampler, or ``None``.
        tokenizer: the checkpoint's CLIP tokenizer (use :meth:`tokenize`, not it directly).
        image_size: working resolution in pixels (352 for ``CIDAS/clipseg-rd64*``).
        image_mean, image_std: per-channel normalisation the data pipeline must apply.
        vision_prompts_in_decoder: visual prompt tokens go through the decoder (the paper's
            protocol) rather than being dropped before it.
    """

    backbone_attribute: ClassVar[str] = "clipseg"

    def __init__(
        self,
        loaded: LoadedCLIPSeg,
        learner_cls: type[Learner],
        learner_params: dict[str, Any],
        *,
        n_ctx: int = 4,
        use_upsampler: bool = True,
        vision_prompts_in_decoder: bool = True,
        upsampler_padding: PaddingMode = "zeros",
    ) -> None:
        super().__init__()
        self.vision_prompts_in_decoder = bool(vision_prompts_in_decoder)
        self.clipseg: CLIPSegForImageSegmentation = loaded.model
        self.tokenizer: PreTrainedTokenizerBase = loaded.tokenizer
        self.image_size = int(loaded.image_size)
        self.image_mean = tuple(loaded.image_mean)
        self.image_std = tuple(loaded.image_std)
        from transformers import CLIPSegTextConfig, CLIPSegVisionConfig

        config = self.clipseg.config
        text, vision = config.text_config, config.vision_config
        if not isinstance(text, CLIPSegTextConfig) or not isinstance(vision, CLIPSegVisionConfig):
            raise TypeError("the CLIPSeg model's config lacks its text or vision config")
        self.extract_layers = tuple(int(i) for i in config.extract_layers)
        self.patch_size = int(vision.patch_size)  # type: ignore[arg-type]  # an int in CLIPSeg
        if not isinstance(text.eos_token_id, int):
            raise TypeError(
                f"the text config's eos_token_id is {text.eos_token_id!r}, not a token id"
            )
        self._eos_token_id = text.eos_token_id
        self._max_length = int(text.max_position_embeddings)
        self.dims = EncoderDims(
            text_width=text.hidden_size,
            vision_width=vision.hidden_size,
            text_layers=text.num_hidden_layers,
            vision_layers=max(self.extract_layers) + 1,
            projection_dim=int(config.projection_dim or 0),
            patch_size=self.patch_size,
        )
        if learner_cls.needs_image_feature and learner_cls.prompts_vision:
            raise ValueError(
                "a learner conditioned on the image feature cannot prompt the vision encoder"
            )

        # vlpt's hook: a learner with a block on the decoder's map is told its channels.
        decoder_width = (
            {"decoder_width": int(config.reduce_dim)}
            if getattr(learner_cls, "takes_decoder_width", False)
            else {}
        )
        self.learner = learner_cls(
            self.dims,
            n_ctx=n_ctx,
            frozen_text=_FrozenTextAccess(self),
            **decoder_width,
            **learner_params,
        )
        # A learner may use another text token count than n_ctx (vlpt's n_ctx_text).
        n_text = int(getattr(self.learner, "n_ctx_text", n_ctx))
        self.n_text_ctx = n_text if learner_cls.prompts_text else 0
        self._placeholder_id = placeholder_token_id(self.tokenizer)
        use_upsampler = use_upsampler and learner_cls.trains
        self.upsampler = (
            LearnableUpsampler(config.reduce_dim, padding_mode=upsampler_padding)
            if use_upsampler
            else None
        )

        self.clipseg.requires_grad_(learner_cls.trains_backbone)
        if self.trains_decoder:
            self.clipseg.decoder.requires_grad_(True)
        self._freeze_unused()
        if not learner_cls.trains:
            self.requires_grad_(False)
        if self.adapts_encoder_weights:
            self.learner.attach(self.encoder_weights())  # type: ignore[operator]
        self.train(False)

    @property
    def adapts_condition(self) -> bool:
        """The learner adapts the text condition with the pooled image feature (vlpt's text
        adapter: ``learner.adapt_condition``), so every vision layer runs."""
        return bool(getattr(self.learner, "adapts_condition", False))

    @property
    def trains_decoder(self) -> bool:
        """The learner trains the decoder on frozen encoders (``decoder``)."""
        return bool(getattr(type(self.learner), "trains_decoder", False))

    def train(self, mode: bool = True) -> Self:
        """Keep the frozen encoders in eval mode, but let a trained decoder follow ``mode``.

        The mixin puts all of CLIPSeg in eval mode when its backbone is frozen; a decoder that
        trains must switch back, so that any dropout it has acts as in the authors' training
        (HF's model in train mode).
        """
        super().train(mode)
        if self.trains_decoder:
            self.clipseg.decoder.train(mode)
        return self

    # ----------------------------------------------------------------------------- helpers
    def _freeze_unused(self) -> None:
        """Freeze the CLIPSeg parts the segmentation forward never reaches, even for ``e2e``.

        Without the pooled image feature the vision layers after the last extracted one, the
        post-norm and the visual projection do not run; the contrastive ``logit_scale`` never
        does. Freezing them keeps the trainable set equal to what gets gradients (and avoids
        DDP's unused-parameter error).
        """
        clip = self.clipseg.clip
        clip.logit_scale.requires_grad_(False)
        if not (self.learner.needs_image_feature or self.adapts_condition):
            vision = clip.vision_model
            for layer in vision.encoder.layers[max(self.extract_layers) + 1 :]:
                layer.requires_grad_(False)
            vision.post_layernorm.requires_grad_(False)
            clip.visual_projection.requires_grad_(False)

    def _eos_index(self, input_ids: Tensor) -> Tensor:
        """Where CLIP pools: the highest id (old configs, eos id 2) or the first EOS."""
        if self._eos_token_id == 2:
            return input_ids.to(torch.int).argmax(dim=-1)
        return torch.eq(input_ids, self._eos_token_id).int().argmax(dim=-1)

    def encoder_weights(self) -> EncoderWeights:
        """The frozen weights a weight-adapting learner (``hclip``) may change: attention
        q/k/v/out and MLP fc1/fc2 of every text layer and of the vision layers that run."""

        def layer_weights(layer: Any) -> list[AdaptedWeight]:
            attention, mlp = layer.self_attn, layer.mlp
            return [
                AdaptedWeight(attention.q_proj, "weight", "q"),
                AdaptedWeight(attention.k_proj, "weight", "k"),
                AdaptedWeight(attention.v_proj, "weight", "v"),
                AdaptedWeight(attention.out_proj, "weight", "out"),
                AdaptedWeight(mlp.fc1, "weight", "fc1"),
                AdaptedWeight(mlp.fc2, "weight", "fc2"),
            ]

        clip = self.clipseg.clip
        vision_layers = clip.vision_model.encoder.layers[: self.dims.vision_layers]
        return EncoderWeights(
            text=[layer_weights(layer) for layer in clip.text_model.encoder.layers],
            vision=[layer_weights(layer) for layer in vision_layers],
        )

    # ----------------------------------------------------------------------------- encoders
    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor, prompts: list[Tensor]
    ) -> Tensor:
        """Projected text embedding ``(B, projection_dim)`` with prompts at layers ``0..J-1``."""
        text_model = self.clipseg.clip.text_model
        with self._grad_context(bool(prompts)):
            embeds = text_model.embeddings.token_embedding(input_ids)
            if prompts:
                embeds = _replace_after_bos(embeds, prompts[0])
            hidden = text_model.embeddings(inputs_embeds=embeds)
            mask = causal_attention_mask(attention_mask, hidden.dtype)
            for index, layer in enumerate(text_model.encoder.layers):
                if 1 <= index < len(prompts):
                    hidden = _replace_after_bos(hidden, prompts[index])
                hidden = layer(hidden, mask)
            hidden = text_model.final_layer_norm(hidden)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, self._eos_index(input_ids).to(hidden.device)]
            return self.clipseg.clip.text_projection(pooled)

    def encode_image(
        self, pixel_values: Tensor, prompts: list[Tensor], *, pooled: bool = False
    ) -> tuple[list[Tensor], Tensor | None]:
        """Hidden states at ``extract_layers`` and optionally the pooled feature.

        Returns:
            The activations in ``extract_layers`` order, each ``(B, 1 + patches, width)``, or
            ``(B, 1 + patches + n_ctx, width)`` when visual prompts go on to the decoder
            (``vision_prompts_in_decoder``), and the projected CLS feature
            ``(B, projection_dim)`` if ``pooled`` (then all layers run).
        """
        vision_model = self.clipseg.clip.vision_model
        layers = vision_model.encoder.layers
        last = len(layers) - 1 if pooled else max(self.extract_layers)
        with self._grad_context(bool(prompts)):
            hidden = vision_model.embeddings(pixel_values, interpolate_pos_encoding=True)
            n_tokens = hidden.shape[1]
            if prompts:
                hidden = torch.cat(
                    [hidden, _batched(prompts[0], hidden.shape[0]).to(hidden.dtype)], 1
                )
            hidden = vision_model.pre_layrnorm(hidden)
            # The slice keeps the prompt tokens for the decoder or drops them before it.
            kept = hidden.shape[1] if self.vision_prompts_in_decoder else n_tokens
            activations = []
            for index in range(last + 1):
                if 1 <= index < len(prompts):
                    prompt = _batched(prompts[index], hidden.shape[0]).to(hidden.dtype)
                    hidden = torch.cat([hidden[:, :n_tokens], prompt], dim=1)
                hidden = layers[index](hidden, None)
                if index in self.extract_layers:
                    activations.append(hidden[:, :kept])
            feature = None
            if pooled:
                cls = vision_model.post_layernorm(hidden[:, 0])
                feature = self.clipseg.clip.visual_projection(cls)
        return activations, feature

    def decode(
        self, activations: list[Tensor], condition: Tensor, grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """CLIPSeg's decoder, step by step.

        The activations may carry visual prompt tokens after CLS and the patches; the decoder
        layers attend over all of them, and only the ``h·w`` patch tokens are reshaped to the
        grid (CLS and prompts are dropped there, as the authors' code does).

        Returns:
            The decoder logits ``(B, 1, h·s, w·s)`` and its last feature map
            ``(B, reduce_dim, h, w)`` (before the transposed convolutions), for the upsampler.
        """
        decoder = self.clipseg.decoder
        output: Tensor | None = None
        for index, (activation, layer, reduce) in enumerate(
            zip(activations[::-1], decoder.layers, decoder.reduces, strict=True)
        ):
            output = reduce(activation) if output is None else reduce(activation) + output
            if index == decoder.conditional_layer:
                output = (
                    decoder.film_mul(condition)[:, None] * output
                    + decoder.film_add(condition)[:, None]
                )
            output = layer(output, attention_mask=None)
        assert output is not None
        n_patches = grid[0] * grid[1]
        if output.shape[1] < 1 + n_patches:
            raise ValueError(
                f"the decoder got {output.shape[1]} tokens, fewer than CLS + the "
                f"{grid[0]}x{grid[1]} patch grid"
            )
        tokens = output[:, 1 : 1 + n_patches].transpose(1, 2)
        features = tokens.reshape(tokens.shape[0], tokens.shape[1], *grid)
        refine = getattr(self.learner, "refine_features", None)  # vlpt's consensus block
        if refine is not None:
            features = refine(features)
        return decoder.transposed_convolution(features), features

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Segmentation logits ``(B, 1, H, W)`` at the input resolution."""
        learner = self.learner
        if learner.needs_image_feature:
            activations, feature = self.encode_image(pixel_values, [], pooled=True)
            prompts: Prompts = learner(feature)
        else:
            prompts = learner(None)
            activations, feature = self.encode_image(
                pixel_values, prompts.vision, pooled=self.adapts_condition
            )
        condition = self.encode_text(input_ids, attention_mask, prompts.text)
        adapt = getattr(learner, "adapt_condition", None) if self.adapts_condition else None
        if adapt is not None:  # vlpt's text adapter: FiLM reads T_new instead of T
            condition = adapt(condition, feature)
        height, width = pixel_values.shape[-2:]
        grid = (height // self.patch_size, width // self.patch_size)
        logits, features = self.decode(activations, condition, grid)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
        if self.upsampler is not None:
            logits = self.upsampler(features, logits)
        return logits


def build_prompted_clipseg(
    pretrained: str,
    learner: str,
    learner_params: dict[str, Any],
    *,
    n_ctx: int = 4,
    use_upsampler: bool = True,
    vision_prompts_in_decoder: bool = True,
    upsampler_padding: PaddingMode = "zeros",
) -> PromptedCLIPSeg:
    """Load CLIPSeg offline and attach a context learner.

    Args:
        pretrained: a local checkpoint folder or a hub id already in the HF cache.
        learner: a learner name from :data:`tunevlseg.catalog.LEARNERS`.
        learner_params: the learner's hyperparameters (missing ones take the learner's
            ``defaults``).
        n_ctx: number of prompt tokens per prompted layer and encoder.
        use_upsampler: add the learnable upsampler (ignored for ``zeroshot``).
        vision_prompts_in_decoder: keep the visual prompt tokens through the decoder (the
            paper's protocol) instead of dropping them before it; no effect without visual
            prompts.
        upsampler_padding: border padding of the upsampler's convolution, ``"zeros"`` or
            ``"replicate"`` (the authors').

    Raises:
        ValueError: unknown learner or unknown / invalid learner parameters (checked before
            any weights load).
        tunevlseg.models.loading.ModelNotFoundError: the checkpoint is not available offline.
    """
    if learner not in LEARNERS:
        raise ValueError(f"unknown learner {learner!r}; valid: {', '.join(LEARNERS)}")
    learner_cls: type[Learner] = load_object(LEARNERS[learner].implementation)
    learner_cls.resolve_params(dict(learner_params))
    loaded = load_clipseg(pretrained)
    return PromptedCLIPSeg(
        loaded,
        learner_cls,
        dict(learner_params),
        n_ctx=n_ctx,
        use_upsampler=use_upsampler,
        vision_prompts_in_decoder=vision_prompts_in_decoder,
        upsampler_padding=upsampler_padding,
    )
