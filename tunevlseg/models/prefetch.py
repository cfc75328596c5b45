"""Fetch the checkpoints a sweep names into the Hugging Face cache, then prove they load offline.

Compute nodes have no internet, so every hub id an experiment file names must be in the shared
cache (``HF_HOME``) before launch. Here, on a login node, each model of the sweep becomes one
:class:`PrefetchItem` and gets one :class:`PrefetchOutcome`:

* hub id (CLIPSeg): skipped if a complete snapshot is cached, else downloaded with
  ``snapshot_download`` restricted to what loading needs (config, one weights format -
  safetensors preferred over ``pytorch_model.bin`` - tokenizer and preprocessor files; a full
  snapshot would also pull TF/Flax weights);
* local folder: nothing to fetch;
* synthetic model: skipped (``tvls-launch`` / ``tvls-train`` write it when absent);
* CRIS: has no hub release, so only its folder can be checked.

Every usable item is then loaded through the project's own loader with the hub switched to
offline mode, which is exactly what a compute node will do. A network failure becomes one line
naming the cause (no traceback), because a login node behind a proxy is a common first-run
problem.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunevlseg.config.grid import StudySpec
from tunevlseg.errors import exception_chain

__all__ = [
    "LOADERS",
    "PrefetchItem",
    "PrefetchOutcome",
    "cached_snapshot",
    "describe_hub_error",
    "hub_cache_dir",
    "hub_offline",
    "plan_items",
    "prefetch_item",
    "select_files",
]

Kind = Literal["hub", "folder", "synthetic", "cris"]
Status = Literal[
    "downloaded", "already cached", "local folder", "skipped", "would download", "failed"
]

LOADERS: dict[str, str] = {
    "clipseg": "tunevlseg.models.loading:load_clipseg",
    "cris": "tunevlseg.models.cris:load_cris",
}
"""``module:function(pretrained)`` loading a family's checkpoint offline (raises if it cannot)."""

SMALL_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
"""Configuration, tokenizer and preprocessor files taken whenever the repository has them."""

WEIGHT_FORMATS = (
    ("model.safetensors", "model.safetensors.index.json", "model-", ".safetensors"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-", ".bin"),
)
"""(single file, shard index, shard prefix, shard suffix), in order of preference."""


@dataclass(frozen=True)
class PrefetchItem:
    """One distinct checkpoint of a sweep.

    Attributes:
        family: the model family (``clipseg``, ``cris``).
        key: the model's key in study names (its label or family).
        pretrained: a hub id, or an absolute folder for local and synthetic models.
        kind: how it is obtained (see the module docstring).
    """

    family: str
    key: str
    pretrained: str
    kind: Kind


@dataclass(frozen=True)
class PrefetchOutcome:
    """What happened to one item; ``detail`` is the text after the status on its line."""

    item: PrefetchItem
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def plan_items(studies: Sequence[StudySpec]) -> list[PrefetchItem]:
    """The distinct checkpoints the studies use, in order of first use.

    Grid expansion has already made local paths absolute, so a relative ``pretrained`` left here
    is a hub id.
    """
    items: list[PrefetchItem] = []
    seen: set[tuple[str, str]] = set()
    for spec in studies:
        model = spec.model
        pretrained = model.resolved_pretrained
        if (model.name, pretrained) in seen:
            continue
        seen.add((model.name, pretrained))
        kind: Kind
        if model.synthetic:
            kind = "synthetic"
        elif model.name == "cris":
            kind = "cris"
        elif Path(pretrained).expanduser().is_absolute() or pretrained.startswith((".", "~")):
            kind = "folder"
        else:
            kind = "hub"
        items.append(PrefetchItem(model.name, model.key, pretrained, kind))
    return items


def hub_cache_dir() -> str:
    """The hub cache folder in use (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@contextmanager
def hub_offline() -> Iterator[None]:
    """Switch the hub client to offline mode, as on a compute node (``HF_HUB_OFFLINE=1``).

    ``huggingface_hub`` reads the variable at import, so its constant is set too: any HTTP
    request made while loading then raises instead of silently downloading what is missing.
    """
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def select_files(repo_files: Sequence[str]) -> list[str]:
    """The files of a repository that loading needs: small files plus one weights format.

    Raises:
        ValueError: the repository has no ``config.json`` or no weights in a known format.
    """
    top = {name for name in repo_files if "/" not in name}
    if "config.json" not in top:
        raise ValueError("the repository has no config.json (not a transformers model?)")
    chosen = [name for name in SMALL_FILES if name in top]
    for single, index, prefix, suffix in WEIGHT_FORMATS:
        if single in top:
            return [*chosen, single]
        if index in top:
            shards = sorted(n for n in top if n.startswith(prefix) and n.endswith(suffix))
            return [*chosen, index, *shards]
    raise ValueError("the repository has no model.safetensors or pytorch_model.bin weights")


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of ``repo_id``'s main revision if it is complete, without network."""
    from huggingface_hub import snapshot_download

    from tunevlseg.models.loading import is_complete_folder

    try:
        folder = Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or not a valid id
        return None
    return folder if is_complete_folder(folder) else None


_NETWORK_ERRORS = (
    "ConnectError",
    "Timeout",
    "NetworkError",
    "ProxyError",
    "ConnectionError",
    "ProtocolError",
)
"""Class-name parts of transport errors (httpx, requests, urllib3), matched along the chain."""


def describe_hub_error(error: BaseException) -> str:
    """One line saying why a download failed and what to do about it."""
    from huggingface_hub import constants, errors as hub_errors

    for cause in exception_chain(error):
        if isinstance(cause, hub_errors.OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE is set: unset it to download (on a login node with internet)"
        if isinstance(cause, hub_errors.GatedRepoError):
            return (
                "gated repository: accept its terms on the Hub, then log in (`hf auth login`) "
                "or set HF_TOKEN"
            )
        if isinstance(cause, hub_errors.RepositoryNotFoundError):
            return "no such model repository on the Hub (check the id; private ones need HF_TOKEN)"
        if isinstance(cause, hub_errors.RevisionNotFoundError):
            return "the repository has no 'main' revision"
        if any(name in type(cause).__name__ for name in _NETWORK_ERRORS) or isinstance(
            cause, (ConnectionError, TimeoutError)
        ):
            reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            return (
                f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({reason}); run "
                "tvls-prefetch where there is internet (check HF_ENDPOINT and proxy settings)"
            )
        if isinstance(cause, hub_errors.HfHubHTTPError):
            status = getattr(getattr(cause, "response", None), "status_code", None)
            return f"the Hub answered HTTP {status}: {str(cause).splitlines()[0]}"
    first = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first}".rstrip(": ")


def _size_text(folder: Path, files: Sequence[str]) -> str:
    present = [folder / name for name in files if (folder / name).exists()]
    size = sum(path.resolve().stat().st_size for path in present)
    return f"{len(files)} files, {size / 1e6:.1f} MB"


def download(repo_id: str) -> tuple[Path, str]:
    """Download what loading ``repo_id`` needs into the cache; return the snapshot and a summary.

    Raises:
        Exception: whatever the hub client raises (see :func:`describe_hub_error`), or
            ``ValueError`` from :func:`select_files`.
    """
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo_id)
    files = select_files([sibling.rfilename for sibling in info.siblings or []])
    # The default revision ("main") also writes refs/main, which offline lookups go through.
    folder = Path(snapshot_download(repo_id=repo_id, allow_patterns=files))
    return folder, _size_text(folder, files)


def verify_loads(item: PrefetchItem, pretrained: str | Path) -> str:
    """Load the checkpoint offline through the family's loader; return a short description.

    Raises:
        ModuleNotFoundError: the family's loader module is not part of this installation.
        Exception: whatever the loader raises when the checkpoint does not load.
    """
    module_name, _, function = LOADERS[item.family].partition(":")
    loader = getattr(importlib.import_module(module_name), function)
    with hub_offline():
        loaded = loader(pretrained)
    model = getattr(loaded, "model", loaded)
    count = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    return f"loads offline ({count / 1e6:.1f} M parameters)" if count else "loads offline"


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__


def _checked(
    item: PrefetchItem, status: Status, found: str, pretrained: str | Path
) -> PrefetchOutcome:
    """``status`` if the checkpoint loads offline, else a failure that says why."""
    try:
        loads = verify_loads(item, pretrained)
    except Exception as error:  # noqa: BLE001 - any failure to load is the reason reported
        reason = f"{found}, but it does not load offline: {_reason(error)}"
        return PrefetchOutcome(item, "failed", reason)
    return PrefetchOutcome(item, status, f"{found}; {loads}")


def _hub(item: PrefetchItem, dry_run: bool) -> PrefetchOutcome:
    cached = cached_snapshot(item.pretrained)
    if cached is not None:
        if dry_run:
            return PrefetchOutcome(item, "already cached", f"at {cached} (would check it loads)")
        return _checked(item, "already cached", f"at {cached}", item.pretrained)
    if dry_run:
        return PrefetchOutcome(
            item,
            "would download",
            f"config, weights (safetensors preferred), tokenizer and preprocessor files into "
            f"{hub_cache_dir()}",
        )
    try:
        folder, summary = download(item.pretrained)
    except Exception as error:  # noqa: BLE001 - hub errors vary; each is described
        return PrefetchOutcome(item, "failed", f"not downloaded: {describe_hub_error(error)}")
    return _checked(item, "downloaded", f"{summary} into {folder}", item.pretrained)


def _folder(item: PrefetchItem, dry_run: bool) -> PrefetchOutcome:
    path = Path(item.pretrained).expanduser()
    if not path.is_dir():
        return PrefetchOutcome(item, "failed", f"folder {path} does not exist")
    if dry_run:
        detail = f"{path} (nothing to fetch; would check it loads)"
        return PrefetchOutcome(item, "local folder", detail)
    return _checked(item, "local folder", f"{path}, nothing to fetch", path)


def _cris(item: PrefetchItem, dry_run: bool) -> PrefetchOutcome:
    path = Path(item.pretrained).expanduser()
    if not path.is_dir():
        return PrefetchOutcome(
            item,
            "failed",
            f"CRIS has no Hugging Face release: download its checkpoint yourself and set "
            f"models[].pretrained to its folder ({item.pretrained} is not a folder)",
        )
    if dry_run:
        detail = f"{path}: CRIS folder provided (would check it loads)"
        return PrefetchOutcome(item, "local folder", detail)
    try:
        importlib.import_module(LOADERS["cris"].partition(":")[0])
    except ModuleNotFoundError as error:
        if error.name and LOADERS["cris"].startswith(error.name):
            return PrefetchOutcome(
                item, "local folder", f"{path} exists (CRIS support is not installed: not loaded)"
            )
        raise
    return _checked(item, "local folder", f"{path}: CRIS folder provided", path)


def prefetch_item(item: PrefetchItem, *, dry_run: bool = False) -> PrefetchOutcome:
    """Fetch (unless ``dry_run``) and verify one item; never raises for a missing model."""
    if item.kind == "synthetic":
        detail = f"synthetic tiny model at {item.pretrained} (written when a run needs it)"
        return PrefetchOutcome(item, "skipped", detail)
    handlers: dict[str, Any] = {"hub": _hub, "folder": _folder, "cris": _cris}
    outcome: PrefetchOutcome = handlers[item.kind](item, dry_run)
    return outcome
