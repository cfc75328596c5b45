"""VLPT (LDVC's vision-language prompt tuning) through every path the other learners take.

The learner alone (token counts per layer, layer-wise initialisation, parameter checks), its
two optional parts (the text adapter and the routed local-consensus attention), the learner on
the tiny real CLIPSeg (frozen weights, gradients, checkpoints, one step), and the experiment
file (options with file:line errors, search space, viability, ``tvls-train --describe``). The
slow test runs a sweep with it end to end (launch, resume, collect).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _model_checks import (
    TEXTS,
    assert_frozen_step,
    assert_trainable_state_round_trip,
    build_model,
    make_batch,
    no_decay_names,
)

from tunevlseg.catalog import LEARNERS, is_viable
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import ConfigError, load_experiment, parse_experiment
from tunevlseg.config.spaces import PAPER_SPACES
from tunevlseg.learners.base import EncoderDims
from tunevlseg.learners.vlpt import VLPT, TextAdapter
from tunevlseg.models.clipseg import PromptedCLIPSeg
from tunevlseg.models.consensus import LocalConsensus
from tunevlseg.models.loading import LoadedCLIPSeg, load_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg
from tunevlseg.train.loss import dice_bce_loss

DIMS = EncoderDims(
    text_width=64, vision_width=96, text_layers=4, vision_layers=3, projection_dim=32
)
ALL_PARTS = {"text_adapter": True, "consensus": True, "consensus_window": 2, "consensus_top_m": 3}


class FakeText:
    """A stand-in for the frozen text encoder: deterministic, distinguishable per layer."""

    def token_embeddings(self, text: str) -> torch.Tensor:
        return torch.full((len(text.split()), DIMS.text_width), -1.0)

    def layer_inputs(self, text: str) -> list[torch.Tensor]:
        n = len(text.split())
        return [torch.full((n, DIMS.text_width), float(d)) for d in range(DIMS.text_layers)]


def make(n_ctx: int = 4, **params) -> VLPT:
    return VLPT(DIMS, n_ctx=n_ctx, frozen_text=FakeText(), decoder_width=16, **params)


# ----------------------------------------------------------------------------- the learner
def test_text_and_vision_token_counts_per_layer() -> None:
    learner = make(prompt_depth=11, n_ctx_text=6, n_ctx_vision=40)
    prompts = learner()
    assert (learner.text_depth, learner.vision_depth) == (4, 3)  # one depth, clamped per encoder
    assert [t.shape for t in prompts.text] == [(6, 64)] * 4
    assert [v.shape for v in prompts.vision] == [(40, 96)] * 3
    default = make(n_ctx=5, prompt_depth=2)()
    assert [t.shape for t in default.text] == [(5, 64)] * 2  # None: the model's n_ctx
    assert [v.shape for v in default.vision] == [(5, 96)] * 2


def test_text_starts_layerwise_and_vision_as_vpt() -> None:
    learner = make(prompt_depth=3, n_ctx_text=4, n_ctx_vision=300)
    assert torch.equal(learner.text_ctx[0], torch.full((4, 64), -1.0))  # token embeddings
    assert torch.equal(learner.text_ctx[2], torch.full((4, 64), 2.0))  # layer 2's hidden states
    bound = math.sqrt(6.0 / (3 * 16**2 + 96))
    vision = torch.cat(list(learner.vision_ctx))
    assert vision.abs().max() <= bound and vision.abs().max() > 0.9 * bound
    gaussian = make(prompt_depth=2, init="gaussian")
    assert gaussian.text_ctx[0].std().item() == pytest.approx(0.02, rel=0.5)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"n_ctx_text": 0}, "n_ctx_text must be an int in 1..64"),
        ({"n_ctx_text": 65}, "n_ctx_text"),
        ({"n_ctx_vision": 2.5}, "n_ctx_vision must be a positive int"),
        ({"text_adapter": "yes"}, "text_adapter must be true or false"),
        ({"consensus": True, "consensus_top_m": 0}, "consensus_top_m must be a positive int"),
        ({"consensus_window": 2}, "consensus_window need(s) consensus: true"),
        ({"init": "zeros"}, "init must be one of"),
        ({"prompt_depth": 12}, "prompt_depth"),
        ({"shared_dim": 8}, "unknown parameter"),
    ],
)
def test_bad_values_are_refused(bad: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make(**bad)


def test_consensus_needs_the_decoder_width() -> None:
    with pytest.raises(ValueError, match="decoder_width"):
        VLPT(DIMS, n_ctx=4, frozen_text=FakeText(), consensus=True)
    assert VLPT(DIMS, n_ctx=4, frozen_text=FakeText()).refine_features(x := torch.ones(1)) is x


# ----------------------------------------------------------------------------- text adapter
def test_text_adapter_starts_as_the_identity_then_mixes_in_the_image() -> None:
    torch.manual_seed(0)
    adapter = TextAdapter(8)
    text, image = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8)
    out = adapter(text, image)
    assert torch.equal(out, text)  # the frozen FiLM first sees the condition it was trained on
    out.sum().backward()
    assert adapter.proj.weight.grad is not None and adapter.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        adapter.proj.weight.normal_()
    other_image = torch.randn(3, 8)
    assert not torch.allclose(adapter(text, image), adapter(text, other_image))
    # V_g enters L2-normalised: its scale does not matter
    assert torch.allclose(adapter(text, image), adapter(text, 7.0 * image), atol=1e-5)


# ----------------------------------------------------------------------------- consensus
def _full_attention(block: LocalConsensus, features: torch.Tensor) -> torch.Tensor:
    """What the block computes with plain self-attention over all tokens, same weights."""
    batch, channels, height, width = features.shape
    tokens = block.norm(features.flatten(2).transpose(1, 2))  # (B, N, C)
    heads = block.n_heads
    q, k, v = (
        t.reshape(batch, -1, heads, channels // heads).transpose(1, 2)
        for t in block.qkv(tokens).chunk(3, dim=-1)
    )
    mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, channels)
    attended = block.out(mixed).transpose(1, 2).reshape(batch, channels, height, width)
    return features + block.gamma[:, None, None] * attended


def _loop_reference(block: LocalConsensus, features: torch.Tensor) -> torch.Tensor:
    """Route attention window by window with Python loops (one head), the way it is described:
    descriptors are the mean query and key of each window's real tokens, each window keeps its
    ``top_m`` best windows by descriptor dot product, its tokens attend to theirs."""
    _, channels, height, width = features.shape
    s = block.window
    tokens = block.norm(features[0].flatten(1).T)  # (N, C), row-major
    q, k, v = block.qkv(tokens).chunk(3, dim=-1)
    rows, cols = math.ceil(height / s), math.ceil(width / s)
    members = [
        [
            y * width + x
            for y in range(r * s, min(r * s + s, height))
            for x in range(c * s, min(c * s + s, width))
        ]
        for r in range(rows)
        for c in range(cols)
    ]
    q_desc = torch.stack([q[m].mean(0) for m in members])
    k_desc = torch.stack([k[m].mean(0) for m in members])
    routes = (q_desc @ k_desc.T).topk(min(block.top_m, len(members)), dim=-1).indices
    out = torch.zeros_like(q)
    for window, member in enumerate(members):
        keys = [t for routed in routes[window].tolist() for t in members[routed]]
        weights = (q[member] @ k[keys].T / math.sqrt(channels)).softmax(-1)
        out[member] = weights @ v[keys]
    attended = block.out(out).T.reshape(channels, height, width)
    return features + block.gamma[:, None, None] * attended[None]


def _block(channels: int = 8, **kwargs) -> LocalConsensus:
    torch.manual_seed(0)
    block = LocalConsensus(channels, **kwargs)
    with torch.no_grad():
        block.gamma.fill_(1.0)  # make the attention visible in the output
    return block


def test_consensus_keeps_the_shape_at_clipseg_size() -> None:
    """22x22 tokens (352 px) in 4x4 windows: 36 windows, the last row and column half padding."""
    block = _block(64, window=4, top_m=9)
    features = torch.randn(2, 64, 22, 22)
    out = block(features)
    assert out.shape == features.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


@pytest.mark.parametrize(
    ("size", "window", "top_m", "heads"),
    [((22, 22), 4, 36, 1), ((22, 22), 4, 100, 2), ((6, 5), 2, 9, 1), ((4, 4), 1, 16, 4)],
)
def test_consensus_over_every_window_is_full_self_attention(
    size: tuple[int, int], window: int, top_m: int, heads: int
) -> None:
    block = _block(8, window=window, top_m=top_m, n_heads=heads)
    features = torch.randn(2, 8, *size)
    with torch.no_grad():
        assert torch.allclose(block(features), _full_attention(block, features), atol=1e-5)


@pytest.mark.parametrize(("size", "window", "top_m"), [((22, 22), 4, 9), ((7, 9), 3, 2)])
def test_consensus_attends_only_within_the_routed_windows(
    size: tuple[int, int], window: int, top_m: int
) -> None:
    block = _block(8, window=window, top_m=top_m)
    features = torch.randn(1, 8, *size)
    with torch.no_grad():
        routed = block(features)
        assert torch.allclose(routed, _loop_reference(block, features), atol=1e-5)
        assert not torch.allclose(routed, _full_attention(block, features), atol=1e-3)


def test_consensus_starts_close_to_the_identity() -> None:
    torch.manual_seed(0)
    block = LocalConsensus(16, window=4, top_m=9)
    features = torch.randn(2, 16, 22, 22)
    with torch.no_grad():
        assert (block(features) - features).abs().max() < 1e-2


# ----------------------------------------------------------------------------- on tiny CLIPSeg
VARIANTS = {
    "plain": {"n_ctx_text": 6, "n_ctx_vision": 10},
    "adapter": {"n_ctx_text": 6, "n_ctx_vision": 10, "text_adapter": True},
    "consensus": {"n_ctx_vision": 10, "consensus": True, "consensus_window": 2},
    "both": {"n_ctx_text": 3, "n_ctx_vision": 10, **ALL_PARTS},
}


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory: pytest.TempPathFactory) -> LoadedCLIPSeg:
    return load_clipseg(write_tiny_clipseg(tmp_path_factory.mktemp("vlpt") / "tiny-clipseg"))


def build(
    loaded: LoadedCLIPSeg,
    learner: str = "vlpt",
    depth: int | None = 2,
    seed: int = 0,
    variant: str = "both",
    **kwargs,
) -> PromptedCLIPSeg:
    small = {"vlpt": VARIANTS[variant]}
    return build_model(PromptedCLIPSeg, loaded, learner, depth, seed, small=small, **kwargs)


def test_tokenize_inserts_n_ctx_text_placeholders(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, variant="plain", n_ctx=4)
    plain = model.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert model.tokenize(TEXTS)["input_ids"].shape[1] == plain.shape[1] + 6
    assert model.learner.n_ctx_vision == 10


def test_layerwise_init_equals_the_frozen_encoders_hidden_states(
    tiny_clipseg: LoadedCLIPSeg,
) -> None:
    """Layer d starts from HF's own hidden states of "a photo of a" at the input of layer d."""
    model = build(tiny_clipseg, depth=4, variant="plain")
    tokenizer, text_model = model.tokenizer, model.clipseg.clip.text_model
    ids = tokenizer("a photo of a", return_tensors="pt")["input_ids"]
    words = ids.shape[1] - 2
    assert words == 4
    with torch.no_grad():
        hidden = text_model(input_ids=ids, output_hidden_states=True).hidden_states
        embeddings = text_model.embeddings.token_embedding(ids)[0, 1:-1]
    context = model.learner.text_ctx
    assert len(context) == 4 and context[0].shape == (6, 64)
    assert torch.equal(context[0][:words], embeddings)  # positions are added by the model
    for depth in (1, 2, 3):
        assert torch.allclose(context[depth][:words], hidden[depth][0, 1:-1], atol=1e-5)
    assert not torch.equal(context[1][:words], context[2][:words])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_and_gradients_reach_only_the_learner(
    tiny_clipseg: LoadedCLIPSeg, variant: str
) -> None:
    model = build(tiny_clipseg, depth=11, variant=variant).train()
    logits = model(**make_batch(model))
    assert logits.shape == (len(TEXTS), 1, model.image_size, model.image_size)
    logits.pow(2).mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"learner", "upsampler"}
    assert [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0] == []
    assert all(p.grad is None for p in model.clipseg.parameters())
    has = {n.split(".")[1] for n in trainable if n.startswith("learner.")}
    expected = {"text_ctx", "vision_ctx"}
    expected |= {"text_adapter"} if VARIANTS[variant].get("text_adapter") else set()
    expected |= {"consensus"} if VARIANTS[variant].get("consensus") else set()
    assert has == expected


def test_frozen_weights_stay_bit_identical(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg).train()
    assert_frozen_step(model, model.clipseg)


def test_prompts_are_not_decayed_but_the_adapter_is(tiny_clipseg: LoadedCLIPSeg) -> None:
    names = no_decay_names(build(tiny_clipseg))
    assert {"learner.text_ctx.0", "learner.vision_ctx.1", "learner.consensus.gamma"} <= names
    assert "learner.text_adapter.proj.weight" not in names
    assert "learner.consensus.qkv.weight" not in names


def test_trainable_state_round_trip(tiny_clipseg: LoadedCLIPSeg) -> None:
    assert_trainable_state_round_trip(partial(build, tiny_clipseg), "vlpt")


def test_one_training_step_lowers_the_loss(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg).train()
    batch = make_batch(model)
    size = model.image_size
    target = torch.zeros(len(TEXTS), 1, size, size)
    target[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay=1e-4), lr=1e-3)
    before = dice_bce_loss(model(**batch), target)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = dice_bce_loss(model(**batch), target)
    assert after < before, (before.item(), after.item())


def test_the_adapter_reads_the_pooled_prompted_image_feature(tiny_clipseg: LoadedCLIPSeg) -> None:
    """With the adapter every vision layer runs (the pooled feature) and FiLM reads T_new."""
    model = build(tiny_clipseg, variant="adapter")
    pooled: list[torch.Tensor] = []
    films: list[torch.Tensor] = []
    projection = model.clipseg.clip.visual_projection
    hooks = [
        projection.register_forward_hook(lambda m, a, out: pooled.append(out)),
        model.clipseg.decoder.film_mul.register_forward_hook(lambda m, a, out: films.append(a[0])),
    ]
    with torch.no_grad():
        model.learner.text_adapter.proj.weight.normal_(std=0.1)
        batch = make_batch(model)
        model(**batch)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"], model.learner().text)
    for hook in hooks:
        hook.remove()
    assert len(pooled) == 1 and len(films) == 1
    assert torch.allclose(films[0], model.learner.adapt_condition(text, pooled[0]))
    assert not torch.allclose(films[0], text)
    plain = build(tiny_clipseg, variant="plain")
    assert not plain.adapts_condition
    assert not plain.clipseg.clip.visual_projection.weight.requires_grad


def test_consensus_refines_the_map_both_heads_read(tiny_clipseg: LoadedCLIPSeg) -> None:
    model = build(tiny_clipseg, variant="consensus")
    refined: list[torch.Tensor] = []
    read: list[torch.Tensor] = []
    decoder = model.clipseg.decoder
    hooks = [
        model.learner.consensus.register_forward_hook(lambda m, a, out: refined.append(out)),
        decoder.transposed_convolution.register_forward_hook(lambda m, a, out: read.append(a[0])),
        model.upsampler.register_forward_hook(lambda m, a, out: read.append(a[0])),
    ]
    with torch.no_grad():
        model(**make_batch(model))
    for hook in hooks:
        hook.remove()
    assert len(refined) == 1 and len(read) == 2
    assert all(features is refined[0] for features in read)


# ----------------------------------------------------------------------------- experiment file
EXPERIMENT = """\
name: v
output_dir: out
models:
  - {name: clipseg, pretrained: ./tiny, synthetic: true, image_size: 64}
  - {name: cris, pretrained: ./cris, synthetic: true, image_size: 64}
learners:
  - coop
  - name: vlpt
    options: {n_ctx_text: 6, text_adapter: true}
datasets:
  - {name: polyps, root: data, synthetic: true}
search:
  n_trials: 1
  space: {prompt_depth: {low: 1, high: 3}}
"""


def test_options_and_the_space_reach_the_learner(tmp_path: Path) -> None:
    from tunevlseg.assets import prepare_synthetic
    from tunevlseg.tuning.describe import choose_params
    from tunevlseg.tuning.objective import build_model as build_trial_model

    expansion = expand(parse_experiment(EXPERIMENT, tmp_path / "v.yaml"))
    assert [(s.model.key, s.learner) for s in expansion.studies] == [
        ("clipseg", "coop"),
        ("clipseg", "vlpt"),
        ("cris", "coop"),
    ]
    assert [(c.model, c.learner) for c in expansion.skipped] == [("cris", "vlpt")]
    assert LEARNERS["vlpt"].modality == "multimodal" and not is_viable("cris", "vlpt")
    spec = expansion.studies[1]
    assert spec.learner_options == {"n_ctx_text": 6, "text_adapter": True}
    assert set(spec.param_space) == {"lr", "weight_decay", "prompt_depth", "n_ctx_vision"}
    assert PAPER_SPACES["vlpt"]["n_ctx_vision"].to_dict() == {
        "kind": "int",
        "low": 4,
        "high": 100,
        "log": True,
    }
    prepare_synthetic([spec])
    params = choose_params(spec.param_space, {"n_ctx_vision": "40"}, "vlpt").values
    model = build_trial_model(spec, params)
    learner = model.learner
    assert (learner.n_ctx_text, learner.n_ctx_vision, learner.text_depth) == (6, 40, 2)
    assert learner.text_adapter is not None and learner.consensus is None


BAD_OPTIONS = [
    ("text-count-zero", "{n_ctx_text: 0}", "n_ctx_text must be an int in 1..64"),
    ("adapter-not-a-bool", "{text_adapter: maybe}", "text_adapter must be true or false"),
    ("window-without-consensus", "{consensus_window: 2}", "need(s) consensus: true"),
    (
        "top-m-negative",
        "{consensus: true, consensus_top_m: -1}",
        "consensus_top_m must be a positive int",
    ),
    ("searched-not-an-option", "{n_ctx_vision: 40}", "unknown option(s) ['n_ctx_vision']"),
]


@pytest.mark.parametrize(
    ("options", "fragment"), [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS]
)
def test_bad_options_name_file_and_line(tmp_path: Path, options: str, fragment: str) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(EXPERIMENT.replace("{n_ctx_text: 6, text_adapter: true}", options))
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert f"{path}:9: learners[1].options:" in message and fragment in message, message


def test_vlpt_options_on_another_learner_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(
        EXPERIMENT.replace("  - coop\n", "  - {name: coop, options: {consensus: true}}\n")
    )
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert f"{path}:7: learners[0].options: " in str(caught.value)
    assert "option(s) consensus belong to vlpt, not coop" in str(caught.value)


def test_describe_lists_vlpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunevlseg.cli.train import main

    path = tmp_path / "v.yaml"
    path.write_text(EXPERIMENT)
    assert main([str(path), "--describe", "--json"]) == 0
    rows = {(r["model"], r["learner"]): r for r in json.loads(capsys.readouterr().out)}
    vlpt = rows[("clipseg", "vlpt")]
    assert vlpt["settings"]["text_adapter"] is True and vlpt["params"]["n_ctx_vision"] == 20
    assert vlpt["trainable"] > rows[("clipseg", "coop")]["trainable"]
    assert ("cris", "vlpt") not in rows
    assert main([str(path), "--describe"]) == 0
    assert "vlpt" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a whole sweep
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_vlpt_sweep_launches_resumes_and_collects(tmp_path: Path) -> None:
    """Two labelled vlpt rows (plain; adapter + consensus) through launch --local, a relaunch
    that trains nothing again, the collector's tables, and checkpoints of trainable tensors."""
    from tunevlseg.paths import SweepPaths

    text = textwrap.dedent("""\
        name: vs
        output_dir: runs
        models:
          - {name: clipseg, pretrained: ./tiny, synthetic: true, image_size: 64}
        learners:
          - {name: vlpt, label: vlpt-plain}
          - name: vlpt
            label: vlpt-ldvc
            options: {n_ctx_text: 6, text_adapter: true, consensus: true, consensus_window: 2}
        datasets:
          - {name: polyps, root: data, synthetic: true}
        data: {num_workers: 0}
        training:
          {max_epochs: 2, patience: 2, batch_size: 8, effective_batch_size: 8, precision: "32"}
        search:
          n_trials: 1
          space: {prompt_depth: {low: 1, high: 3}, n_ctx_vision: {low: 4, high: 16}}
        cluster: {parallelism: 2}
    """)
    experiment = tmp_path / "vs.yaml"
    experiment.write_text(text)
    launched = _cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    checkpoints = sorted((tmp_path / "runs").rglob("last.ckpt"))
    assert len(checkpoints) == 2
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert state and all(k.startswith(("model.learner.", "model.upsampler.")) for k in state)
    ldvc = [p for p in checkpoints if "vlpt-ldvc" in str(p)]
    state = torch.load(ldvc[0], map_location="cpu", weights_only=False)["state_dict"]
    assert any(".consensus." in k for k in state) and any(".text_adapter." in k for k in state)

    again = _cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted((tmp_path / "runs").rglob("last.ckpt")) == checkpoints
    collected = _cli("tunevlseg.cli.collect", str(experiment), cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr[-3000:]
    main_table = (SweepPaths.of(load_experiment(experiment)).results / "main_table.md").read_text()
    assert "VLPT (vlpt-plain)" in main_table and "VLPT (vlpt-ldvc)" in main_table, main_table
