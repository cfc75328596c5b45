"""The training API every prompted model offers, written once.

:class:`tunevlseg.models.clipseg.PromptedCLIPSeg` and
:class:`tunevlseg.models.cris.prompted.PromptedCRIS` both inherit
:class:`TrainableParametersMixin`, so training, tuning and the CLI treat them alike.

Contract for a subclass:

* it owns a ``learner`` submodule (:class:`tunevlseg.learners.base.Learner`); the learner class's
  ``trains_backbone`` says whether the pretrained network trains (``e2e``) and its
  ``prompt_attributes`` name the prompt vectors (exempt from weight decay);
* it sets the class attribute ``backbone_attribute`` to the name of the pretrained network's
  submodule (``"clipseg"``, ``"cris"``), which :meth:`TrainableParametersMixin.train` keeps in
  eval mode while it is frozen;
* it freezes (``requires_grad_(False)``) whatever should not train; every other parameter is
  trainable, saved by ``trainable_state_dict`` and counted as trainable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

__all__ = ["TrainableParametersMixin"]


class TrainableParametersMixin(nn.Module):
    """``train``, ``param_groups``, ``trainable_state_dict``, ``load_trainable_state_dict``,
    ``count_parameters`` (see the module docstring for what a subclass provides)."""

    learner: nn.Module
    backbone_attribute: ClassVar[str]

    @property
    def trains_backbone(self) -> bool:
        return bool(getattr(type(self.learner), "trains_backbone", False))

    def train(self, mode: bool = True) -> Self:
        """Set train mode, but keep a frozen backbone in eval mode.

        A frozen network then behaves exactly as at inference (fixed BatchNorm statistics, no
        dropout) while the learner and the upsampler train.
        """
        super().train(mode)
        if not self.trains_backbone:
            getattr(self, self.backbone_attribute).eval()
        return self

    @property
    def adapts_encoder_weights(self) -> bool:
        """The learner multiplies frozen encoder weights by its own tensors (``hclip``)."""
        return bool(getattr(type(self.learner), "adapts_encoder_weights", False))

    def _grad_context(self, needed: bool) -> Any:
        """No autograd graph through a frozen part that receives no prompts (and whose weights
        no learner adapts)."""
        if needed or self.trains_backbone or self.adapts_encoder_weights:
            return nullcontext()
        return torch.no_grad()

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, p) for name, p in self.named_parameters() if p.requires_grad)

    def _trained_buffers(self) -> dict[str, Tensor]:
        """Persistent buffers that training changes: BatchNorm statistics, for ``e2e`` only.

        A frozen backbone stays in eval mode, so its statistics never move; an end-to-end run
        updates them, and predictions depend on them as much as on the weights. (CLIPSeg has
        no persistent buffers, so for it this is always empty.)
        """
        if not self.trains_backbone:
            return {}
        parameters = {name for name, _ in self.named_parameters()}
        return {
            name: value
            for name, value in self.state_dict(keep_vars=True).items()
            if name not in parameters
        }

    def _is_prompt(self, name: str) -> bool:
        parts = name.split(".")
        attributes = getattr(type(self.learner), "prompt_attributes", ())
        return len(parts) > 1 and parts[0] == "learner" and parts[1] in attributes

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: weight decay only on weight matrices and kernels.

        Prompt vectors, biases and normalisation weights (every tensor with fewer than two
        dimensions) are exempt: decaying them pulls prompts towards zero and norms off scale.
        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, parameter in self._trainable():
            (no_decay if parameter.ndim < 2 or self._is_prompt(name) else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return [group for group in groups if group["params"]]

    def _trained_tensors(self) -> dict[str, Tensor]:
        return {**dict(self._trainable()), **self._trained_buffers()}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Detached copies of what training changes, keyed like ``state_dict``.

        That is every trainable parameter and, for ``e2e``, the BatchNorm statistics (see
        :meth:`_trained_buffers`); for prompt learners it is parameters only.
        """
        return {name: t.detach().clone() for name, t in self._trained_tensors().items()}

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; keys must match exactly.

        Raises:
            KeyError: listing missing and unexpected keys.
            ValueError: on a shape mismatch.
        """
        parameters = self._trained_tensors()
        missing = sorted(set(parameters) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(parameters))
        if missing or unexpected:
            raise KeyError(f"trainable state mismatch: missing={missing}, unexpected={unexpected}")
        with torch.no_grad():
            for name, parameter in parameters.items():
                value = state_dict[name]
                if value.shape != parameter.shape:
                    raise ValueError(
                        f"{name}: shape {tuple(value.shape)} != {tuple(parameter.shape)}"
                    )
                parameter.copy_(value)

    def count_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        trainable = sum(p.numel() for _, p in self._trainable())
        total = sum(p.numel() for p in self.parameters())
        return trainable, total
