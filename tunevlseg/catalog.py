"""What models and learners exist, as plain data.

The experiment loader, the grid expansion and the CLI only need names, kinds and defaults; they
must not import torch or transformers (that costs ~10 s per process). The heavy implementations
are imported lazily from the dotted paths recorded here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ImageEncoder = Literal["vit", "resnet"]
Modality = Literal["text", "visual", "multimodal", "none"]


MAX_PROMPT_DEPTH = 11
"""The deepest ``prompt_depth`` a learner takes (Table 2's range ends here). The learners refuse
anything deeper (``tunevlseg.learners.base.MAX_PROMPT_DEPTH``, which a test holds equal to this);
the copy here lets the experiment loader check it without importing torch."""


@dataclass(frozen=True)
class PromptLayers:
    """How many layers of each encoder of one checkpoint run, i.e. how deep prompts can go.

    A ``prompt_depth`` beyond these is clamped per encoder by the prompted models, so such
    depths all train the same model. Knowing the counts without loading the model lets a
    search range be checked when the experiment file is read.

    Attributes:
        text: Layers of the text encoder.
        vision: Layers of the image encoder that run and can take prompts: CLIPSeg runs its
            ViT only up to the decoder's last extracted layer (``max(extract_layers) + 1``);
            0 for CRIS, whose ResNet takes no prompts.
    """

    text: int
    vision: int

    def reach(self, learner: str) -> tuple[int, str]:
        """The deepest ``prompt_depth`` that changes the model for ``learner``, and which
        encoder sets that limit (``"text"`` or ``"vision"``); ``(0, "")`` for baselines."""
        modality = LEARNERS[learner].modality
        if modality == "text":
            return self.text, "text"
        if modality == "visual":
            return self.vision, "vision"
        if modality == "multimodal":  # each encoder is clamped on its own: the deeper one counts
            return (self.text, "text") if self.text >= self.vision else (self.vision, "vision")
        return 0, ""


def _clipseg_layers(config: Mapping[str, Any]) -> PromptLayers:
    """From a CLIPSeg ``config.json`` (transformers' defaults for keys it leaves out)."""
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    extract = config.get("extract_layers") or [3, 6, 9]
    vision_layers = int(vision.get("num_hidden_layers", 12))
    return PromptLayers(
        text=int(text.get("num_hidden_layers", 12)),
        vision=min(vision_layers, max(int(i) for i in extract) + 1),
    )


def _cris_layers(config: Mapping[str, Any]) -> PromptLayers:
    """From a CRIS ``config.json`` (``CRISConfig``'s CRIS-R50 defaults for keys it leaves out)."""
    return PromptLayers(text=int(config.get("text_layers", 12)), vision=0)


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
    title: str = ""  # the name in messages ("CLIPSeg")
    layers_from_config: Callable[[Mapping[str, Any]], PromptLayers] | None = None
    """Reads :class:`PromptLayers` from a model folder's ``config.json`` (plain JSON, no torch)."""
    known_layers: tuple[tuple[str, PromptLayers], ...] = ()
    """Checkpoints whose sizes are known without reading them: hub ids and the default."""
    tiny_layers: PromptLayers | None = None
    """What ``tiny_writer`` writes (synthetic models do not exist before the launch)."""

    def known_layers_of(self, pretrained: str) -> PromptLayers | None:
        """The layer counts of a catalogued checkpoint, or None for any other one."""
        return dict(self.known_layers).get(pretrained)


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
        title="CLIPSeg",
        layers_from_config=_clipseg_layers,
        # ViT-B/16 text and image encoders of 12 layers; extract_layers [3, 6, 9].
        known_layers=(
            ("CIDAS/clipseg-rd64-refined", PromptLayers(text=12, vision=10)),
            ("CIDAS/clipseg-rd64", PromptLayers(text=12, vision=10)),
        ),
        tiny_layers=PromptLayers(text=4, vision=4),  # models.tiny.tiny_clipseg_config
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
        title="CRIS",
        layers_from_config=_cris_layers,
        known_layers=(("cris-r50", PromptLayers(text=12, vision=0)),),  # CLIP RN50's text encoder
        tiny_layers=PromptLayers(text=4, vision=0),  # models.cris.tiny.tiny_cris_config
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
    # LDVC's independent deep text and visual prompts (TuneVLSeg §4.3's "naive" multimodal).
    "vlpt": LearnerInfo("vlpt", "VLPT", "multimodal", "tunevlseg.learners.vlpt:VLPT"),
    # No prompts: it multiplies encoder weights by learned block-diagonal matrices, so it needs
    # no tokens and runs on every model (modality "none"); on CRIS only the text side exists.
    "hclip": LearnerInfo("hclip", "H-CLIP", "none", "tunevlseg.learners.hclip:HCLIP"),
    "e2e": LearnerInfo("e2e", "End-to-end", "none", "tunevlseg.learners.baselines:EndToEnd"),
    # The encoders stay frozen: the authors' CLIPSeg "E2E" (docs/fidelity.md row 2).
    "decoder": LearnerInfo(
        "decoder", "Decoder only", "none", "tunevlseg.learners.baselines:DecoderOnly"
    ),
    "zeroshot": LearnerInfo(
        "zeroshot", "Zero-shot", "none", "tunevlseg.learners.baselines:ZeroShot", trains=False
    ),
}


def is_viable(model: str, learner: str) -> bool:
    """The paper's rule: visual and multimodal prompts need a ViT image encoder.

    Learners without prompts (``e2e``, ``decoder``, ``zeroshot``) run on every model."""
    if LEARNERS[learner].modality in ("visual", "multimodal"):
        return MODELS[model].image_encoder == "vit"
    return True


def load_object(dotted: str) -> Any:
    """Import ``module:attribute`` lazily."""
    module_name, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
