"""Prompted CLIPSeg on a tiny, real, randomly initialised checkpoint (CPU)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from _model_checks import (
    TEXTS,
    assert_causal,
    assert_frozen_step,
    assert_load_trainable_state_is_strict,
    assert_placeholders_inserted,
    assert_trainable_state_round_trip,
    assert_zeroshot_and_coop_counts,
    build_model,
    make_batch as batch,
    no_decay_names,
    tokens_with_last_word_changed,
)

from tunevlseg.catalog import LEARNERS
from tunevlseg.models.clipseg import PromptedCLIPSeg, build_prompted_clipseg
from tunevlseg.models.loading import LoadedCLIPSeg, load_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg

PROMPT_LEARNERS = ["coop", "cocoop", "vpt", "maple", "shared_separate", "shared_attention"]
TRAINABLE_LEARNERS = [*PROMPT_LEARNERS, "e2e"]
# Small enough to keep the tiny model fast; heads 16 divide 64 + 96 = 160.
SMALL = {
    "cocoop": {"intermediate_dim": 8},
    "maple": {"intermediate_dim": 8},
    "shared_separate": {"shared_dim": 32},
    "shared_attention": {"n_heads": 16, "ff_dim": 64},
}


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clipseg(tmp_path_factory.getbasetemp() / "tiny-clipseg")


@pytest.fixture(scope="session")
def tiny_clipseg(tiny_folder: Path) -> LoadedCLIPSeg:
    """Loaded once; every test builds on a deep copy (cheaper than reading the folder again)."""
    return load_clipseg(tiny_folder)


def build(
    loaded: LoadedCLIPSeg, learner: str, depth: int | None = 1, seed: int = 0, **kwargs
) -> PromptedCLIPSeg:
    return build_model(PromptedCLIPSeg, loaded, learner, depth, seed, small=SMALL, **kwargs)


@pytest.mark.parametrize("in_decoder", [True, False], ids=["prompts-in-decoder", "dropped"])
@pytest.mark.parametrize(("learner", "upsampler"), [("zeroshot", True), ("e2e", False)])
def test_without_prompts_matches_hf(
    tiny_clipseg: LoadedCLIPSeg, learner: str, upsampler: bool, in_decoder: bool
) -> None:
    """Without visual prompts ``vision_prompts_in_decoder`` changes nothing: both equal HF."""
    model = build(
        tiny_clipseg, learner, use_upsampler=upsampler, vision_prompts_in_decoder=in_decoder
    )
    assert model.upsampler is None
    inputs = batch(model)
    with torch.no_grad():
        ours = model(**inputs)
        reference = model.clipseg(**inputs).logits
    assert ours.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    assert (ours.squeeze(1) - reference).abs().max().item() < 1e-5


def test_tokenize_inserts_placeholders_only_for_text_learners(tiny_clipseg: LoadedCLIPSeg) -> None:
    coop, vpt = build(tiny_clipseg, "coop"), build(tiny_clipseg, "vpt")
    plain = vpt.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(vpt.tokenize(TEXTS)["input_ids"], plain["input_ids"])
    prompted = coop.tokenize(TEXTS)
    n_ctx = coop.learner.n_ctx
    assert_placeholders_inserted(prompted, plain, n_ctx)
    eos = coop.tokenizer.eos_token_id
    first_eos = (prompted["input_ids"] == eos).int().argmax(-1)
    assert torch.equal(first_eos, (plain["input_ids"] == eos).int().argmax(-1) + n_ctx)
    long = coop.tokenize(["polyp " * 200])["input_ids"]
    assert long.shape[1] == 77 and long[0, -1].item() == eos


@pytest.mark.parametrize("depth", [1, 11])
@pytest.mark.parametrize("learner", TRAINABLE_LEARNERS)
def test_learner_shapes_and_gradients(
    tiny_clipseg: LoadedCLIPSeg, learner: str, depth: int
) -> None:
    model = build(tiny_clipseg, learner, depth).train()
    logits = model(**batch(model))
    assert logits.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    assert torch.isfinite(logits).all()
    logits.float().pow(2).mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    without = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_prompt_depth_is_clamped_per_encoder(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "maple", 11)
    assert (model.learner.text_depth, model.learner.vision_depth) == (4, 4)
    assert len(model.learner().text) == 4 and len(model.learner().vision) == 4


@pytest.mark.parametrize("learner", PROMPT_LEARNERS)
def test_frozen_means_frozen(tiny_clipseg: LoadedCLIPSeg, learner: str) -> None:
    model = build(tiny_clipseg, learner, 2).train()
    assert_frozen_step(model, model.clipseg)


def test_param_groups_exempt_prompts_biases_and_norms(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "shared_separate", 2)
    names = no_decay_names(model, weight_decay=0.1)
    assert {
        "learner.shared_ctx.0",
        "learner.shared_ctx.1",
        "upsampler.ratio",
        "upsampler.conv.bias",
    } <= names
    assert "learner.to_text.0.1.weight" in names  # LayerNorm weight
    assert "learner.to_text.0.0.weight" not in names


def test_text_encoder_stays_causal_with_prompts(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "coop", 4)
    captured: list[torch.Tensor] = []
    norm = model.clipseg.clip.text_model.final_layer_norm
    handle = norm.register_forward_hook(lambda module, args, output: captured.append(output))
    tokens, changed, last_word = tokens_with_last_word_changed(model)
    prompts = model.learner().text
    with torch.no_grad():
        model.encode_text(tokens["input_ids"], tokens["attention_mask"], prompts)
        model.encode_text(changed["input_ids"], changed["attention_mask"], prompts)
    handle.remove()
    first, second = captured
    assert_causal(first, second, last_word)


@pytest.mark.parametrize("learner", TRAINABLE_LEARNERS)
def test_trainable_state_round_trip(tiny_clipseg: LoadedCLIPSeg, learner: str) -> None:
    assert_trainable_state_round_trip(partial(build, tiny_clipseg), learner)


def test_load_trainable_state_is_strict(tiny_clipseg: LoadedCLIPSeg) -> None:
    assert_load_trainable_state_is_strict(build(tiny_clipseg, "coop", 2))


def test_baselines_freeze_and_count(tiny_clipseg: LoadedCLIPSeg) -> None:
    assert_zeroshot_and_coop_counts(build(tiny_clipseg, "zeroshot"), build(tiny_clipseg, "coop"))
    e2e = build(tiny_clipseg, "e2e", use_upsampler=False)
    assert e2e.count_parameters()[0] > 0.99 * e2e.count_parameters()[1]
    e2e.train()
    assert e2e.clipseg.training


def test_unknown_learner_params_are_rejected_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_heads"):
        build_prompted_clipseg(str(tmp_path / "nowhere"), "coop", {"n_heads": 4})
    with pytest.raises(ValueError, match="unknown learner"):
        build_prompted_clipseg(str(tmp_path / "nowhere"), "nope", {})


def test_builder_loads_from_folder(tiny_folder: Path) -> None:
    model = build_prompted_clipseg(str(tiny_folder), "maple", {"prompt_depth": 2}, n_ctx=3)
    assert model.learner.n_ctx == 3 and model.upsampler is not None
    assert model.image_size == 96 and len(model.image_mean) == 3
    with torch.no_grad():
        assert model(**batch(model)).shape == (len(TEXTS), 1, 96, 96)


def test_catalog_names_resolve() -> None:
    from tunevlseg.catalog import MODELS, load_object

    assert callable(load_object(MODELS["clipseg"].builder))
    for name, info in LEARNERS.items():
        assert load_object(info.implementation).name == name


def test_cocoop_prompts_depend_on_the_image(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "cocoop", 2)
    _, feature = model.encode_image(batch(model)["pixel_values"], [], pooled=True)
    text = model.learner(feature).text
    assert text[0].shape == (len(TEXTS), model.learner.n_ctx, model.dims.text_width)
    assert not torch.allclose(text[0][0], text[0][1])
