"""Offline loading of CLIPSeg checkpoints and their tokenizers.

Compute nodes have no internet. Every checkpoint is fetched beforehand on a login node
(``tvls-prefetch``) into the shared Hugging Face cache; here we only ever read local files
(``local_files_only=True``, the per-call equivalent of ``HF_HUB_OFFLINE=1``). A missing model
must fail fast with a message that says what to do, not hang on a network time-out.

Image normalisation is *not* done by the HF processor (transformers 5 ViT processors need
torchvision, which the image lacks): we only read mean, std and size from
``preprocessor_config.json`` and the data pipeline normalises with albumentations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunevlseg.catalog import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from transformers import CLIPSegForImageSegmentation, PreTrainedTokenizerBase

__all__ = ["LoadedCLIPSeg", "ModelNotFoundError", "load_clipseg", "resolve_pretrained"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class ModelNotFoundError(Exception):
    """A model is neither a local folder nor in the local Hugging Face cache."""

    def __init__(self, pretrained: str, detail: str = "") -> None:
        message = (
            f"Model {pretrained!r} is not available offline: it is not a local folder and not in "
            "the Hugging Face cache (HF_HOME). Run `tvls-prefetch <experiment.yaml>` on a login "
            "node (with internet) to download it into the shared cache."
        )
        if detail:
            message += f" ({detail})"
        super().__init__(message)
        self.pretrained = pretrained


@dataclass
class LoadedCLIPSeg:
    """What :func:`load_clipseg` returns: the HF model, its tokenizer and image settings."""

    model: CLIPSegForImageSegmentation
    tokenizer: PreTrainedTokenizerBase
    folder: Path
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def is_complete_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a config, weights and a tokenizer."""
    has_weights = any((folder / name).is_file() for name in _WEIGHT_FILES)
    has_tokenizer = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    return (folder / "config.json").is_file() and has_weights and has_tokenizer


def resolve_pretrained(pretrained: str | Path) -> Path:
    """Turn a local folder or a hub id into a local folder, without touching the network.

    Raises:
        ModelNotFoundError: when neither a folder nor a cached snapshot exists.
    """
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(str(pretrained), f"folder {path} has no config.json")
        return path
    name = str(pretrained)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(name, f"no such folder: {path}")

    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=name, local_files_only=True)
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError, OSError, ...
        raise ModelNotFoundError(name, type(error).__name__) from error
    return Path(folder)


def _read_image_settings(folder: Path, default_size: int) -> dict[str, Any]:
    """Size, mean and std from ``preprocessor_config.json`` (ImageNet stats if absent)."""
    settings: dict[str, Any] = {
        "image_size": default_size,
        "image_mean": tuple(IMAGENET_MEAN),
        "image_std": tuple(IMAGENET_STD),
    }
    config_file = folder / "preprocessor_config.json"
    if not config_file.is_file():
        return settings
    raw = json.loads(config_file.read_text())
    size = raw.get("size")
    if isinstance(size, int):
        settings["image_size"] = size
    elif isinstance(size, dict):
        value = size.get("height") or size.get("shortest_edge")
        if value:
            settings["image_size"] = int(value)
    if raw.get("image_mean"):
        settings["image_mean"] = tuple(float(v) for v in raw["image_mean"])
    if raw.get("image_std"):
        settings["image_std"] = tuple(float(v) for v in raw["image_std"])
    return settings


def quiet_transformers() -> None:
    """No progress bars per load or save: task logs on a cluster are read, not watched."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_clipseg(pretrained: str | Path) -> LoadedCLIPSeg:
    """Load an HF CLIPSeg model and its tokenizer from a folder or the offline cache.

    The model comes back in eval mode with its weights in fp32. CLIPSeg checkpoints keep the
    vision config at 224 px and interpolate position embeddings; the working resolution (352 px
    for ``CIDAS/clipseg-rd64*``) comes from the preprocessor config.
    """
    import torch
    from transformers import CLIPSegForImageSegmentation, CLIPSegVisionConfig, CLIPTokenizer

    folder = resolve_pretrained(pretrained)
    quiet_transformers()
    try:
        model = CLIPSegForImageSegmentation.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as error:
        raise ModelNotFoundError(str(pretrained), str(error).splitlines()[0]) from error
    model.eval()
    # transformers types the sub-config and its size loosely (dict | config | None; int | pair).
    vision = model.config.vision_config
    image_size = vision.image_size if isinstance(vision, CLIPSegVisionConfig) else None
    if not isinstance(image_size, int):
        raise ValueError(f"{folder}: config.json has no integer vision_config.image_size")
    settings = _read_image_settings(folder, image_size)
    return LoadedCLIPSeg(model=model, tokenizer=tokenizer, folder=folder, **settings)
