"""Learners on their own: the base contract, without transformers or a checkpoint."""

from __future__ import annotations

import pytest
import torch

from tunevlseg.catalog import LEARNERS, load_object
from tunevlseg.learners.base import EncoderDims, Learner, init_text_context

DIMS = EncoderDims(
    text_width=64, vision_width=96, text_layers=4, vision_layers=3, projection_dim=32
)


class FakeText:
    """A stand-in for the frozen text encoder: deterministic, distinguishable per layer."""

    def token_embeddings(self, text: str) -> torch.Tensor:
        return torch.full((len(text.split()), DIMS.text_width), -1.0)

    def layer_inputs(self, text: str) -> list[torch.Tensor]:
        n = len(text.split())
        return [torch.full((n, DIMS.text_width), float(d)) for d in range(DIMS.text_layers)]


def make(name: str, **params) -> Learner:
    cls = load_object(LEARNERS[name].implementation)
    return cls(DIMS, n_ctx=4, frozen_text=FakeText(), **params)


def test_unknown_parameter_names_are_listed() -> None:
    with pytest.raises(ValueError, match=r"bogus.*valid parameters.*prompt_depth=1"):
        make("coop", bogus=1)
    with pytest.raises(ValueError, match="shared_dim"):
        make("maple", shared_dim=8)
    with pytest.raises(ValueError, match="prompt_depth"):
        make("zeroshot", prompt_depth=1)


@pytest.mark.parametrize("bad", [{"prompt_depth": 0}, {"prompt_depth": 12}, {"init": "zeros"}])
def test_bad_values_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError, match=f"coop: {next(iter(bad))} must be"):
        make("coop", **bad)


def test_depth_is_clamped_per_encoder() -> None:
    learner = make("maple", prompt_depth=11, intermediate_dim=8)
    prompts = learner()
    assert (learner.text_depth, learner.vision_depth) == (4, 3)
    assert [p.shape for p in prompts.text] == [(4, 64)] * 4
    assert [p.shape for p in prompts.vision] == [(4, 96)] * 3


def test_coop_initialisations() -> None:
    embedding = init_text_context(3, 4, 64, "embedding", FakeText())
    assert torch.equal(embedding[0], torch.full((4, 64), -1.0))
    assert embedding[1].std().item() == pytest.approx(0.02, rel=0.3)
    layerwise = init_text_context(3, 4, 64, "layerwise", FakeText())
    assert torch.equal(layerwise[0], torch.full((4, 64), -1.0))
    assert torch.equal(layerwise[2], torch.full((4, 64), 2.0))
    gaussian = init_text_context(1, 6, 64, "gaussian", None)
    assert gaussian[0].shape == (6, 64)
    padded = init_text_context(1, 6, 64, "embedding", FakeText())  # 4 init words, 6 tokens
    assert torch.equal(padded[0][:4], torch.full((4, 64), -1.0))


@pytest.mark.parametrize("use_lora", [False, True])
def test_conditional_and_coupled_learners(use_lora: bool) -> None:
    cocoop = make("cocoop", prompt_depth=2, intermediate_dim=8, use_lora=use_lora)
    text = cocoop(torch.randn(5, DIMS.projection_dim)).text
    assert [t.shape for t in text] == [(5, 4, 64)] * 2
    if use_lora:
        assert not any(isinstance(m, torch.nn.ReLU) for m in cocoop.modules())
    maple = make("maple", prompt_depth=2, intermediate_dim=8, use_lora=use_lora)
    prompts = maple()
    assert torch.equal(prompts.vision[1], maple.couplings[1](maple.text_ctx[1]))


def test_vpt_and_shared_separate_shapes() -> None:
    vpt = make("vpt", prompt_depth=2)()
    assert vpt.text == [] and [v.shape for v in vpt.vision] == [(4, 96)] * 2
    separate = make("shared_separate", prompt_depth=2, shared_dim=16)()
    assert [t.shape for t in separate.text] == [(4, 64)] * 2
    assert [v.shape for v in separate.vision] == [(4, 96)] * 2


def test_baselines_have_no_prompts() -> None:
    for name in ("e2e", "zeroshot"):
        learner = make(name)
        assert list(learner.parameters()) == []
        assert learner().text == [] and learner().vision == []
    assert load_object(LEARNERS["e2e"].implementation).trains_backbone
    assert not load_object(LEARNERS["zeroshot"].implementation).trains
