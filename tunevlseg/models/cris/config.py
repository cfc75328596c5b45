"""The sizes of a CRIS model, stored as ``config.json`` beside its weights.

CRIS checkpoints (Wang et al., CVPR 2022) are bare PyTorch state dicts; the sizes are implied by
the CLIP variant and the training config. We write them down explicitly so a model folder is
self-describing and the tiny test model goes through exactly the same code as the real one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["MODEL_TYPE", "CRISConfig", "real_size_cris_config"]

MODEL_TYPE = "cris"


@dataclass(frozen=True)
class CRISConfig:
    """Widths, depths and resolutions of CRIS with a CLIP ModifiedResNet image encoder.

    Defaults are CRIS-R50 (CLIP RN50: 1024-d embeddings, 512-wide 12-layer text transformer) at
    416 px, the resolution CRIS was trained at.

    Attributes:
        image_size: working resolution; must be a multiple of 32 (the encoder's stride).
        clip_image_size: CLIP's pretraining resolution; the attention pool's position grid is
            ``clip_image_size // 32`` and is resized bicubically to the actual feature grid.
        vision_layers: bottleneck blocks per ResNet stage (RN50: 3, 4, 6, 3).
        vision_width: stem width (64); stage ``i`` outputs ``vision_width * 4 * 2**i`` channels.
        vision_heads: heads of the attention pool (``vision_width * 32 // 64`` in CLIP).
        embed_dim: CLIP's joint embedding size (1024 for RN50): the attention pool's output
            channels and the sentence embedding size.
        vocab_size, context_length: text vocabulary and the position table length (77).
        word_length: the most tokens a prompt may have after tokenisation (BOS, context
            placeholders, words, EOS); longer prompts are truncated keeping EOS.
        text_width, text_layers, text_heads: the CLIP text transformer.
        fpn_out: output channels of the neck's three levels (stride 8, 16, 32 inputs).
        decoder_layers, decoder_heads, decoder_ffn, dropout: the vision-language decoder. Its
            width is ``fpn_out[1]``, which must equal ``text_width`` (the word features are the
            unprojected text states).
        kernel_size: the projector's dynamic convolution kernel.
    """

    image_size: int = 416
    clip_image_size: int = 224
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    vision_width: int = 64
    vision_heads: int = 32
    embed_dim: int = 1024
    vocab_size: int = 49408
    context_length: int = 77
    word_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    fpn_out: tuple[int, int, int] = (256, 512, 1024)
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    dropout: float = 0.1
    kernel_size: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "vision_layers", tuple(int(n) for n in self.vision_layers))
        object.__setattr__(self, "fpn_out", tuple(int(n) for n in self.fpn_out))
        problems = []
        if len(self.vision_layers) != 4:
            problems.append("vision_layers must list 4 stages")
        if self.image_size % 32 or self.clip_image_size % 32:
            problems.append("image_size and clip_image_size must be multiples of 32")
        if self.vision_width * 32 % self.vision_heads:
            problems.append("vision_heads must divide the ResNet feature width vision_width * 32")
        if self.text_width % self.text_heads:
            problems.append("text_heads must divide text_width")
        if self.vis_dim != self.text_width:
            problems.append(
                f"fpn_out[1] ({self.vis_dim}) must equal text_width ({self.text_width}): the "
                "decoder attends from vision to the unprojected word features"
            )
        if self.vis_dim % 4 or self.vis_dim % self.decoder_heads:
            problems.append("fpn_out[1] must be divisible by 4 and by decoder_heads")
        if self.fpn_out[2] != self.embed_dim:
            problems.append("fpn_out[2] must equal embed_dim (the neck gates by the sentence)")
        if not 3 <= self.word_length <= self.context_length:
            problems.append("word_length must be in 3..context_length")
        if problems:
            raise ValueError("invalid CRIS config: " + "; ".join(problems))

    @property
    def feature_widths(self) -> tuple[int, int, int]:
        """Channels of the layer-2, layer-3 and attention-pooled layer-4 features."""
        return (self.vision_width * 8, self.vision_width * 16, self.embed_dim)

    @property
    def vis_dim(self) -> int:
        """Width of the decoder (the neck's middle level)."""
        return self.fpn_out[1]

    @property
    def projector_dim(self) -> int:
        """Channels of the projector's last feature map (the upsampler reads it)."""
        return self.vis_dim // 2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["vision_layers"] = list(self.vision_layers)
        data["fpn_out"] = list(self.fpn_out)
        return {"model_type": MODEL_TYPE, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CRISConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        data = dict(data)
        model_type = data.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"not a CRIS config: model_type={model_type!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown CRIS config key(s): {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> CRISConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def real_size_cris_config() -> CRISConfig:
    """CRIS-R50 as released (the defaults, spelled out for readers and tests)."""
    return CRISConfig()
