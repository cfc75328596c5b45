"""``hclip``: H-CLIP's block-diagonal (partly orthogonal) multipliers of the encoder weights.

Checked on both tiny random models (CLIPSeg: text and vision encoders; CRIS: text only): the
untrained model is the frozen one, the text blocks stay rotations while training (the vision
ones do not have to), no frozen weight moves and only the learner gets gradients, a step lowers
the loss, the checkpoint holds only the blocks (and DCRC, upsampler) and reloads to the same
outputs, the parameter count follows the formula, options are checked with file:line errors,
and ``tvls-train --describe`` counts it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _model_checks import assert_trainable_state_round_trip, make_batch
from torch import nn

from tunevlseg.catalog import LEARNERS, MODELS, is_viable
from tunevlseg.config.loader import ConfigError, load_experiment
from tunevlseg.config.spaces import PAPER_SPACES
from tunevlseg.learners.baselines import ZeroShot
from tunevlseg.learners.hclip import HCLIP
from tunevlseg.models.block_rotation import cayley, rotate_inputs, skew_from_upper
from tunevlseg.models.clipseg import PromptedCLIPSeg
from tunevlseg.models.cris import PromptedCRIS, load_cris
from tunevlseg.models.cris.tiny import write_tiny_cris
from tunevlseg.models.loading import load_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg

FAMILIES = ["clipseg", "cris"]
ENCODERS = {"clipseg": "clipseg.clip", "cris": "cris.backbone"}
Q = 32
"""Divides every tiny width (CLIPSeg text 64 / MLP 128, vision 96 / 192; CRIS text 32 / 128)."""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("hclip-models")
    return {
        "clipseg": load_clipseg(write_tiny_clipseg(base / "tiny-clipseg")),
        "cris": load_cris(write_tiny_cris(base / "tiny-cris")),
    }


def builder(loaded: dict[str, Any], family: str, **options: Any) -> Callable[..., Any]:
    """``build(learner, depth, seed=...)`` as the shared checks call it (depth is unused)."""
    model_cls = {"clipseg": PromptedCLIPSeg, "cris": PromptedCRIS}[family]

    def build(learner: str = "hclip", depth: Any = None, seed: int = 0, **kwargs: Any) -> Any:
        torch.manual_seed(seed)
        learner_cls = HCLIP if learner == "hclip" else ZeroShot
        params = {"q": Q, **options} if learner == "hclip" else {}
        return model_cls(copy.deepcopy(loaded[family]), learner_cls, params, **kwargs)

    return build


def _step(model: nn.Module, steps: int = 1, lr: float = 1e-2) -> list[float]:
    """AdamW steps on the squared logits of one batch; the losses before each step."""
    model.train()
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay=1e-4), lr=lr)  # type: ignore[operator]
    batch = make_batch(model)
    losses = []
    for _ in range(steps):
        loss = model(**batch).pow(2).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses


def _orthogonality_error(blocks: torch.Tensor) -> float:
    flat = blocks.reshape(-1, *blocks.shape[-2:])
    eye = torch.eye(flat.shape[-1])
    return float((flat @ flat.transpose(-1, -2) - eye).abs().max())


# ----------------------------------------------------------------------------- catalogue
def test_hclip_runs_on_every_model_with_its_space_and_the_papers_defaults() -> None:
    info = LEARNERS["hclip"]
    assert info.modality == "none" and info.trains
    assert all(is_viable(model, "hclip") for model in MODELS)
    assert set(PAPER_SPACES["hclip"]) == {"lr", "weight_decay"}
    lr = PAPER_SPACES["hclip"]["lr"]
    assert lr.log and lr.low <= 5e-6 <= lr.high  # H-CLIP's own learning rate is inside
    assert HCLIP.defaults == {"q": 128, "orthogonal": "text", "dcrc": True, "targets": "all"}


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"q": 1}, "q must be an int >= 2"),
        ({"q": True}, "q must be an int"),
        ({"orthogonal": "vision"}, "orthogonal must be one of text, both, none"),
        ({"dcrc": "yes"}, "dcrc must be true or false"),
        ({"targets": "mlp"}, "targets must be one of all, qkv"),
        ({"prompt_depth": 2}, "unknown parameter"),
    ],
)
def test_bad_parameters_are_refused(bad: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        HCLIP.resolve_params(bad)


def test_q_must_divide_the_adapted_weights(loaded: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"q=48 does not divide the input size 64 of the text"):
        builder(loaded, "clipseg", q=48)()


# ----------------------------------------------------------------------------- the algebra
def test_cayley_blocks_are_rotations_and_identity_at_zero() -> None:
    torch.manual_seed(0)
    upper = torch.randn(5, 7 * 6 // 2)
    rotations = cayley(skew_from_upper(upper, 7))
    assert _orthogonality_error(rotations) < 1e-5
    assert torch.equal(cayley(torch.zeros(3, 7, 7)), torch.eye(7).expand(3, 7, 7))


def test_rotate_inputs_is_the_weight_times_the_transposed_block_diagonal() -> None:
    torch.manual_seed(0)
    weight = torch.randn(3 * 4, 6)  # three row groups (stacked q/k/v), blocks of 3 inputs
    blocks = torch.randn(3 * 2, 3, 3)
    expected = torch.cat(
        [
            weight[4 * g : 4 * (g + 1)] @ torch.block_diag(*blocks[2 * g : 2 * (g + 1)]).T
            for g in range(3)
        ]
    )
    assert torch.allclose(rotate_inputs(weight, blocks, groups=3), expected, atol=1e-6)


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("dcrc", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_untrained_model_is_the_frozen_one(
    loaded: dict[str, Any], family: str, dcrc: bool
) -> None:
    build = builder(loaded, family, dcrc=dcrc)
    adapted, frozen = build(use_upsampler=False), build("zeroshot")
    batch = make_batch(adapted)
    with torch.no_grad():
        difference = (adapted(**batch) - frozen(**batch)).abs().max().item()
    assert difference < 1e-6


@pytest.mark.parametrize(("orthogonal", "vision_orthogonal"), [("text", False), ("both", True)])
def test_text_blocks_stay_rotations_while_training(
    loaded: dict[str, Any], orthogonal: str, vision_orthogonal: bool
) -> None:
    model = builder(loaded, "clipseg", orthogonal=orthogonal)()
    _step(model, steps=3, lr=5e-2)
    with torch.no_grad():
        rotations = model.learner.rotations()
    assert (rotations["text"] - torch.eye(Q)).abs().max() > 1e-3  # it did train
    assert _orthogonality_error(rotations["text"]) < 1e-5
    vision_error = _orthogonality_error(rotations["vision"])
    assert (vision_error < 1e-5) is vision_orthogonal
    if not vision_orthogonal:
        assert vision_error > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_only_the_learner_and_frozen_weights_do_not_move(
    loaded: dict[str, Any], family: str
) -> None:
    model = builder(loaded, family)()
    encoders = model.get_submodule(ENCODERS[family])
    frozen = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if not k.startswith(("learner.", "upsampler."))
    }
    assert not any(p.requires_grad for p in encoders.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("learner.", "upsampler.")) for n in trainable)
    losses = _step(model, steps=2, lr=1e-3)
    assert losses[1] < losses[0]  # a step lowers the loss
    with_grad = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert with_grad and with_grad <= trainable
    assert any(n.startswith("learner.blocks.") for n in with_grad)
    after = model.state_dict()
    assert [k for k, v in frozen.items() if not torch.equal(v, after[k])] == []
    assert not any(m.training for m in encoders.modules())


def test_cris_adapts_only_its_text_encoder(loaded: dict[str, Any]) -> None:
    model = builder(loaded, "cris")()
    assert set(model.learner.blocks) == {"text"}
    assert "parametrizations" not in "".join(
        n for n, _ in model.cris.backbone.visual.named_parameters()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_holds_only_the_learner_and_reloads(loaded: dict[str, Any], family: str) -> None:
    build = builder(loaded, family)
    state = build().trainable_state_dict()
    assert state and all(k.startswith(("learner.", "upsampler.")) for k in state)
    assert_trainable_state_round_trip(build, "hclip")


# ----------------------------------------------------------------------------- counts
def expected_count(
    widths: list[tuple[int, int, int]], q: int, orthogonal: set[str], dcrc: bool, targets: str
) -> int:
    """Blocks per layer (q/k/v/out read the width, fc1 the width, fc2 the MLP width), times
    layers, times q(q-1)/2 (orthogonal) or q² numbers; DCRC adds two 2-layer MLPs over the M
    slots and the L layers, and α (M x L)."""
    total, slots, layers = 0, 0, 0
    for encoder, (width, mlp, n_layers) in zip(("text", "vision"), widths, strict=False):
        per_layer = 3 * width // q if targets == "qkv" else (5 * width + mlp) // q
        size = q * (q - 1) // 2 if encoder in orthogonal else q * q
        total += n_layers * per_layer * size
        slots, layers = slots + per_layer, max(layers, n_layers)
    if dcrc:
        total += 2 * (slots * slots + slots) + 2 * (layers * layers + layers) + slots * layers
    return total


TINY_WIDTHS = {"clipseg": [(64, 128, 4), (96, 192, 4)], "cris": [(32, 128, 4)]}
"""(width, MLP width, adapted layers) per encoder of the tiny models (CLIPSeg's vision encoder
runs its 4 layers: extract_layers [1, 2, 3])."""


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dcrc": False},
        {"q": 16},
        {"orthogonal": "none"},
        {"orthogonal": "both", "dcrc": False},
        {"targets": "qkv"},
    ],
)
def test_parameter_count_follows_the_formula(
    loaded: dict[str, Any], family: str, options: dict[str, Any]
) -> None:
    model = builder(loaded, family, **options)(use_upsampler=False)
    params = {**HCLIP.defaults, "q": Q, **options}
    orthogonal = {"text": {"text"}, "both": {"text", "vision"}, "none": set()}[params["orthogonal"]]
    trainable, _ = model.count_parameters()
    assert trainable == expected_count(
        TINY_WIDTHS[family], params["q"], orthogonal, params["dcrc"], params["targets"]
    )
    assert trainable == sum(v.numel() for v in model.trainable_state_dict().values())


# ----------------------------------------------------------------------------- config and CLI
VALID = """\
name: h
output_dir: out
models: [clipseg]
learners:
  - coop
  - name: hclip
    options: {OPTIONS}
datasets:
  - {name: voc, root: data/voc, format: natural}
"""


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ("{q: 0}", "q must be an int >= 2"),
        ("{orthogonal: vision}", "orthogonal must be one of text, both, none"),
        ("{dcrc: maybe}", "dcrc must be true or false"),
        ("{targets: mlp}", "targets must be one of all, qkv"),
    ],
)
def test_bad_options_name_file_and_line(tmp_path: Path, options: str, fragment: str) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(VALID.replace("{OPTIONS}", options))
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert f"{path}:7: learners[1].options:" in message, message
    assert fragment in message, message


def test_hclip_options_on_another_learner_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(VALID.replace("  - coop\n", "  - {name: coop, options: {dcrc: false}}\n"))
    with pytest.raises(ConfigError, match=r"h.yaml:5: learners\[0\].options:.*belong to hclip"):
        load_experiment(path)


def test_describe_counts_hclip(
    loaded: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tvls-train --describe`` lists hclip on both tiny models with the formula's count."""
    from tunevlseg.cli.train import main

    text = (Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml").read_text()
    learners = "learners: [coop, cocoop, vpt, shared_attention]"
    assert learners in text
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "demo.yaml").write_text(
        text.replace(
            learners, f"learners: [coop, {{name: hclip, options: {{q: {Q}, dcrc: false}}}}]"
        )
    )
    assert main([str(folder / "demo.yaml"), "--describe", "--json"]) == 0
    rows = {
        row["model"]: row
        for row in json.loads(capsys.readouterr().out)
        if row["learner"] == "hclip"
    }
    assert set(rows) == {"clipseg", "cris"}
    for family, row in rows.items():
        blocks = expected_count(TINY_WIDTHS[family], Q, {"text"}, dcrc=False, targets="all")
        upsampler = builder(loaded, family)().upsampler
        assert row["prompt_depth"] is None
        assert row["trainable"] == blocks + sum(p.numel() for p in upsampler.parameters())


# ----------------------------------------------------------------------------- a short fit
SIZE = 64


@pytest.mark.timeout(300)
def test_a_tiny_fit_checkpoints_only_the_learner(loaded: dict[str, Any], tmp_path: Path) -> None:
    from tunevlseg.data.datamodule import SegmentationDataModule
    from tunevlseg.data.synthetic import write_synthetic_natural
    from tunevlseg.train.fit import fit
    from tunevlseg.train.paths import RunPaths
    from tunevlseg.train.settings import FitSettings

    root = write_synthetic_natural(
        tmp_path / "data", n_train=8, n_val=4, n_test=4, image_size=SIZE, seed=0
    )

    def run(max_epochs: int) -> Any:
        settings = FitSettings(
            max_epochs=max_epochs,
            patience=50,
            batch_size=4,
            effective_batch_size=4,
            lr=1e-3,
            weight_decay=1e-4,
            seed=0,
            accelerator="cpu",
        )
        model = builder(loaded, "clipseg")()
        datamodule = SegmentationDataModule(
            root,
            "natural",
            "p0",
            image_size=SIZE,
            mean=model.image_mean,
            std=model.image_std,
            tokenize=model.tokenize,
            batch_size=settings.batch_size,
            seed=settings.seed,
        )
        return fit(model, datamodule, settings, tmp_path / "run")

    first = run(2)  # its test metrics come from best.ckpt, loaded into a strict model
    assert first.epochs_run == 2 and 0.0 <= first.test_dice <= 1.0
    checkpoint = torch.load(RunPaths(tmp_path / "run").last_checkpoint, weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert any("learner.blocks.text" in k for k in keys)
    assert all(".learner." in f".{k}" or ".upsampler." in f".{k}" for k in keys), keys
