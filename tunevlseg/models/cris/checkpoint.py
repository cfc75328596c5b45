"""CRIS model folders: ``config.json`` + ``cris.pth`` + CLIP tokenizer files, loaded offline.

Released CRIS weights are a PyTorch file holding the model's state dict, usually saved from
``DistributedDataParallel`` (keys prefixed ``module.``) and often wrapped in a training
checkpoint (``{"state_dict": ..., "optimizer": ...}``). A model folder for this toolkit holds:

* ``config.json``: :class:`tunevlseg.models.cris.config.CRISConfig` (``model_type: cris``);
* ``cris.pth``: the state dict (any of the above forms; prefixes are stripped on load);
* ``vocab.json`` + ``merges.txt`` (+ optional ``tokenizer_config.json``): CLIP's BPE tokenizer,
  loaded with ``CLIPTokenizer`` from the folder.

Loading is strict: every missing and unexpected key is reported, and a shape mismatch names the
key with the expected and found shapes. A silently half-loaded model would train and report
numbers that mean nothing. Like CLIPSeg, a folder or a hub id in the local HF cache is accepted;
anything else is a :class:`tunevlseg.models.loading.ModelNotFoundError`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tunevlseg.catalog import CLIP_MEAN, CLIP_STD
from tunevlseg.models.cris.config import MODEL_TYPE, CRISConfig
from tunevlseg.models.cris.model import CRIS
from tunevlseg.models.loading import ModelNotFoundError, resolve_pretrained

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CheckpointMismatchError",
    "LoadedCRIS",
    "is_complete_cris_folder",
    "load_cris",
    "load_cris_state_dict",
    "make_cris_folder",
    "save_cris",
    "strip_prefixes",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "cris.pth"
PREFIXES = ("module.", "model.")
_WRAPPER_KEYS = ("state_dict", "model")
_SHOWN = 20


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model: missing, unexpected or wrongly shaped tensors.

    Attributes:
        missing: model keys the state dict lacks.
        unexpected: state-dict keys the model does not have.
        mismatched: ``(key, expected shape, found shape)`` triples.
    """

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        parts = []
        if mismatched:
            shown = "; ".join(
                f"{key}: expected {list(want)}, found {list(got)}"
                for key, want, got in mismatched[:_SHOWN]
            )
            parts.append(f"{len(mismatched)} shape mismatch(es): {shown}{_more(mismatched)}")
        if missing:
            parts.append(
                f"{len(missing)} missing key(s): {', '.join(missing[:_SHOWN])}{_more(missing)}"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected key(s): "
                f"{', '.join(unexpected[:_SHOWN])}{_more(unexpected)}"
            )
        super().__init__("CRIS state dict does not match the model: " + " | ".join(parts))


def _more(items: list[Any]) -> str:
    return f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""


@dataclass(frozen=True)
class LoadReport:
    """What a non-strict load skipped (both empty after a strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Unwrap a training checkpoint and strip ``module.`` / ``model.`` key prefixes.

    ``{"state_dict": {...}}`` (or ``{"model": {...}}``) is unwrapped first; prefixes are removed
    repeatedly, so ``module.model.neck...`` becomes ``neck...``. Non-tensor entries are dropped.
    """
    for key in _WRAPPER_KEYS:
        inner = state_dict.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            state_dict = inner
            break
    stripped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            continue
        name = str(key)
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        stripped[name] = value
    return stripped


def _check(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool) -> LoadReport:
    expected = model.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        (key, tuple(expected[key].shape), tuple(state_dict[key].shape))
        for key in expected
        if key in state_dict and tuple(expected[key].shape) != tuple(state_dict[key].shape)
    ]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(missing, unexpected, mismatched)
    return LoadReport(missing=missing, unexpected=unexpected)


def load_cris_state_dict(
    model: CRIS, state_dict: Mapping[str, Any], *, strict: bool = True, assign: bool = False
) -> LoadReport:
    """Load a (possibly prefixed or wrapped) CRIS state dict into ``model``.

    Args:
        model: the CRIS module to fill.
        state_dict: tensors keyed as in the checkpoint.
        strict: refuse missing and unexpected keys (shape mismatches are always refused).
        assign: adopt the given tensors instead of copying into existing ones; use it with a
            model built on the meta device (no memory or time spent on a random init first).

    Returns:
        The keys skipped (only possible with ``strict=False``).

    Raises:
        CheckpointMismatchError: listing every offending key.
    """
    cleaned = strip_prefixes(state_dict)
    cleaned = {k: v.float() if v.is_floating_point() else v for k, v in cleaned.items()}
    report = _check(model, cleaned, strict)
    known = {k: v for k, v in cleaned.items() if k not in report.unexpected}
    model.load_state_dict(known, strict=False, assign=assign)
    return report


def is_complete_cris_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a CRIS config, weights and a CLIP tokenizer."""
    folder = Path(folder)
    names = (CONFIG_FILE, WEIGHTS_FILE, "vocab.json", "merges.txt")
    return all((folder / name).is_file() for name in names)


def save_cris(model: CRIS, folder: Path) -> Path:
    """Write ``config.json`` and ``cris.pth`` (no prefix) into ``folder``; not the tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_FILE)
    torch.save(model.state_dict(), folder / WEIGHTS_FILE)
    return folder


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def make_cris_folder(
    weights: Path,
    folder: Path,
    *,
    tokenizer: str | Path,
    config: CRISConfig | None = None,
) -> Path:
    """Turn a released CRIS checkpoint into a model folder this toolkit loads.

    Checks the weights strictly against ``config`` first (so a wrong config fails here, not on
    a compute node), then writes ``config.json``, ``cris.pth`` (the cleaned, unprefixed state
    dict) and the CLIP tokenizer files.

    Args:
        weights: the released ``.pth`` file (any of the wrapped / prefixed forms).
        folder: the model folder to write.
        tokenizer: a folder with ``vocab.json`` + ``merges.txt``, or a hub id in the HF cache
            (for example ``openai/clip-vit-base-patch32``).
        config: the sizes; CRIS-R50 by default.
    """
    config = config or CRISConfig()
    source = Path(tokenizer) if Path(tokenizer).is_dir() else resolve_pretrained(str(tokenizer))
    if not all((source / name).is_file() for name in ("vocab.json", "merges.txt")):
        raise ModelNotFoundError(str(tokenizer), f"no vocab.json + merges.txt in {source}")
    state_dict = strip_prefixes(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.device("meta"):
        model = CRIS(config)
    load_cris_state_dict(model, state_dict, strict=True, assign=True)
    save_cris(model, folder)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, Path(folder) / name)
    return Path(folder)


@dataclass
class LoadedCRIS:
    """What :func:`load_cris` returns: the model (eval mode, fp32), tokenizer and image settings."""

    model: CRIS
    tokenizer: PreTrainedTokenizerBase
    folder: Path
    config: CRISConfig
    image_size: int
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD


def _read_config(folder: Path, pretrained: str) -> CRISConfig:
    raw_path = folder / CONFIG_FILE
    try:
        return CRISConfig.load(raw_path)
    except ValueError as error:
        raise ModelNotFoundError(
            pretrained, f"{raw_path} is not a {MODEL_TYPE} config: {error}"
        ) from error


def load_cris(pretrained: str | Path) -> LoadedCRIS:
    """Load a CRIS model folder (or a hub id already in the HF cache) without the network.

    The model is built on the meta device and adopts the checkpoint's tensors, so a real-size
    load costs reading the file (no random initialisation, no second copy in memory).

    Raises:
        ModelNotFoundError: no such folder / cached snapshot, or it lacks weights or tokenizer.
        CheckpointMismatchError: the weights do not fit the config.
    """
    from transformers import CLIPTokenizer

    from tunevlseg.models.loading import quiet_transformers

    local = Path(pretrained).expanduser()
    if local.is_dir() and not (local / CONFIG_FILE).is_file():
        raise ModelNotFoundError(
            str(pretrained),
            f"folder {local} has no {CONFIG_FILE}; a CRIS model folder holds {CONFIG_FILE}, "
            f"{WEIGHTS_FILE}, vocab.json and merges.txt (make one from a released checkpoint "
            "with tunevlseg.models.cris.checkpoint.make_cris_folder)",
        )
    folder = resolve_pretrained(pretrained)
    config = _read_config(folder, str(pretrained))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelNotFoundError(str(pretrained), f"folder {folder} has no {WEIGHTS_FILE}")
    state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = CRIS(config)
    load_cris_state_dict(model, state_dict, strict=True, assign=True)
    quiet_transformers()
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, TypeError, ValueError) as error:
        raise ModelNotFoundError(
            str(pretrained), f"no CLIP tokenizer (vocab.json, merges.txt) in {folder}"
        ) from error
    model.eval()
    return LoadedCRIS(
        model=model, tokenizer=tokenizer, folder=folder, config=config, image_size=config.image_size
    )
