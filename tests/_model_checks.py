"""Checks shared by the tests of the prompted models (CLIPSeg and CRIS).

Both models offer the same API (``tokenize``, ``param_groups``, ``trainable_state_dict``,
``load_trainable_state_dict``, ``count_parameters``, a frozen backbone in eval mode), so the
tests of that API are written once here and called with each model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tunevlseg.catalog import LEARNERS, load_object

TEXTS = ["a photo of a polyp", "the thing on the left"]


def build_model(
    model_cls: type[nn.Module],
    loaded: Any,
    learner: str,
    depth: int | None = 1,
    seed: int = 0,
    *,
    small: dict[str, dict[str, Any]],
    **kwargs: Any,
) -> Any:
    """A prompted model on a deep copy of ``loaded``, with small learner sizes and a fixed seed."""
    params = (
        {} if learner in ("e2e", "zeroshot") else {"prompt_depth": depth, **small.get(learner, {})}
    )
    torch.manual_seed(seed)
    learner_cls = load_object(LEARNERS[learner].implementation)
    return model_cls(copy.deepcopy(loaded), learner_cls, params, **kwargs)


def make_batch(model: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random pixels at the model's size and the tokenized :data:`TEXTS`."""
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    pixels = torch.randn(len(TEXTS), 3, size, size, generator=generator)
    return {"pixel_values": pixels, **model.tokenize(TEXTS)}


def assert_placeholders_inserted(prompted: Any, plain: Any, n_ctx: int) -> None:
    """``prompted`` is ``plain`` with ``n_ctx`` copies of one placeholder id after BOS."""
    assert prompted["input_ids"].shape[1] == plain["input_ids"].shape[1] + n_ctx
    assert torch.equal(prompted["input_ids"][:, 0], plain["input_ids"][:, 0])
    assert len(set(prompted["input_ids"][:, 1 : 1 + n_ctx].flatten().tolist())) == 1
    assert torch.equal(prompted["input_ids"][:, 1 + n_ctx :], plain["input_ids"][:, 1:])


def tokens_with_last_word_changed(
    model: Any, text: str = "a photo of a polyp"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """``(tokens, changed, last_word)``: ``text`` tokenized, and a copy whose last word differs."""
    tokens = model.tokenize([text])
    changed = {k: v.clone() for k, v in tokens.items()}
    last_word = int(tokens["attention_mask"].sum()) - 2
    changed["input_ids"][0, last_word] = 100
    return tokens, changed, last_word


def assert_causal(first: torch.Tensor, second: torch.Tensor, last_word: int) -> None:
    """Text states before ``last_word`` ignore the change there; those from it on do not."""
    assert torch.equal(first[0, :last_word], second[0, :last_word])
    assert not torch.equal(first[0, last_word:], second[0, last_word:])


def assert_frozen_step(model: Any, backbone: nn.Module) -> None:
    """In train mode, one AdamW step changes every trainable tensor and nothing of ``backbone``.

    ``backbone`` stays in eval mode without trainable parameters, and its whole state dict
    (BatchNorm statistics too) is unchanged by the step.
    """
    assert not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    before = model.trainable_state_dict()
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay=0.05), lr=1e-2)
    model(**make_batch(model)).pow(2).mean().backward()
    optimizer.step()
    after = backbone.state_dict()
    assert [k for k in frozen if not torch.equal(frozen[k], after[k])] == []
    unchanged = [k for k, v in model.trainable_state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []


def no_decay_names(model: Any, weight_decay: float = 0.1) -> set[str]:
    """Names of the parameters ``param_groups`` exempts from decay (all trainable ones grouped)."""
    groups = model.param_groups(weight_decay=weight_decay)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_state_dict())
    return {n for n, p in model.named_parameters() if id(p) in no_decay}


def assert_trainable_state_round_trip(build: Callable[..., Any], learner: str) -> None:
    """After a step, a freshly seeded model loading the trainable state predicts the same."""
    model = build(learner, 2, seed=0).train()
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=1e-2)
    inputs = make_batch(model)
    model(**inputs).pow(2).mean().backward()
    optimizer.step()
    state = model.trainable_state_dict()
    fresh = build(learner, 2, seed=123)
    fresh.load_trainable_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs), fresh.eval()(**inputs))


def assert_load_trainable_state_is_strict(model: Any) -> None:
    """Missing, unexpected and wrongly shaped tensors are refused (``model`` has an upsampler)."""
    state = model.trainable_state_dict()
    with pytest.raises(KeyError, match="missing"):
        model.load_trainable_state_dict({k: v for k, v in state.items() if "upsampler" not in k})
    with pytest.raises(KeyError, match="unexpected"):
        model.load_trainable_state_dict({**state, "learner.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        model.load_trainable_state_dict({**state, "upsampler.ratio": torch.zeros(2)})


def assert_zeroshot_and_coop_counts(zeroshot: Any, coop: Any) -> int:
    """Zero-shot trains nothing; CoOp's trainable count is what it saves, on top of the total.

    Returns:
        The zero-shot total (the backbone's parameter count).
    """
    trainable, total = zeroshot.count_parameters()
    assert trainable == 0 and total > 0 and zeroshot.trainable_state_dict() == {}
    n_trainable, n_total = coop.count_parameters()
    assert n_trainable == sum(v.numel() for v in coop.trainable_state_dict().values())
    assert n_total == total + n_trainable
    return total
