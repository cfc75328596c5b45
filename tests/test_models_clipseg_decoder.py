"""Visual prompts through CLIPSeg's decoder (TuneVLSeg eq. 8), on the tiny random CLIPSeg (CPU).

The paper carries the visual prompt tokens on "as if they were token embeddings" after the
prompt depth; the authors' code keeps them through the decoder (``reduces``, FiLM, the decoder
transformer layers) and drops them, with CLS, only before the reshape to the patch grid. That is
``vision_prompts_in_decoder=True``, the default; ``False`` drops them before the decoder.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from _model_checks import TEXTS, build_model, make_batch

from tunevlseg.config.grid import expand
from tunevlseg.config.loader import ConfigError, load_experiment
from tunevlseg.models.clipseg import PromptedCLIPSeg
from tunevlseg.models.loading import LoadedCLIPSeg, load_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg

SMALL = {"maple": {"intermediate_dim": 8}}
N_CTX = 4
# (value passed to the model, None = the default; whether prompts reach the decoder)
SETTINGS = [(None, True), (True, True), (False, False)]
SETTING_IDS = ["default", "on", "off"]


@pytest.fixture(scope="session")
def tiny_decoder_clipseg(tmp_path_factory: pytest.TempPathFactory) -> LoadedCLIPSeg:
    """Loaded once; every test builds on a deep copy."""
    return load_clipseg(write_tiny_clipseg(tmp_path_factory.getbasetemp() / "tiny-clipseg-dec"))


def build(
    loaded: LoadedCLIPSeg, learner: str, depth: int, flag: bool | None, **kwargs: Any
) -> PromptedCLIPSeg:
    """The model with ``N_CTX`` prompts; ``flag`` None leaves the setting at its default."""
    if flag is not None:
        kwargs["vision_prompts_in_decoder"] = flag
    return build_model(PromptedCLIPSeg, loaded, learner, depth, small=SMALL, n_ctx=N_CTX, **kwargs)


def n_patches(model: PromptedCLIPSeg) -> int:
    return (model.image_size // model.patch_size) ** 2


@pytest.mark.parametrize(("flag", "kept"), SETTINGS, ids=SETTING_IDS)
@pytest.mark.parametrize("learner", ["vpt", "maple"])
@pytest.mark.parametrize("depth", [1, 3])
def test_decoder_layers_see_the_prompt_tokens(
    tiny_decoder_clipseg: LoadedCLIPSeg, learner: str, depth: int, flag: bool | None, kept: bool
) -> None:
    """Every decoder layer (and ``reduce``) sees 1 + P + B tokens with the flag, 1 + P without;
    the upsampler still gets the ``(B, reduce_dim, h, w)`` map of the patch grid only."""
    model = build(tiny_decoder_clipseg, learner, depth, flag)
    decoder = model.clipseg.decoder
    seen: dict[str, list[int]] = {"layers": [], "reduces": []}
    maps: list[tuple[int, ...]] = []
    handles = [
        module.register_forward_pre_hook(
            lambda module, args, kwargs, key=key: seen[key].append(args[0].shape[1]),
            with_kwargs=True,
        )
        for key, modules in (("layers", decoder.layers), ("reduces", decoder.reduces))
        for module in modules
    ]
    assert model.upsampler is not None
    handles.append(
        model.upsampler.register_forward_pre_hook(
            lambda module, args: maps.append(tuple(args[0].shape))
        )
    )
    with torch.no_grad():
        logits = model(**make_batch(model))
    for handle in handles:
        handle.remove()
    expected = 1 + n_patches(model) + (N_CTX if kept else 0)
    assert seen["layers"] == [expected] * len(decoder.layers)
    assert seen["reduces"] == [expected] * len(decoder.reduces)
    grid = model.image_size // model.patch_size
    assert maps == [(len(TEXTS), model.clipseg.config.reduce_dim, grid, grid)]
    assert logits.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    assert torch.isfinite(logits).all()


def test_the_setting_changes_the_prediction(tiny_decoder_clipseg: LoadedCLIPSeg) -> None:
    """Same weights, same prompts: attending over the prompts in the decoder moves the logits."""
    on = build(tiny_decoder_clipseg, "vpt", 2, True)
    off = build(tiny_decoder_clipseg, "vpt", 2, False)
    assert torch.equal(on.learner.vision_ctx[0], off.learner.vision_ctx[0])
    inputs = make_batch(on)
    with torch.no_grad():
        assert not torch.allclose(on(**inputs), off(**inputs), atol=1e-6)


@pytest.mark.parametrize("flag", [True, False], ids=["on", "off"])
def test_coop_matches_hf_forward(tiny_decoder_clipseg: LoadedCLIPSeg, flag: bool) -> None:
    """Without visual prompts the setting changes nothing: ours equals HF's own forward given
    the same (CoOp-prompted) text embedding."""
    model = build(tiny_decoder_clipseg, "coop", 2, flag, use_upsampler=False)
    inputs = make_batch(model)
    with torch.no_grad():
        ours = model(**inputs)
        condition = model.encode_text(
            inputs["input_ids"], inputs["attention_mask"], model.learner().text
        )
        reference = model.clipseg(
            pixel_values=inputs["pixel_values"], conditional_embeddings=condition
        ).logits
    assert ours.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    assert (ours.squeeze(1) - reference).abs().max().item() < 1e-5


@pytest.mark.parametrize(("flag", "kept"), SETTINGS, ids=SETTING_IDS)
def test_prompt_gradients_through_the_decoder_alone(
    tiny_decoder_clipseg: LoadedCLIPSeg, flag: bool | None, kept: bool
) -> None:
    """Depth 1 (prompts only at the input). The prompts' influence on CLS and patch tokens is
    cut after every vision layer, so the only way left to the loss is the prompt tokens
    themselves travelling through the decoder: nonzero gradients exactly when they do."""
    model = build(tiny_decoder_clipseg, "vpt", 1, flag, use_upsampler=False).train()
    n_tokens = 1 + n_patches(model)

    def cut(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([output[:, :n_tokens].detach(), output[:, n_tokens:]], dim=1)

    layers = model.clipseg.clip.vision_model.encoder.layers
    handles = [layer.register_forward_hook(cut) for layer in layers]
    model(**make_batch(model)).pow(2).mean().backward()
    for handle in handles:
        handle.remove()
    grad = model.learner.vision_ctx[0].grad
    reached = grad is not None and bool(grad.abs().sum() > 0)
    assert reached == kept


# ------------------------------------------------------------------------- the YAML setting
EXPERIMENT = """\
name: t
output_dir: out
models:
  - name: clipseg
learners:
  - vpt
datasets:
  - name: kvasir
    root: data/kvasir
model:
  n_ctx: 4
  vision_prompts_in_decoder: {value}
"""


def _experiment(tmp_path: Path, value: str, extra: str = "") -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(textwrap.dedent(EXPERIMENT.format(value=value)) + extra)
    return path


def test_yaml_setting_defaults_to_true_and_is_a_grid_axis(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(EXPERIMENT.split("model:\n")[0])
    assert load_experiment(path).spec.model.vision_prompts_in_decoder is True
    grid = "grid:\n  model.vision_prompts_in_decoder: [true, false]\n"
    studies = expand(load_experiment(_experiment(tmp_path, "true", grid))).studies
    assert [s.model_settings.vision_prompts_in_decoder for s in studies] == [True, False]
    assert studies[1].name.endswith("/vision_prompts_in_decoder=false")


def test_yaml_setting_must_be_a_bool(tmp_path: Path) -> None:
    path = _experiment(tmp_path, "maybe")
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert f"{path}:12: model.vision_prompts_in_decoder:" in message, message
    assert "valid boolean" in message, message


# ------------------------------------------------------------------------- the trial builder
def test_build_model_passes_the_setting_to_clipseg_only(
    tmp_path: Path, tiny_decoder_clipseg: LoadedCLIPSeg
) -> None:
    """A trial's CLIPSeg gets the YAML value; CRIS (no visual prompts) builds without it."""
    from tunevlseg.models.cris.tiny import write_tiny_cris
    from tunevlseg.tuning.describe import choose_params
    from tunevlseg.tuning.objective import build_model as build_trial_model

    cris = write_tiny_cris(tmp_path / "tiny-cris")
    text = (
        EXPERIMENT.format(value="false")
        .replace(
            "  - name: clipseg\n",
            f"  - {{name: clipseg, pretrained: '{tiny_decoder_clipseg.folder}'}}\n"
            f"  - {{name: cris, pretrained: '{cris}'}}\n",
        )
        .replace("  - vpt\n", "  - coop\n  - vpt\n")
    )
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    studies = expand(load_experiment(path)).studies
    assert sorted((s.model.name, s.learner) for s in studies) == [
        ("clipseg", "coop"),
        ("clipseg", "vpt"),
        ("cris", "coop"),
    ]
    for spec in studies:
        params = choose_params(spec.param_space, {}, spec.learner).values
        model = build_trial_model(spec, params)
        if spec.model.name == "clipseg":
            assert model.vision_prompts_in_decoder is False
        else:
            assert not hasattr(model, "vision_prompts_in_decoder")
