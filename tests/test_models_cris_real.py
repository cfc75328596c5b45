"""Real-size CRIS-R50 with random weights: strict checkpoint loading, one 416 px forward, counts.

No weights can be downloaded here, so a random model with the released sizes is saved the way
CRIS training saves it (a ``{"state_dict": ...}`` wrapper with DDP's ``module.`` prefix) and
loaded back through :func:`tunevlseg.models.cris.load_cris`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tunevlseg.catalog import LEARNERS, load_object
from tunevlseg.models.cris import LoadedCRIS, PromptedCRIS, load_cris
from tunevlseg.models.cris.config import real_size_cris_config
from tunevlseg.models.cris.tiny import fast_random_cris
from tunevlseg.models.tiny import write_clip_tokenizer

# Backbone 104.1 M (CLIP RN50 + CRIS's attention-pool shortcut), neck, decoder, projector.
R50_TOTAL = 146_849_122
UPSAMPLER = 256 * 5 * 5 + 1 + 1  # 5x5 conv from the projector's 256 channels, bias, ratio


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """On a busy 2-core machine one thread runs this forward about twice as fast as two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedCRIS, dict[str, torch.Tensor]]:
    source = fast_random_cris(real_size_cris_config(), seed=0)
    state = source.state_dict()
    folder = tmp_path_factory.mktemp("cris-r50-random")
    source.config.save(folder / "config.json")
    wrapped = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, folder / "cris.pth")
    write_clip_tokenizer(folder)
    return load_cris(folder), state


def test_real_size_checkpoint_loads_strictly(real: tuple[LoadedCRIS, dict[str, Any]]) -> None:
    loaded, state = real
    assert loaded.image_size == 416
    loaded_state = loaded.model.state_dict()
    assert set(loaded_state) == set(state)
    assert [k for k, v in state.items() if not torch.equal(v, loaded_state[k])] == []
    assert sum(p.numel() for p in loaded.model.parameters()) == R50_TOTAL
    assert not any(p.is_meta for p in loaded.model.parameters())


def _prompted(
    loaded: LoadedCRIS, learner: str, params: dict[str, Any], **kwargs: Any
) -> PromptedCRIS:
    """Builds share ``loaded.model`` (no copy of 590 MB); only use one at a time."""
    torch.manual_seed(0)
    return PromptedCRIS(loaded, load_object(LEARNERS[learner].implementation), params, **kwargs)


def test_real_size_forward_is_416(real: tuple[LoadedCRIS, dict[str, Any]]) -> None:
    model = _prompted(real[0], "cocoop", {"prompt_depth": 11})
    pixels = torch.randn(1, 3, 416, 416)
    with torch.no_grad():
        logits = model(pixels, **model.tokenize(["a polyp"]))
    assert logits.shape == (1, 1, 416, 416)
    assert torch.isfinite(logits).all()


def test_real_size_trainable_counts(real: tuple[LoadedCRIS, dict[str, Any]]) -> None:
    loaded = real[0]
    ctx = 4 * 512  # n_ctx 4 x text width 512, per prompted layer
    lora = 1024 * 32 + 32 * 512 + 512  # rank-32 map from the 1024-d image feature
    mlp = 1024 * 32 + 32 + 32 * 512 + 512
    expected = {
        ("coop", 1, None): ctx + UPSAMPLER,
        ("coop", 11, None): 11 * ctx + UPSAMPLER,
        ("cocoop", 1, False): ctx + mlp + UPSAMPLER,
        ("cocoop", 11, False): 11 * (ctx + mlp) + UPSAMPLER,
        ("cocoop", 1, True): ctx + lora + UPSAMPLER,
        ("cocoop", 11, True): 11 * (ctx + lora) + UPSAMPLER,
    }
    for (learner, depth, use_lora), count in expected.items():
        params: dict[str, Any] = {"prompt_depth": depth}
        if use_lora is not None:
            params.update(intermediate_dim=32, use_lora=use_lora)
        model = _prompted(loaded, learner, params)
        assert model.count_parameters() == (count, R50_TOTAL + count), (learner, depth, use_lora)
    assert _prompted(loaded, "zeroshot", {}).count_parameters() == (0, R50_TOTAL)
    e2e = _prompted(loaded, "e2e", {})
    assert e2e.count_parameters() == (R50_TOTAL - 1 + UPSAMPLER, R50_TOTAL + UPSAMPLER)
