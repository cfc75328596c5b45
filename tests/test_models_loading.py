"""Offline loading: local folders, the HF cache layout, real sizes and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tunevlseg.models.loading import ModelNotFoundError, load_clipseg, resolve_pretrained
from tunevlseg.models.tiny import (
    fast_random_clipseg,
    real_size_clipseg_config,
    write_clip_tokenizer,
    write_preprocessor_config,
    write_tiny_clipseg,
)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clipseg(tmp_path_factory.getbasetemp() / "tiny-clipseg")


def test_tiny_folder_loads_like_a_checkpoint(tiny_folder: Path) -> None:
    loaded = load_clipseg(tiny_folder)
    assert type(loaded.model).__name__ == "CLIPSegForImageSegmentation"
    assert loaded.image_size == 96
    assert loaded.image_mean == (0.485, 0.456, 0.406)
    ids = loaded.tokenizer("a photo of a")["input_ids"]
    assert len(ids) == 6 and ids[0] == loaded.tokenizer.bos_token_id
    assert ids[-1] == loaded.tokenizer.eos_token_id == loaded.model.config.text_config.eos_token_id


def test_write_tiny_is_idempotent(tiny_folder: Path) -> None:
    weights = tiny_folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert write_tiny_clipseg(tiny_folder) == tiny_folder
    assert weights.stat().st_mtime_ns == stamp


def test_hub_id_resolves_from_the_cache(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clipseg"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_pretrained("tiny-org/tiny-clipseg") == repo / "snapshots" / commit
    assert load_clipseg("tiny-org/tiny-clipseg").image_size == 96


@pytest.mark.parametrize(
    "name", ["no-such-org/no-such-model", "/no/such/folder", "./relative/missing"]
)
def test_missing_model_error_says_what_to_do(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="tvls-prefetch") as info:
        load_clipseg(name)
    assert name in str(info.value)
    assert not isinstance(info.value, OSError)


@pytest.mark.slow
def test_real_size_checkpoint_loads_offline(tmp_path: Path) -> None:
    """``CIDAS/clipseg-rd64`` sizes (ViT-B/16, 352 px, rd 64): ~600 MB written and read back."""
    from tunevlseg.models.clipseg import build_prompted_clipseg

    folder = tmp_path / "clipseg-rd64-random"
    fast_random_clipseg(real_size_clipseg_config()).save_pretrained(folder)
    write_clip_tokenizer(folder)
    write_preprocessor_config(folder, 352)
    model = build_prompted_clipseg(str(folder), "vpt", {"prompt_depth": 11})
    config = model.clipseg.config
    assert (config.text_config.hidden_size, config.vision_config.hidden_size) == (512, 768)
    assert model.image_size == 352 and config.reduce_dim == 64
    assert (model.learner.vision_depth, model.dims.vision_layers) == (10, 10)
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 352, 352), **model.tokenize(["polyp"]))
    assert logits.shape == (1, 1, 352, 352) and torch.isfinite(logits).all()
