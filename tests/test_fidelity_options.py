"""The authors' protocol details as options (docs/fidelity.md rows 25-29): what each one changes.

Learner options: CoCoOp's and MaPLe's projection LayerNorm (``proj_norm``), CoCoOp's image
feature normalisation (``normalize_image_features``), VPT's Gaussian initialisation
(``init: gaussian``, ``init_std``). Model settings: the upsampler's border padding and CRIS's
upsampler input. Every default must stay what the package did before (the golden run checks the
numbers; here the structure).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _model_checks import build_model, make_batch, no_decay_names
from torch import nn

from tunevlseg.learners.base import EncoderDims, low_rank_or_mlp
from tunevlseg.learners.cocoop import CoCoOp
from tunevlseg.learners.maple import MaPLe
from tunevlseg.learners.vpt import VPT
from tunevlseg.models.clipseg import PromptedCLIPSeg
from tunevlseg.models.cris import LoadedCRIS, PromptedCRIS, load_cris
from tunevlseg.models.cris.tiny import write_tiny_cris
from tunevlseg.models.loading import LoadedCLIPSeg, load_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg
from tunevlseg.models.upsampler import LearnableUpsampler
from tunevlseg.train.loss import dice_bce_loss

DIMS = EncoderDims(
    text_width=64, vision_width=96, text_layers=4, vision_layers=3, projection_dim=32
)


class FakeText:
    def token_embeddings(self, text: str) -> torch.Tensor:
        return torch.zeros(len(text.split()), DIMS.text_width)

    def layer_inputs(self, text: str) -> list[torch.Tensor]:
        return [torch.zeros(len(text.split()), DIMS.text_width)] * DIMS.text_layers


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------------ projection LayerNorm
@pytest.mark.parametrize("use_lora", [False, True], ids=["mlp", "lora"])
@pytest.mark.parametrize("norm_bias", [True, False], ids=["norm-bias", "no-norm-bias"])
def test_final_norm_replaces_the_last_bias_with_a_layernorm(
    use_lora: bool, norm_bias: bool
) -> None:
    plain = low_rank_or_mlp(16, 8, 24, use_lora=use_lora)
    normed = low_rank_or_mlp(16, 8, 24, use_lora=use_lora, final_norm=True, norm_bias=norm_bias)
    assert not any(isinstance(m, nn.LayerNorm) for m in plain)
    last_linear = [m for m in normed if isinstance(m, nn.Linear)][-1]
    assert isinstance(normed[-1], nn.LayerNorm) and normed[-1].normalized_shape == (24,)
    assert last_linear.bias is None
    assert (normed[-1].bias is not None) == norm_bias
    # the last bias (24) goes, the norm's weight (24) and maybe its bias (24) come
    assert n_params(normed) == n_params(plain) - 24 + 24 + (24 if norm_bias else 0)
    out = normed(torch.randn(5, 16) * 100)
    assert out.shape == (5, 24)
    assert torch.allclose(out.mean(-1), torch.zeros(5), atol=1e-5)  # normalised, scale-free


def test_cocoop_proj_norm_ends_every_meta_net_with_a_layernorm_without_bias() -> None:
    default = CoCoOp(DIMS, n_ctx=4, frozen_text=FakeText(), prompt_depth=3, intermediate_dim=8)
    normed = CoCoOp(
        DIMS, n_ctx=4, frozen_text=FakeText(), prompt_depth=3, intermediate_dim=8, proj_norm=True
    )
    assert not any(isinstance(m, nn.LayerNorm) for m in default.modules())
    for meta in normed.meta_nets:
        assert isinstance(meta[-1], nn.LayerNorm) and meta[-1].bias is None
    assert n_params(normed) == n_params(default)  # a bias of width 64 out, a norm weight in
    prompts = normed(torch.randn(2, DIMS.projection_dim))
    assert [p.shape for p in prompts.text] == [(2, 4, DIMS.text_width)] * 3


def test_cocoop_normalize_image_features_decides_whether_the_feature_scale_matters() -> None:
    feature = torch.randn(2, DIMS.projection_dim)
    for normalize in (True, False):
        torch.manual_seed(0)
        learner = CoCoOp(
            DIMS,
            n_ctx=4,
            frozen_text=FakeText(),
            intermediate_dim=8,
            normalize_image_features=normalize,
        )
        same = torch.allclose(learner(feature).text[0], learner(feature * 7).text[0], atol=1e-6)
        assert same == normalize


def test_maple_proj_norm_normalises_the_visual_prompts() -> None:
    default = MaPLe(DIMS, n_ctx=4, frozen_text=FakeText(), prompt_depth=3, intermediate_dim=8)
    normed = MaPLe(
        DIMS, n_ctx=4, frozen_text=FakeText(), prompt_depth=3, intermediate_dim=8, proj_norm=True
    )
    for coupling in normed.couplings:
        assert isinstance(coupling[-1], nn.LayerNorm) and coupling[-1].bias is not None
        assert coupling[-1].normalized_shape == (DIMS.vision_width,)
    # per coupling: the last bias (vision width) out, norm weight and bias (2 x width) in
    assert n_params(normed) == n_params(default) + DIMS.vision_width * len(normed.couplings)
    vision = normed().vision
    assert [v.shape for v in vision] == [(4, DIMS.vision_width)] * 3
    for tokens in vision:
        assert torch.allclose(tokens.mean(-1), torch.zeros(4), atol=1e-5)
        # unit variance up to LayerNorm's eps, which matters for the tiny pre-norm values here
        assert torch.allclose(tokens.var(-1, unbiased=False), torch.ones(4), atol=0.05)


@pytest.mark.parametrize(
    ("cls", "bad", "message"),
    [
        (CoCoOp, {"proj_norm": "true"}, "proj_norm must be true or false"),
        (CoCoOp, {"normalize_image_features": 0}, "normalize_image_features must be true or false"),
        (MaPLe, {"normalize_image_features": False}, "unknown parameter"),
        (VPT, {"proj_norm": True}, "unknown parameter"),
        (VPT, {"init": "embedding"}, "init must be one of"),
        (VPT, {"init": "gaussian", "init_std": 0}, "init_std must be a positive number"),
        (VPT, {"init_std": 0.05}, "init_std applies to `init: gaussian` only"),
    ],
)
def test_learners_refuse_bad_option_values(cls: type, bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(DIMS, n_ctx=4, frozen_text=FakeText(), **bad)


# ------------------------------------------------------------------------------------ VPT init
VIT = EncoderDims(
    text_width=512, vision_width=768, text_layers=12, vision_layers=10, projection_dim=512
)


def test_vpt_gaussian_init_has_the_asked_standard_deviation() -> None:
    torch.manual_seed(0)
    tokens = torch.cat(list(VPT(VIT, n_ctx=16, prompt_depth=10, init="gaussian").vision_ctx))
    assert tokens.shape == (160, 768)
    assert tokens.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert tokens.std().item() == pytest.approx(0.02, rel=0.02)
    wider = VPT(VIT, n_ctx=16, prompt_depth=10, init="gaussian", init_std=0.05)
    assert torch.cat(list(wider.vision_ctx)).std().item() == pytest.approx(0.05, rel=0.02)


def test_vpt_default_init_stays_uniform_at_the_patch_embedding_scale() -> None:
    torch.manual_seed(0)
    tokens = torch.cat(list(VPT(VIT, n_ctx=16, prompt_depth=10).vision_ctx))
    bound = math.sqrt(6 / (3 * 16**2 + 768))
    assert tokens.abs().max().item() <= bound
    assert tokens.abs().max().item() > 0.99 * bound  # uniform: it reaches the bound
    assert tokens.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    torch.manual_seed(0)
    explicit = torch.cat(list(VPT(VIT, n_ctx=16, prompt_depth=10, init="uniform").vision_ctx))
    assert torch.equal(tokens, explicit)


# ----------------------------------------------------------------------------------- upsampler
def _twin_upsamplers(channels: int = 6) -> tuple[LearnableUpsampler, LearnableUpsampler]:
    zeros = LearnableUpsampler(channels)
    replicate = LearnableUpsampler(channels, padding_mode="replicate")
    replicate.load_state_dict(zeros.state_dict())
    return zeros, replicate


def test_replicate_padding_changes_only_the_border() -> None:
    zeros, replicate = _twin_upsamplers()
    assert zeros.conv.padding_mode == "zeros" and replicate.conv.padding_mode == "replicate"
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 5, 5, generator=generator) + 3  # far from zero at the edge
    logits = torch.randn(2, 1, 40, 40, generator=generator)
    a, b = zeros(features, logits), replicate(features, logits)
    assert a.shape == b.shape == (2, 1, 40, 40)
    reach = zeros.conv.kernel_size[0] // 2  # pixels from the edge that see the padding
    interior = (..., slice(reach, -reach), slice(reach, -reach))
    assert torch.allclose(a[interior], b[interior], atol=1e-6)
    border = (a - b).abs()
    border[interior] = 0
    for side in (border[..., :reach, :], border[..., -reach:, :], border[..., :, :reach]):
        assert side.amax().item() > 1e-3


def test_an_unknown_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        LearnableUpsampler(4, padding_mode="reflect")  # type: ignore[arg-type]


def test_hidden_channels_narrow_the_features_first() -> None:
    upsampler = LearnableUpsampler(32, hidden_channels=8, padding_mode="replicate")
    assert upsampler.reduce is not None
    assert upsampler.reduce.weight.shape == (8, 32, 1, 1) and upsampler.reduce.bias is None
    assert upsampler.conv.in_channels == 8
    assert n_params(upsampler) == 32 * 8 + 8 * 25 + 1 + 1  # 1x1, 5x5 + bias, ratio
    out = upsampler(torch.randn(2, 32, 4, 4), torch.zeros(2, 1, 16, 16))
    assert out.shape == (2, 1, 16, 16)


# ------------------------------------------------------------------------- the prompted models
@pytest.fixture(scope="module")
def tiny_cris(tmp_path_factory: pytest.TempPathFactory) -> LoadedCRIS:
    return load_cris(write_tiny_cris(tmp_path_factory.mktemp("fidelity") / "tiny-cris"))


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory: pytest.TempPathFactory) -> LoadedCLIPSeg:
    return load_clipseg(write_tiny_clipseg(tmp_path_factory.mktemp("fidelity") / "tiny-clipseg"))


def _upsampler_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hook = model.upsampler.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        model(**batch)
    finally:
        hook.remove()
    return seen


def test_cris_decoder_input_reads_the_decoder_output_and_trains(tiny_cris: LoadedCRIS) -> None:
    config = tiny_cris.config
    model = build_model(
        PromptedCRIS,
        tiny_cris,
        "coop",
        small={},
        upsampler_input="decoder",
        upsampler_padding="replicate",
    )
    upsampler = model.upsampler
    assert upsampler.reduce.weight.shape == (64, config.vis_dim, 1, 1)
    assert upsampler.reduce.bias is None and upsampler.conv.padding_mode == "replicate"
    batch = make_batch(model)
    (features,) = _upsampler_inputs(model, batch)
    stride16 = config.image_size // 16
    assert features.shape == (2, config.vis_dim, stride16, stride16)

    model.train()
    logits = model(**batch)
    assert logits.shape == (2, 1, config.image_size, config.image_size)
    dice_bce_loss(logits, (torch.rand_like(logits) > 0.5).float()).backward()
    for tensor in (upsampler.reduce.weight, upsampler.conv.weight, upsampler.ratio):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"upsampler.reduce.weight", "upsampler.conv.weight"} <= trainable


def test_cris_default_upsampler_still_reads_the_projector_map(tiny_cris: LoadedCRIS) -> None:
    config = tiny_cris.config
    model = build_model(PromptedCRIS, tiny_cris, "coop", small={})
    assert model.upsampler.reduce is None and model.upsampler.conv.padding_mode == "zeros"
    (features,) = _upsampler_inputs(model, make_batch(model))
    stride4 = config.image_size // 4
    assert features.shape == (2, config.projector_dim, stride4, stride4)
    decoder = build_model(PromptedCRIS, tiny_cris, "coop", small={}, upsampler_input="decoder")
    extra = config.vis_dim * 64 + 64 * 25 - config.projector_dim * 25
    assert decoder.count_parameters()[0] == model.count_parameters()[0] + extra


def test_cris_refuses_an_unknown_upsampler_input(tiny_cris: LoadedCRIS) -> None:
    with pytest.raises(ValueError, match="upsampler_input"):
        build_model(PromptedCRIS, tiny_cris, "coop", small={}, upsampler_input="neck")


def test_clipseg_upsampler_padding(tiny_clipseg: LoadedCLIPSeg) -> None:
    zeros = build_model(PromptedCLIPSeg, tiny_clipseg, "coop", small={})
    replicate = build_model(
        PromptedCLIPSeg, tiny_clipseg, "coop", small={}, upsampler_padding="replicate"
    )
    assert zeros.upsampler.conv.padding_mode == "zeros"
    assert replicate.upsampler.conv.padding_mode == "replicate"
    batch = make_batch(zeros)
    a, b = zeros(**batch), replicate(**batch)  # the same seed: the same weights
    assert a.shape == b.shape
    assert torch.allclose(a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2], atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-5)


def test_projection_norms_train_without_weight_decay(tiny_clipseg: LoadedCLIPSeg) -> None:
    """The options reach the learner through the model, and AdamW leaves the norms' scale."""
    model = PromptedCLIPSeg(
        copy.deepcopy(tiny_clipseg),
        MaPLe,
        {"prompt_depth": 2, "intermediate_dim": 8, "proj_norm": True},
    )
    norms = {
        f"learner.couplings.{i}.{len(c) - 1}.{kind}"
        for i, c in enumerate(model.learner.couplings)
        for kind in ("weight", "bias")
    }
    assert all(isinstance(c[-1], nn.LayerNorm) for c in model.learner.couplings)
    assert norms <= no_decay_names(model)
