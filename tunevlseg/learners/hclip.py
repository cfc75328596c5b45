"""H-CLIP: partial orthogonal fine-tuning of the encoder weights, with optional DCRC.

Peng et al., "Parameter-efficient Fine-tuning in Hyperspherical Space for Open-vocabulary
Semantic Segmentation" (arXiv 2405.18840, CVPR 2025). Each targeted frozen weight ``W0`` of the
encoders becomes ``W0 R^T`` with ``R`` block-diagonal (``q x q`` blocks acting on the input
features; see :mod:`tunevlseg.models.block_rotation` for why the input side and why no
library). The paper's partial orthogonality (POF) is the ``orthogonal`` option:

* ``text`` (the paper's method): text blocks are Cayley rotations of learned skew-symmetric
  matrices (``q(q-1)/2`` numbers each), vision blocks are unconstrained (``I + D``, ``q²``);
* ``both`` / ``none``: the paper's Table 4(b) ablations (every block orthogonal / none).

Every generator (``S`` or ``D``) starts at zero, so every ``R`` starts at the identity and the
untrained model is exactly the frozen one. Weight decay pulls generators back to zero, i.e.
towards the pre-trained weights.

DCRC (``dcrc: true``, the paper's Sec. 4.3): all generators form one tensor
``T`` of shape ``(L, M, q, q)`` (layer, block slot: every block of every targeted weight of
both encoders in that layer), mixed by two 2-layer MLPs, ``f3`` over the ``M`` slots (across
encoders) and ``f4`` over the ``L`` layers, and added back as ``T + α·f4(f3(T))`` with a
learned ``α`` of shape ``(M, L)``. Two departures, both forced by real encoders the paper
simplifies away (it assumes equal widths and layer counts): the encoders differ in width and
in layers that run (CLIPSeg runs 12 text and 10 vision layers), so the slot axis holds each
encoder's own number of blocks and missing layers are zero rows whose outputs are dropped;
and ``α`` starts at zero (the paper gives no initialisation) so that the untrained model is
the frozen one. The mixing acts on the generators, before the Cayley transform, and the text
slots are made skew-symmetric again afterwards, so DCRC never breaks orthogonality (the paper
claims DCRC preserves the hyperspherical energy; mixing rotations themselves would not).

``targets`` chooses the weights: ``all`` (q, k, v, out projections and both MLP linears of
every layer that runs; the issue's reading of "each pre-trained weight matrix") or ``qkv``
(the attention's q, k, v only, which is what the authors' follow-up code, HyperCLIP, adapts).
CRIS's image encoder is a ResNet: only its text encoder is adapted.

The prompted model calls :meth:`HCLIP.attach` with its :class:`EncoderWeights` right after
building the learner (the class flag :attr:`HCLIP.adapts_encoder_weights` asks for it), and
the model's forward calls the learner once per batch, which computes every block once; the
parametrized weights then read their slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tunevlseg.learners.base import EncoderDims, FrozenText, Learner, Prompts
from tunevlseg.learners.hclip_options import HCLIP_DEFAULTS, hclip_problems
from tunevlseg.models.block_rotation import (
    AdaptedWeight,
    EncoderWeights,
    RotatedInputs,
    cayley,
    skew_from_upper,
)

__all__ = ["HCLIP", "ORTHOGONAL", "TARGETS", "block_parameter_count"]

ORTHOGONAL = {"text": ("text",), "both": ("text", "vision"), "none": ()}
"""``orthogonal`` option -> the encoders whose blocks are Cayley rotations."""

TARGETS = {
    "all": frozenset({"q", "k", "v", "qkv", "out", "fc1", "fc2"}),
    "qkv": frozenset({"q", "k", "v", "qkv"}),
}
"""``targets`` option -> the weight roles that get a block-diagonal matrix."""

ENCODERS = ("text", "vision")


def block_parameter_count(q: int, orthogonal: bool) -> int:
    """Trainable numbers of one ``q x q`` block: a skew generator or a free matrix."""
    return q * (q - 1) // 2 if orthogonal else q * q


@dataclass(frozen=True)
class _Slot:
    """Where one adapted weight's blocks sit in its encoder's ``(L, m, q, q)`` tensor."""

    encoder: str
    layer: int
    offset: int
    count: int


class _DCRC(nn.Module):
    """Dual cross-relation communication over a ``(L, M, q, q)`` generator tensor."""

    def __init__(self, slots: int, layers: int) -> None:
        super().__init__()
        self.cross_modal = nn.Sequential(
            nn.Linear(slots, slots), nn.GELU(), nn.Linear(slots, slots)
        )
        self.cross_layer = nn.Sequential(
            nn.Linear(layers, layers), nn.GELU(), nn.Linear(layers, layers)
        )
        self.scale = nn.Parameter(torch.zeros(slots, layers))  # α; 0: identity at init

    def forward(self, generators: Tensor) -> Tensor:
        mixed = self.cross_modal(generators.permute(2, 3, 0, 1))  # (q, q, L, M): over slots
        mixed = self.cross_layer(mixed.transpose(-1, -2))  # (q, q, M, L): over layers
        return generators + (self.scale * mixed).permute(3, 2, 0, 1)


class HCLIP(Learner):
    """Block-diagonal (partly orthogonal) multipliers of the encoder weights; no prompts."""

    name: ClassVar[str] = "hclip"
    adapts_encoder_weights: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = dict(HCLIP_DEFAULTS)

    def __init__(
        self, dims: EncoderDims, *, n_ctx: int, frozen_text: FrozenText | None = None, **params: Any
    ) -> None:
        super().__init__(dims, n_ctx=n_ctx, **params)  # the weights come through attach()
        self.q = int(self.params["q"])
        self.orthogonal = ORTHOGONAL[self.params["orthogonal"]]
        self.blocks = nn.ParameterDict()
        self.dcrc: _DCRC | None = None
        self._layers: dict[str, int] = {}
        self._slots_per_layer: dict[str, int] = {}
        self._cache: tuple[tuple[tuple[int, int], ...], bool, dict[str, Tensor]] | None = None

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        resolved = super().resolve_params(params)
        problems = hclip_problems(resolved)
        if problems:
            raise ValueError(f"hclip: {'; '.join(problems)}")
        return resolved

    # ----------------------------------------------------------------------------- set-up
    def attach(self, weights: EncoderWeights) -> None:
        """Create one block per ``q`` input features of every targeted weight, and put the
        rotations on the weights.

        Raises:
            ValueError: ``q`` does not divide a targeted weight's input size, naming it.
        """
        roles = TARGETS[self.params["targets"]]
        slots: list[tuple[AdaptedWeight, _Slot]] = []
        for encoder in ENCODERS:
            layers = [[w for w in layer if w.role in roles] for layer in getattr(weights, encoder)]
            layers = [layer for layer in layers if layer]
            for index, layer in enumerate(layers):
                offset = 0
                for target in layer:
                    if target.in_features % self.q:
                        raise ValueError(
                            f"hclip: q={self.q} does not divide the input size "
                            f"{target.in_features} of the {encoder} encoder's {target.role} "
                            f"weight (layer {index}); choose a q that divides every targeted "
                            "weight's input size (the encoder width and its MLP width)"
                        )
                    count = target.groups * target.in_features // self.q
                    slots.append((target, _Slot(encoder, index, offset, count)))
                    offset += count
                if index and offset != self._slots_per_layer[encoder]:
                    raise ValueError(f"hclip: the {encoder} encoder's layers differ in shape")
                self._slots_per_layer[encoder] = offset
            if layers:
                self._layers[encoder] = len(layers)
                size = (
                    (self.q * (self.q - 1) // 2,)
                    if encoder in self.orthogonal
                    else (self.q, self.q)
                )
                shape = (len(layers), self._slots_per_layer[encoder], *size)
                self.blocks[encoder] = nn.Parameter(torch.zeros(shape))
        if self.params["dcrc"] and self._layers:
            self.dcrc = _DCRC(sum(self._slots_per_layer.values()), max(self._layers.values()))
        for target, slot in slots:
            RotatedInputs.register(target, self._provider(slot))

    def _provider(self, slot: _Slot) -> Any:
        def blocks() -> Tensor:
            rotations = self.rotations()[slot.encoder][slot.layer]
            return rotations[slot.offset : slot.offset + slot.count]

        return blocks

    # ----------------------------------------------------------------------------- blocks
    def generators(self) -> dict[str, Tensor]:
        """Per encoder, ``(L, m, q, q)``: skew ``S`` (orthogonal) or ``D`` (``R = I + D``),
        after DCRC when it is on."""
        raw = {
            encoder: skew_from_upper(blocks, self.q) if encoder in self.orthogonal else blocks
            for encoder, blocks in self.blocks.items()
        }
        if self.dcrc is None:
            return raw
        layers = max(self._layers.values())
        padded = [
            torch.cat([g, g.new_zeros(layers - g.shape[0], *g.shape[1:])]) for g in raw.values()
        ]
        mixed = self.dcrc(torch.cat(padded, dim=1))
        out, start = {}, 0
        for encoder, g in raw.items():
            part = mixed[: g.shape[0], start : start + g.shape[1]]
            start += g.shape[1]
            out[encoder] = (
                (part - part.transpose(-1, -2)) / 2 if encoder in self.orthogonal else part
            )
        return out

    def rotations(self) -> dict[str, Tensor]:
        """Per encoder, the ``(L, m, q, q)`` blocks ``R`` (computed once per parameter state).

        The parametrized weights ask for their slices on every access; the blocks are computed
        again only when a parameter changed in place (an optimiser step), the grad mode
        changed, or :meth:`forward` starts a new batch (a new autograd graph).
        """
        key = tuple((p._version, p.data_ptr()) for p in self.parameters())  # .to() moves data
        grad = torch.is_grad_enabled()
        if self._cache is not None and self._cache[:2] == (key, grad):
            return self._cache[2]
        eye = torch.eye(self.q)
        rotations = {
            encoder: cayley(g) if encoder in self.orthogonal else g + eye.to(g)
            for encoder, g in self.generators().items()
        }
        self._cache = (key, grad, rotations)
        return rotations

    def forward(self, image_feature: Tensor | None = None) -> Prompts:
        """No prompts; computes this batch's blocks (a fresh graph for this batch's backward)."""
        self._cache = None
        self.rotations()
        return Prompts()

    def extra_repr(self) -> str:
        p = self.params
        return f"q={self.q}, orthogonal={p['orthogonal']}, dcrc={p['dcrc']}, targets={p['targets']}"
