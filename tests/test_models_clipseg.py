"""Prompted CLIPSeg on a tiny, real, randomly initialised checkpoint (CPU)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tunevlseg.catalog import LEARNERS, load_object
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
TEXTS = ["a photo of a polyp", "the thing on the left"]


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
    params = (
        {} if learner in ("e2e", "zeroshot") else {"prompt_depth": depth, **SMALL.get(learner, {})}
    )
    torch.manual_seed(seed)
    learner_cls = load_object(LEARNERS[learner].implementation)
    return PromptedCLIPSeg(copy.deepcopy(loaded), learner_cls, params, **kwargs)


def batch(model: PromptedCLIPSeg, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    pixels = torch.randn(len(TEXTS), 3, size, size, generator=generator)
    return {"pixel_values": pixels, **model.tokenize(TEXTS)}


@pytest.mark.parametrize(("learner", "upsampler"), [("zeroshot", True), ("e2e", False)])
def test_without_prompts_matches_hf(
    tiny_clipseg: LoadedCLIPSeg, learner: str, upsampler: bool
) -> None:
    model = build(tiny_clipseg, learner, use_upsampler=upsampler)
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
    assert prompted["input_ids"].shape[1] == plain["input_ids"].shape[1] + n_ctx
    assert torch.equal(prompted["input_ids"][:, 0], plain["input_ids"][:, 0])
    assert len(set(prompted["input_ids"][:, 1 : 1 + n_ctx].flatten().tolist())) == 1
    assert torch.equal(prompted["input_ids"][:, 1 + n_ctx :], plain["input_ids"][:, 1:])
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
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
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
    assert not any(m.training for m in model.clipseg.modules())
    assert not any(p.requires_grad for p in model.clipseg.parameters())
    frozen = {k: v.clone() for k, v in model.clipseg.state_dict().items()}
    before = model.trainable_state_dict()
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay=0.05), lr=1e-2)
    model(**batch(model)).pow(2).mean().backward()
    optimizer.step()
    after = model.clipseg.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    unchanged = [k for k, v in model.trainable_state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []


def test_param_groups_exempt_prompts_biases_and_norms(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "shared_separate", 2)
    groups = model.param_groups(weight_decay=0.1)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert {
        "learner.shared_ctx.0",
        "learner.shared_ctx.1",
        "upsampler.ratio",
        "upsampler.conv.bias",
    } <= names
    assert "learner.to_text.0.1.weight" in names  # LayerNorm weight
    assert "learner.to_text.0.0.weight" not in names
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_state_dict())


def test_text_encoder_stays_causal_with_prompts(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "coop", 4)
    captured: list[torch.Tensor] = []
    norm = model.clipseg.clip.text_model.final_layer_norm
    handle = norm.register_forward_hook(lambda module, args, output: captured.append(output))
    tokens = model.tokenize(["a photo of a polyp"])
    changed = {k: v.clone() for k, v in tokens.items()}
    last_word = int(tokens["attention_mask"].sum()) - 2
    changed["input_ids"][0, last_word] = 100
    prompts = model.learner().text
    with torch.no_grad():
        model.encode_text(tokens["input_ids"], tokens["attention_mask"], prompts)
        model.encode_text(changed["input_ids"], changed["attention_mask"], prompts)
    handle.remove()
    first, second = captured
    assert torch.equal(first[0, :last_word], second[0, :last_word])
    assert not torch.equal(first[0, last_word:], second[0, last_word:])


@pytest.mark.parametrize("learner", TRAINABLE_LEARNERS)
def test_trainable_state_round_trip(tiny_clipseg: LoadedCLIPSeg, learner: str) -> None:
    model = build(tiny_clipseg, learner, 2, seed=0).train()
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=1e-2)
    inputs = batch(model)
    model(**inputs).pow(2).mean().backward()
    optimizer.step()
    state = model.trainable_state_dict()
    fresh = build(tiny_clipseg, learner, 2, seed=123)
    fresh.load_trainable_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs), fresh.eval()(**inputs))


def test_load_trainable_state_is_strict(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, "coop", 2)
    state = model.trainable_state_dict()
    with pytest.raises(KeyError, match="missing"):
        model.load_trainable_state_dict({k: v for k, v in state.items() if "upsampler" not in k})
    with pytest.raises(KeyError, match="unexpected"):
        model.load_trainable_state_dict({**state, "learner.extra": torch.zeros(1)})


def test_baselines_freeze_and_count(tiny_clipseg: LoadedCLIPSeg) -> None:
    zeroshot = build(tiny_clipseg, "zeroshot")
    trainable, total = zeroshot.count_parameters()
    assert trainable == 0 and total > 0 and zeroshot.trainable_state_dict() == {}
    e2e = build(tiny_clipseg, "e2e", use_upsampler=False)
    assert e2e.count_parameters()[0] > 0.99 * e2e.count_parameters()[1]
    e2e.train()
    assert e2e.clipseg.training
    coop = build(tiny_clipseg, "coop")
    n_trainable, n_total = coop.count_parameters()
    assert n_trainable == sum(v.numel() for v in coop.trainable_state_dict().values())
    assert n_total == total + n_trainable


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
