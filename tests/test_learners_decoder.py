"""The ``decoder`` baseline: what follows the encoders trains, both encoders stay frozen.

It reproduces the authors' CLIPSeg "E2E" (HF's forward ran both CLIP encoders under
``no_grad``; ``docs/fidelity.md`` row 2) and offers the same reading on CRIS (neck, decoder and
projector). The checks run on both tiny random models: which parameters train, that no encoder
weight gets a gradient or moves, that the BatchNorm statistics of CRIS's trained parts are
saved with the weights, and that a short fit on a natural-layout set runs end to end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _model_checks import assert_frozen_step, assert_trainable_state_round_trip, make_batch
from torch import nn

from tunevlseg.catalog import LEARNERS, MODELS, is_viable, load_object
from tunevlseg.config.spaces import PAPER_SPACES
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_natural
from tunevlseg.models.clipseg import PromptedCLIPSeg
from tunevlseg.models.cris import PromptedCRIS, load_cris
from tunevlseg.models.cris.tiny import write_tiny_cris
from tunevlseg.models.loading import load_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg
from tunevlseg.train.fit import fit
from tunevlseg.train.settings import FitSettings

FAMILIES = ["clipseg", "cris"]

DECODING_PREFIXES = {
    "clipseg": ("clipseg.decoder.",),
    "cris": ("cris.neck.", "cris.decoder.", "cris.proj."),
}
"""Per family, the parameters the ``decoder`` learner trains (besides the upsampler)."""

ENCODERS = {"clipseg": "clipseg.clip", "cris": "cris.backbone"}
"""Per family, the submodule holding both encoders (image and text)."""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each tiny model loaded once; every test builds on a deep copy."""
    base = tmp_path_factory.mktemp("decoder-models")
    return {
        "clipseg": load_clipseg(write_tiny_clipseg(base / "tiny-clipseg")),
        "cris": load_cris(write_tiny_cris(base / "tiny-cris")),
    }


def builder(loaded: dict[str, Any], family: str) -> Callable[..., Any]:
    """``build(learner, depth, seed=...)`` as the shared checks call it (depth is unused)."""
    model_cls = {"clipseg": PromptedCLIPSeg, "cris": PromptedCRIS}[family]

    def build(
        learner: str = "decoder", depth: int | None = None, seed: int = 0, **kwargs: Any
    ) -> Any:
        torch.manual_seed(seed)
        learner_cls = load_object(LEARNERS[learner].implementation)
        return model_cls(copy.deepcopy(loaded[family]), learner_cls, {}, **kwargs)

    return build


def _module(model: nn.Module, dotted: str) -> nn.Module:
    return model.get_submodule(dotted)


# ----------------------------------------------------------------------------- catalogue
def test_decoder_is_a_baseline_on_every_model_with_the_e2e_space() -> None:
    info = LEARNERS["decoder"]
    assert info.modality == "none" and info.trains
    assert all(is_viable(model, "decoder") for model in MODELS)
    assert PAPER_SPACES["decoder"] == PAPER_SPACES["e2e"]
    assert set(PAPER_SPACES["decoder"]) == {"lr", "weight_decay"}
    learner_cls = load_object(info.implementation)
    assert learner_cls.trains_decoder and not learner_cls.trains_backbone
    assert learner_cls.defaults == {}


# ----------------------------------------------------------------------------- what trains
@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_parameters_are_exactly_the_decoding_parts(
    loaded: dict[str, Any], family: str
) -> None:
    model = builder(loaded, family)()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith((*DECODING_PREFIXES[family], "upsampler."))
    }
    assert trainable == expected
    assert any(name.startswith("upsampler.") for name in trainable)
    encoders = _module(model, ENCODERS[family])
    assert not any(p.requires_grad for p in encoders.parameters())
    assert list(model.learner.parameters()) == []
    count, total = model.count_parameters()
    assert count == sum(p.numel() for name, p in model.named_parameters() if name in expected)
    assert 0 < count < total


@pytest.mark.parametrize("family", FAMILIES)
def test_encoders_get_no_gradient_and_stay_in_eval_mode(
    loaded: dict[str, Any], family: str
) -> None:
    model = builder(loaded, family)().train()
    encoders = _module(model, ENCODERS[family])
    for prefix in DECODING_PREFIXES[family]:
        assert _module(model, prefix.rstrip(".")).training  # dropout and BatchNorm as trained
    model(**make_batch(model)).pow(2).mean().backward()
    assert [n for n, p in encoders.named_parameters() if p.grad is not None] == []
    without = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert without == []
    # One AdamW step: every trained tensor moves, the encoders (BatchNorm too) do not.
    model.zero_grad()
    assert_frozen_step(model, encoders)


def test_cris_saves_the_batchnorm_statistics_of_its_trained_parts(
    loaded: dict[str, Any],
) -> None:
    model = builder(loaded, "cris")()
    state = model.trainable_state_dict()
    statistics = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(k.startswith(DECODING_PREFIXES["cris"]) for k in statistics)
    assert not any(k.startswith("cris.backbone.") for k in state)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_state_round_trip(loaded: dict[str, Any], family: str) -> None:
    assert_trainable_state_round_trip(builder(loaded, family), "decoder")


@pytest.mark.parametrize("family", FAMILIES)
def test_e2e_still_trains_the_encoders(loaded: dict[str, Any], family: str) -> None:
    """The new flag leaves the old baseline alone: e2e trains more than the decoding parts."""
    build = builder(loaded, family)
    decoder, e2e = build("decoder"), build("e2e")
    assert e2e.count_parameters()[0] > decoder.count_parameters()[0]
    assert any(p.requires_grad for p in _module(e2e, ENCODERS[family]).parameters())


# ----------------------------------------------------------------------------- real sizes
REAL_SIZE_FILE = """\
name: d
output_dir: out
models: [clipseg, cris]
learners: [decoder]
datasets:
  - {name: voc, root: data/voc, format: natural}
"""


@pytest.mark.timeout(180)
def test_describe_counts_the_real_sizes_of_the_readme(tmp_path: Path) -> None:
    """``tvls-train --describe --real-size`` counts ``decoder`` (the README's table rows).

    The upsampler adds 1,602 (CLIPSeg) and 6,402 (CRIS); the rest is CLIPSeg rd64's decoder,
    and CRIS R50's neck, decoder and projector.
    """
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import parse_experiment
    from tunevlseg.tuning.describe import describe_studies

    studies = expand(parse_experiment(REAL_SIZE_FILE, tmp_path / "d.yaml")).studies
    rows = {row.model: row for row in describe_studies(studies, real_size=True)}
    assert rows["clipseg"].trainable == 1_074_755
    assert rows["cris"].trainable == 42_749_187
    assert rows["clipseg"].params == {"lr": 2.24e-4, "weight_decay": 3.16e-4}


# ----------------------------------------------------------------------------- a short fit
SIZE = 64
SETTINGS = FitSettings(
    max_epochs=2,
    patience=50,
    batch_size=4,
    effective_batch_size=4,
    lr=1e-3,
    weight_decay=1e-3,
    seed=0,
    accelerator="cpu",
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_fit_trains_the_decoder_and_leaves_the_encoders(
    loaded: dict[str, Any], family: str, tmp_path: Path
) -> None:
    root = write_synthetic_natural(
        tmp_path / "data", n_train=8, n_val=4, n_test=4, image_size=SIZE, seed=0
    )
    model = builder(loaded, family)()
    encoders_before = copy.deepcopy(_module(model, ENCODERS[family]).state_dict())
    decoding_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    datamodule = SegmentationDataModule(
        root,
        "natural",
        "p0",
        image_size=SIZE,
        mean=model.image_mean,
        std=model.image_std,
        tokenize=model.tokenize,
        batch_size=SETTINGS.batch_size,
        seed=SETTINGS.seed,
    )
    result = fit(model, datamodule, SETTINGS, tmp_path / "run")
    assert result.epochs_run == SETTINGS.max_epochs
    assert 0.0 <= result.val_dice <= 1.0 and 0.0 <= result.test_dice <= 1.0
    after = _module(model, ENCODERS[family]).state_dict()
    assert [k for k, v in encoders_before.items() if not torch.equal(v, after[k])] == []
    moved = [
        k for k, v in model.trainable_state_dict().items() if not torch.equal(v, decoding_before[k])
    ]
    assert moved and all(k.startswith((*DECODING_PREFIXES[family], "upsampler.")) for k in moved)
