"""CRIS: CLIP-driven referring image segmentation, assembled from its parts.

Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation" (CVPR 2022)::

    image ─► ModifiedResNet ─► [c3, c4, dense attention pool c5] ─┐
    text  ─► CLIP text transformer ─► words (B, L, 512), sentence (B, 1024) ─┤
                    neck(features, sentence) ─► decoder(map, words) ─► projector(map, sentence)
                                                                 ─► logits at stride 4

The module tree mirrors the released checkpoints (``backbone.visual``, ``backbone.transformer``,
``neck``, ``decoder``, ``proj``), so their state dicts load key for key once the DDP prefix is
stripped (see :mod:`tunevlseg.models.cris.checkpoint`).

:meth:`CLIPBackbone.encode_text` takes optional *context* tensors: the prompt learners' vectors
that replace the placeholder positions after BOS at the input of text layers ``0..J-1``. Keeping
that in one place means the plain forward and the prompted forward run the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunevlseg.models.cris.clip_resnet import ModifiedResNet
from tunevlseg.models.cris.clip_text import TextTransformer, causal_mask
from tunevlseg.models.cris.config import CRISConfig
from tunevlseg.models.cris.decoder import VisionLanguageDecoder
from tunevlseg.models.cris.neck import TextGatedFPN
from tunevlseg.models.cris.projector import Projector

__all__ = ["CRIS", "CLIPBackbone", "replace_after_bos"]


def replace_after_bos(hidden: Tensor, context: Tensor) -> Tensor:
    """Put ``context`` (``(n, W)`` shared or ``(B, n, W)`` per image) at positions ``1..n``.

    Out of place, so autograd reaches the context and never the frozen states it replaces.
    """
    if context.dim() == 2:
        context = context.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    n = context.shape[1]
    return torch.cat([hidden[:, :1], context.to(hidden.dtype), hidden[:, 1 + n :]], dim=1)


class CLIPBackbone(nn.Module):
    """CLIP RN image encoder plus text transformer, with CLIP's checkpoint names."""

    def __init__(self, config: CRISConfig) -> None:
        super().__init__()
        self.visual = ModifiedResNet(
            config.vision_layers,
            config.vision_width,
            config.vision_heads,
            config.embed_dim,
            config.clip_image_size,
        )
        self.transformer = TextTransformer(config.text_width, config.text_layers, config.text_heads)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(
            torch.empty(config.context_length, config.text_width)
        )
        self.ln_final = nn.LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim))
        # Unused by segmentation; kept so released checkpoints load strictly.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor, context: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """Word states ``(B, L, text_width)`` and the sentence embedding ``(B, embed_dim)``.

        Sequences are right-padded with EOS as their last real token; the sentence is the
        projected state at EOS (``attention_mask.sum() - 1``), which prompts never move.
        """
        embeds = self.token_embedding(input_ids)
        if context:
            embeds = replace_after_bos(embeds, context[0])
        hidden = embeds + self.positional_embedding[: input_ids.shape[1]].to(embeds.dtype)
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
        for index, block in enumerate(self.transformer.resblocks):
            if 1 <= index < len(context):
                hidden = replace_after_bos(hidden, context[index])
            hidden = block(hidden, mask)
        words = self.ln_final(hidden)
        eos = (attention_mask.sum(dim=-1) - 1).clamp(min=0).to(words.device)
        sentence = words[torch.arange(words.shape[0], device=words.device), eos]
        return words, sentence @ self.text_projection.to(words.dtype)


class CRIS(nn.Module):
    """The full CRIS network (see the module docstring).

    Attributes:
        config: the sizes.
        backbone, neck, decoder, proj: the four parts, named as in the checkpoints.
    """

    def __init__(self, config: CRISConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = CLIPBackbone(config)
        self.neck = TextGatedFPN(config.feature_widths, config.fpn_out)
        self.decoder = VisionLanguageDecoder(
            config.decoder_layers,
            config.vis_dim,
            config.decoder_heads,
            config.decoder_ffn,
            config.dropout,
        )
        self.proj = Projector(config.embed_dim, config.projector_dim, config.kernel_size)
        self.init_weights()

    def init_weights(self) -> None:
        """CLIP-like scales for the tensors PyTorch's module defaults do not cover.

        Only matters for random models (tests, demo): real weights come from a checkpoint. On
        the meta device it does nothing: meta random kernels are Python code whose first use
        imports sympy (seconds), and a meta model gets its tensors from a checkpoint anyway.
        """
        backbone = self.backbone
        if backbone.token_embedding.weight.is_meta:
            return
        text_width = self.config.text_width
        with torch.no_grad():
            nn.init.normal_(backbone.token_embedding.weight, std=0.02)
            nn.init.normal_(backbone.positional_embedding, std=0.01)
            nn.init.normal_(backbone.text_projection, std=text_width**-0.5)
            pool = backbone.visual.attnpool
            width = pool.positional_embedding.shape[1]
            nn.init.normal_(pool.positional_embedding, std=width**-0.5)

    def encode_image(
        self, pixel_values: Tensor, *, pooled: bool = False
    ) -> tuple[list[Tensor], Tensor | None]:
        """``([c3, c4, c5], pooled CLIP vector or None)``; see :class:`ModifiedResNet`."""
        return self.backbone.visual(pixel_values, pooled=pooled)

    def decode(
        self, features: list[Tensor], words: Tensor, sentence: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Neck, decoder and projector: stride-4 logits and the projector's feature map."""
        fused = self.neck(features, sentence)
        decoded = self.decoder(fused, words, attention_mask == 0)
        return self.proj(decoded, sentence)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits ``(B, 1, H, W)`` bilinearly resized to the input resolution."""
        features, _ = self.encode_image(pixel_values)
        words, sentence = self.backbone.encode_text(input_ids, attention_mask)
        logits, _ = self.decode(features, words, sentence, attention_mask)
        return F.interpolate(
            logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
        )
