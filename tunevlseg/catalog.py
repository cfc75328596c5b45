"""What models and learners exist, as plain data.

The experiment loader, the grid expansion and the CLI only need names, kinds and defaults; they
must not import torch or transformers (that costs ~10 s per process). The heavy implementations
are imported lazily from the dotted paths recorded here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

ImageEncoder = Literal["vit", "resnet"]
Modality = Literal["text", "visual", "multimodal", "none"]


@dataclass(frozen=True)
class ModelInfo:
    """A segmentation model family the toolkit can prompt-tune."""

    name: str
    image_encoder: ImageEncoder
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: str  # "module:function" building the prompted model
    default_pretrained: str
    tiny_writer: str  # "module:function(folder, *, image_size)" writing a tiny random model


@dataclass(frozen=True)
class LearnerInfo:
    """A context learner (or baseline) and which encoders it prompts."""

    name: str
    title: str
    modality: Modality
    implementation: str  # "module:Class"
    trains: bool = True


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MODELS: dict[str, ModelInfo] = {
    "clipseg": ModelInfo(
        name="clipseg",
        image_encoder="vit",
        image_size=352,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        builder="tunevlseg.models.clipseg:build_prompted_clipseg",
        default_pretrained="CIDAS/clipseg-rd64-refined",
        tiny_writer="tunevlseg.models.tiny:write_tiny_clipseg",
    ),
    "cris": ModelInfo(
        name="cris",
        image_encoder="resnet",
        image_size=416,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        builder="tunevlseg.models.cris:build_prompted_cris",
        default_pretrained="cris-r50",
        tiny_writer="tunevlseg.models.cris.tiny:write_tiny_cris",
    ),
}

LEARNERS: dict[str, LearnerInfo] = {
    "coop": LearnerInfo("coop", "CoOp", "text", "tunevlseg.learners.coop:CoOp"),
    "cocoop": LearnerInfo("cocoop", "CoCoOp", "text", "tunevlseg.learners.cocoop:CoCoOp"),
    "vpt": LearnerInfo("vpt", "VPT", "visual", "tunevlseg.learners.vpt:VPT"),
    "maple": LearnerInfo("maple", "MaPLe", "multimodal", "tunevlseg.learners.maple:MaPLe"),
    "shared_separate": LearnerInfo(
        "shared_separate",
        "Shared Separate",
        "multimodal",
        "tunevlseg.learners.shared_separate:SharedSeparate",
    ),
    "shared_attention": LearnerInfo(
        "shared_attention",
        "Shared Attention",
        "multimodal",
        "tunevlseg.learners.shared_attention:SharedAttention",
    ),
    "e2e": LearnerInfo("e2e", "End-to-end", "none", "tunevlseg.learners.baselines:EndToEnd"),
    "zeroshot": LearnerInfo(
        "zeroshot", "Zero-shot", "none", "tunevlseg.learners.baselines:ZeroShot", trains=False
    ),
}


def is_viable(model: str, learner: str) -> bool:
    """The paper's rule: visual and multimodal prompts need a ViT image encoder."""
    if LEARNERS[learner].modality in ("visual", "multimodal"):
        return MODELS[model].image_encoder == "vit"
    return True


def load_object(dotted: str) -> Any:
    """Import ``module:attribute`` lazily."""
    module_name, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
