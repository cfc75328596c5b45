"""Prompted CRIS on a tiny, real, randomly initialised model folder (CPU)."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
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

from tunevlseg.catalog import LEARNERS, MODELS, load_object
from tunevlseg.models.cris import (
    CRIS,
    CheckpointMismatchError,
    CRISConfig,
    LoadedCRIS,
    PromptedCRIS,
    build_prompted_cris,
    load_cris,
    load_cris_state_dict,
)
from tunevlseg.models.cris.checkpoint import make_cris_folder
from tunevlseg.models.cris.tiny import tiny_cris_config, write_tiny_cris
from tunevlseg.models.loading import ModelNotFoundError
from tunevlseg.train.loss import dice_bce_loss

PROMPT_LEARNERS = ["coop", "cocoop"]
VISUAL_LEARNERS = ["vpt", "maple", "shared_separate", "shared_attention"]
SMALL = {"cocoop": {"intermediate_dim": 8}}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP
    synchronisation makes each small op many times slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cris(tmp_path_factory.getbasetemp() / "tiny-cris")


@pytest.fixture(scope="session")
def tiny_cris(tiny_folder: Path) -> LoadedCRIS:
    """Loaded once; every test builds on a deep copy (cheaper than reading the folder again)."""
    return load_cris(tiny_folder)


def build(
    loaded: LoadedCRIS, learner: str, depth: int | None = 1, seed: int = 0, **kwargs
) -> PromptedCRIS:
    return build_model(PromptedCRIS, loaded, learner, depth, seed, small=SMALL, **kwargs)


# ----------------------------------------------------------------------------- forward, learners
@pytest.mark.parametrize(
    ("learner", "depth"),
    [("coop", 1), ("coop", 11), ("cocoop", 1), ("cocoop", 11), ("e2e", None)],
)
def test_shapes_and_every_trainable_tensor_gets_gradient(
    tiny_cris: LoadedCRIS, learner: str, depth: int | None
) -> None:
    model = build(tiny_cris, learner, depth).train()
    logits = model(**batch(model))
    assert logits.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    assert torch.isfinite(logits).all()
    logits.pow(2).mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and "upsampler.ratio" in trainable
    without = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_e2e_trains_on_a_batch_of_one(tiny_cris: LoadedCRIS) -> None:
    """BatchNorm1d in the neck's sentence gate cannot use batch statistics of one vector."""
    model = build(tiny_cris, "e2e").train()
    inputs = batch(model)
    single = {k: v[:1] for k, v in inputs.items()}
    model(**single).pow(2).mean().backward()
    assert model.cris.neck.txt_proj[0].weight.grad is not None


def test_prompt_depth_is_clamped_to_the_text_layers(tiny_cris: LoadedCRIS) -> None:
    model = build(tiny_cris, "coop", 11)
    assert model.learner.text_depth == tiny_cris.config.text_layers == 4
    assert len(model.learner().text) == 4


def test_zeroshot_is_plain_cris(tiny_cris: LoadedCRIS) -> None:
    model = build(tiny_cris, "zeroshot", use_upsampler=True)
    assert model.upsampler is None and model.count_parameters()[0] == 0
    inputs = batch(model)
    with torch.no_grad():
        ours = model(**inputs)
        reference = model.cris(**inputs)
    assert ours.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    assert torch.equal(ours, reference)


def test_upsampler_flag(tiny_cris: LoadedCRIS) -> None:
    with_upsampler = build(tiny_cris, "coop")
    without = build(tiny_cris, "coop", use_upsampler=False)
    assert with_upsampler.upsampler is not None and without.upsampler is None
    assert with_upsampler.upsampler.conv.in_channels == tiny_cris.config.projector_dim
    assert with_upsampler.upsampler.ratio.item() == 0.5
    with torch.no_grad():
        assert without(**batch(without)).shape == (2, 1, 96, 96)


@pytest.mark.parametrize("learner", PROMPT_LEARNERS)
def test_frozen_means_frozen(tiny_cris: LoadedCRIS, learner: str) -> None:
    model = build(tiny_cris, learner, 2).train()
    assert_frozen_step(model, model.cris)  # BN statistics too


def test_param_groups_exempt_prompts_biases_and_norms(tiny_cris: LoadedCRIS) -> None:
    model = build(tiny_cris, "cocoop", 2)
    names = no_decay_names(model, weight_decay=0.1)
    assert {
        "learner.text_ctx.0",
        "learner.text_ctx.1",
        "learner.meta_nets.0.0.bias",
        "upsampler.ratio",
        "upsampler.conv.bias",
    } <= names
    assert "learner.meta_nets.0.0.weight" not in names
    assert "upsampler.conv.weight" not in names


def test_text_encoder_stays_causal_with_prompts(tiny_cris: LoadedCRIS) -> None:
    model = build(tiny_cris, "coop", 4)
    tokens, changed, last_word = tokens_with_last_word_changed(model)
    prompts = model.learner().text
    with torch.no_grad():
        first, _ = model.encode_text(tokens["input_ids"], tokens["attention_mask"], prompts)
        second, _ = model.encode_text(changed["input_ids"], changed["attention_mask"], prompts)
        other = [p + 1.0 for p in prompts]
        third, _ = model.encode_text(tokens["input_ids"], tokens["attention_mask"], other)
    assert_causal(first, second, last_word)
    assert torch.equal(first[0, 0], third[0, 0])  # BOS sees nothing after it
    assert not torch.equal(first[0, 1:], third[0, 1:])


def test_tokenize_inserts_placeholders_and_truncates(tiny_cris: LoadedCRIS) -> None:
    coop, e2e = build(tiny_cris, "coop"), build(tiny_cris, "e2e")
    plain = e2e.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(e2e.tokenize(TEXTS)["input_ids"], plain["input_ids"])
    prompted = coop.tokenize(TEXTS)
    n_ctx = coop.learner.n_ctx
    assert_placeholders_inserted(prompted, plain, n_ctx)
    long = coop.tokenize(["polyp " * 200])["input_ids"]
    assert long.shape[1] == tiny_cris.config.word_length
    assert long[0, -1].item() == coop.tokenizer.eos_token_id


def test_cocoop_conditions_on_the_pooled_clip_feature(tiny_cris: LoadedCRIS) -> None:
    model = build(tiny_cris, "cocoop", 2)
    features, pooled = model.encode_image(batch(model)["pixel_values"], pooled=True)
    assert pooled is not None and pooled.shape == (len(TEXTS), tiny_cris.config.embed_dim)
    assert [f.shape[1] for f in features] == list(tiny_cris.config.feature_widths)
    text = model.learner(pooled).text
    assert text[0].shape == (len(TEXTS), model.learner.n_ctx, tiny_cris.config.text_width)
    assert not torch.allclose(text[0][0], text[0][1])


# ----------------------------------------------------------------------------- training API
@pytest.mark.parametrize("learner", ["coop", "cocoop", "e2e"])
def test_trainable_state_round_trip(tiny_cris: LoadedCRIS, learner: str) -> None:
    assert_trainable_state_round_trip(partial(build, tiny_cris), learner)


def test_load_trainable_state_is_strict(tiny_cris: LoadedCRIS) -> None:
    assert_load_trainable_state_is_strict(build(tiny_cris, "coop", 2))


def test_counts_and_baselines(tiny_cris: LoadedCRIS) -> None:
    total = assert_zeroshot_and_coop_counts(build(tiny_cris, "zeroshot"), build(tiny_cris, "coop"))
    e2e = build(tiny_cris, "e2e", use_upsampler=False)
    assert e2e.count_parameters() == (total - 1, total)  # all but CLIP's logit_scale
    assert e2e.train().cris.training


@pytest.mark.parametrize(
    ("learner", "steps", "lr", "ratio"), [("e2e", 15, 3e-3, 0.5), ("coop", 20, 3e-2, 0.93)]
)
def test_short_training_lowers_the_loss(
    tiny_cris: LoadedCRIS, learner: str, steps: int, lr: float, ratio: float
) -> None:
    """Bright squares to segment; a random tiny CRIS learns them end to end quickly, and the
    prompts plus upsampler alone still make steady progress."""
    model = build(tiny_cris, learner, 2).train()
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    masks = torch.zeros(4, 1, size, size)
    masks[0, :, 10:50, 20:70] = masks[1, :, 40:90, 5:45] = 1.0
    masks[2, :, 0:30, 60:96] = masks[3, :, 30:80, 30:80] = 1.0
    pixels = torch.randn(4, 3, size, size, generator=generator) * 0.3 + masks * 1.5
    tokens = model.tokenize(["polyp"] * 4)
    optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = dice_bce_loss(model(pixels, **tokens), masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < ratio * losses[0], losses


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("learner", VISUAL_LEARNERS)
def test_visual_learners_are_refused(
    tiny_cris: LoadedCRIS, tiny_folder: Path, learner: str
) -> None:
    with pytest.raises(ValueError, match="ResNet"):
        build_prompted_cris(str(tiny_folder), learner, {})
    with pytest.raises(ValueError, match="ResNet"):
        build(tiny_cris, learner, 1)


def test_bad_learner_or_params_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_heads"):
        build_prompted_cris(str(tmp_path / "nowhere"), "coop", {"n_heads": 4})
    with pytest.raises(ValueError, match="unknown learner"):
        build_prompted_cris(str(tmp_path / "nowhere"), "nope", {})


# ----------------------------------------------------------------------------- folders, loading
def test_builder_loads_from_folder(tiny_folder: Path) -> None:
    model = build_prompted_cris(str(tiny_folder), "cocoop", {"prompt_depth": 2}, n_ctx=3)
    assert model.learner.n_ctx == 3 and model.upsampler is not None
    assert model.image_size == 96 and model.image_mean == MODELS["cris"].mean
    assert model.image_std == MODELS["cris"].std
    with torch.no_grad():
        assert model(**batch(model)).shape == (len(TEXTS), 1, 96, 96)


def test_catalog_names_resolve() -> None:
    info = MODELS["cris"]
    assert load_object(info.builder) is build_prompted_cris
    assert load_object(info.tiny_writer) is write_tiny_cris


def test_write_tiny_is_idempotent_and_config_round_trips(tiny_folder: Path) -> None:
    weights = tiny_folder / "cris.pth"
    stamp = weights.stat().st_mtime_ns
    assert write_tiny_cris(tiny_folder) == tiny_folder
    assert weights.stat().st_mtime_ns == stamp
    assert CRISConfig.load(tiny_folder / "config.json") == tiny_cris_config()
    with pytest.raises(ValueError, match="unknown CRIS config key"):
        CRISConfig.from_dict({**tiny_cris_config().to_dict(), "bogus": 1})


def test_strict_state_dict_load(tiny_cris: LoadedCRIS) -> None:
    source = tiny_cris.model.state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.items()}}
    target = CRIS(tiny_cris.config)
    report = load_cris_state_dict(target, wrapped)
    assert report.missing == [] and report.unexpected == []
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.items())

    dropped = {k: v for k, v in source.items() if k != "neck.aggr.0.weight"}
    extra = {**source, "model.head.weight": torch.zeros(2)}
    with pytest.raises(CheckpointMismatchError, match="missing key") as info:
        load_cris_state_dict(CRIS(tiny_cris.config), {**dropped, "head.weight": torch.zeros(2)})
    assert info.value.missing == ["neck.aggr.0.weight"]
    assert info.value.unexpected == ["head.weight"]
    with pytest.raises(CheckpointMismatchError, match="unexpected key"):
        load_cris_state_dict(CRIS(tiny_cris.config), extra)
    report = load_cris_state_dict(CRIS(tiny_cris.config), dropped, strict=False)
    assert report.missing == ["neck.aggr.0.weight"]

    key = "proj.txt.weight"
    wrong = {**source, key: torch.zeros(3, 4)}
    message = f"{key}: expected {list(source[key].shape)}, found [3, 4]"
    with pytest.raises(CheckpointMismatchError, match=re.escape(message)):
        load_cris_state_dict(CRIS(tiny_cris.config), wrong, strict=False)


def test_folder_problems_are_clear(tiny_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="tvls-prefetch"):
        load_cris(tmp_path / "missing")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_folder, no_weights)
    (no_weights / "cris.pth").unlink()
    with pytest.raises(ModelNotFoundError, match=r"cris\.pth"):
        load_cris(no_weights)
    other = tmp_path / "hf-config"
    shutil.copytree(tiny_folder, other)
    (other / "config.json").write_text('{"model_type": "clipseg"}')
    with pytest.raises(ModelNotFoundError, match="not a cris config"):
        load_cris(other)


def test_make_cris_folder_from_a_released_checkpoint(
    tiny_cris: LoadedCRIS, tiny_folder: Path, tmp_path: Path
) -> None:
    released = tmp_path / "best_model.pth"
    state = {f"module.{k}": v for k, v in tiny_cris.model.state_dict().items()}
    torch.save({"epoch": 50, "best_iou": 0.7, "state_dict": state}, released)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ModelNotFoundError, match="make_cris_folder"):
        load_cris(bare)
    folder = make_cris_folder(
        released, tmp_path / "ready", tokenizer=tiny_folder, config=tiny_cris.config
    )
    loaded = load_cris(folder)
    reference = tiny_cris.model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match="expected"):
        make_cris_folder(released, tmp_path / "wrong", tokenizer=tiny_folder)  # R50 sizes


def test_hub_id_resolves_from_the_cache(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--tiny-org--tiny-cris"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_cris("tiny-org/tiny-cris").image_size == 96
    with pytest.raises(ModelNotFoundError, match="tvls-prefetch"):
        load_cris("cris-r50")


def test_plain_cris_forward_matches_its_parts(tiny_cris: LoadedCRIS) -> None:
    model = copy.deepcopy(tiny_cris.model)
    tokens = PromptedCRIS(
        copy.deepcopy(tiny_cris), load_object(LEARNERS["zeroshot"].implementation), {}
    ).tokenize(TEXTS)
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        features, _ = model.encode_image(pixels)
        assert [f.shape[-1] for f in features] == [12, 6, 3]  # strides 8, 16, 32
        words, sentence = model.backbone.encode_text(**tokens)
        logits, projected = model.decode(features, words, sentence, tokens["attention_mask"])
        assert logits.shape == (2, 1, 24, 24)  # stride 4
        assert projected.shape == (2, tiny_cris.config.projector_dim, 24, 24)
        full = model(pixels, **tokens)
    assert torch.equal(full, F.interpolate(logits, size=(96, 96), mode="bilinear"))
