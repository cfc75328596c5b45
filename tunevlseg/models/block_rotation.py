"""Frozen encoder weights multiplied by learnable block-diagonal matrices (H-CLIP's POF).

H-CLIP (Peng et al., "Parameter-efficient Fine-tuning in Hyperspherical Space for
Open-vocabulary Semantic Segmentation", 2024/CVPR 2025) replaces a pre-trained weight ``W0`` by
``R W0`` with ``R = diag(R_1, ..., R_b)`` made of ``q x q`` blocks. Following OFT, whose
notation the paper uses, ``W0`` holds one neuron per column, so ``R`` rotates every neuron's
*input* vector: in torch's ``(out, in)`` layout that is ``W = W0 R^T``. Rotating all neurons
by the same orthogonal ``R`` keeps their pairwise angles, hence the hyperspherical energy the
paper wants to preserve in the text encoder; rotating the output side would mix neurons and
keep nothing. An orthogonal block comes from the Cayley transform ``(I - S)^{-1} (I + S)`` of
a skew-symmetric ``S`` (both factors are functions of ``S`` and commute, so this is the
paper's ``(I + S)(I - S)^{-1}``); it is the identity when ``S = 0``.

Why our own few lines and not a library:

* ``torch.nn.utils.parametrizations.orthogonal`` turns a *trainable* weight into an orthogonal
  matrix of the weight's own shape. Here the weight stays frozen and not orthogonal; what is
  orthogonal is a separate block-diagonal factor, and DCRC must see (and mix) the blocks' raw
  generators across layers and encoders before they become rotations. Neither fits its API.
* PEFT's OFT does block-diagonal Cayley rotations, but it wraps whole modules of a model it
  owns (replacing ``nn.Linear`` by its own layer classes, which changes the checkpoint names
  our strict loaders rely on), would be a dependency for ~20 lines of linear algebra, and has
  no place for DCRC's cross-layer mixing of all blocks at once.

So the rotation is applied with ``torch.nn.utils.parametrize`` on the frozen weight (the
weight's module and checkpoint loading stay as they are; ``weight`` becomes ``R``-times-frozen
on every access), and the blocks live in the learner (``tunevlseg.learners.hclip``), which
the parametrization reads from. The batched solve over all blocks is one
``torch.linalg.solve`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "AdaptedWeight",
    "EncoderWeights",
    "RotatedInputs",
    "cayley",
    "remove_rotations",
    "rotate_inputs",
    "skew_from_upper",
]


@dataclass(frozen=True)
class AdaptedWeight:
    """One frozen weight a weight-adapting learner may multiply by a block-diagonal matrix.

    Attributes:
        module: the module owning the parameter.
        name: the parameter's name on ``module`` (``"weight"``, ``"in_proj_weight"``).
        role: ``q``, ``k``, ``v``, ``qkv`` (stacked rows, ``nn.MultiheadAttention``), ``out``,
            ``fc1`` or ``fc2``; learners choose targets by role.
        groups: row groups with their own rotation (3 for a stacked q/k/v weight, else 1).
    """

    module: nn.Module
    name: str
    role: str
    groups: int = 1

    @property
    def weight(self) -> Tensor:
        return getattr(self.module, self.name)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])


@dataclass
class EncoderWeights:
    """Per encoder, per layer that runs, the weights a learner may adapt (empty: none)."""

    text: list[list[AdaptedWeight]] = field(default_factory=list)
    vision: list[list[AdaptedWeight]] = field(default_factory=list)


def skew_from_upper(upper: Tensor, q: int) -> Tensor:
    """``(..., q(q-1)/2)`` strictly-upper entries -> ``(..., q, q)`` skew-symmetric matrices."""
    rows, cols = torch.triu_indices(q, q, offset=1, device=upper.device)
    skew = upper.new_zeros(*upper.shape[:-1], q, q)
    skew[..., rows, cols] = upper
    return skew - skew.transpose(-1, -2)


def cayley(skew: Tensor) -> Tensor:
    """Orthogonal ``(I - S)^{-1}(I + S)`` for each ``(..., q, q)`` skew-symmetric ``S``.

    ``I - S`` is always invertible for a real skew-symmetric ``S`` (its eigenvalues are
    ``1 - i·λ``), so the solve never fails; ``S = 0`` gives exactly ``I``.
    """
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
    return torch.linalg.solve(eye - skew, eye + skew)


def rotate_inputs(weight: Tensor, blocks: Tensor, groups: int = 1) -> Tensor:
    """``weight`` ``(out, in)`` with each row's ``q``-slices multiplied by their block.

    ``blocks`` is ``(groups * in / q, q, q)``: group ``g`` (rows ``g*out/groups`` onwards)
    uses blocks ``g*in/q .. (g+1)*in/q - 1``, block ``b`` acting on input features
    ``b*q .. (b+1)*q - 1``. Equivalent to ``weight_g @ blockdiag(blocks_g)^T`` per group.
    """
    out_features, in_features = weight.shape
    q = blocks.shape[-1]
    rows = weight.reshape(groups, out_features // groups, in_features // q, q)
    blocks = blocks.reshape(groups, in_features // q, q, q).to(weight.dtype)
    rotated = torch.einsum("gobj,gbij->gobi", rows, blocks)
    return rotated.reshape(out_features, in_features)


class _Source:
    """A plain holder of the blocks' provider, so that the parametrization does not register
    the learner as a submodule of the backbone (its parameters would then appear twice),
    while ``copy.deepcopy`` of a model still points the copy at the copied learner."""

    def __init__(self, provider: Callable[[], Tensor]) -> None:
        self.provider = provider


class RotatedInputs(nn.Module):
    """Parametrization ``W0 -> rotate_inputs(W0, provider(), groups)`` of one frozen weight."""

    def __init__(self, provider: Callable[[], Tensor], groups: int) -> None:
        super().__init__()
        self._source = _Source(provider)
        self.groups = groups

    def forward(self, weight: Tensor) -> Tensor:
        return rotate_inputs(weight, self._source.provider(), self.groups)

    @classmethod
    def register(cls, target: AdaptedWeight, provider: Callable[[], Tensor]) -> None:
        """Put the rotation on ``target``'s weight, replacing a rotation put there before.

        A backbone shared by several prompted models (``tvls-train --describe`` counts every
        learner on one random real-size backbone) would otherwise stack one rotation per model.
        """
        remove_rotations(target)
        parametrize.register_parametrization(
            target.module, target.name, cls(provider, target.groups), unsafe=True
        )


def remove_rotations(target: AdaptedWeight) -> None:
    """Restore ``target``'s frozen weight if a :class:`RotatedInputs` is on it."""
    module, name = target.module, target.name
    if parametrize.is_parametrized(module, name) and any(
        isinstance(p, RotatedInputs)
        for p in module.parametrizations[name]  # type: ignore[index]
    ):
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
