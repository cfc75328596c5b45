"""The training API every prompted model offers, written once for CRIS.

:class:`tunevlseg.models.clipseg.PromptedCLIPSeg` has the same methods with the same meaning;
this mixin states them against two hooks (``learner`` and ``_is_prompt``) so that a second
model does not repeat them. (Moving it up to ``tunevlseg.models`` and letting CLIPSeg use it too
is a natural follow-up.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TrainableParametersMixin"]


class TrainableParametersMixin(nn.Module):
    """``param_groups``, ``trainable_state_dict``, ``load_trainable_state_dict``, counts.

    Subclasses own a ``learner`` (:class:`tunevlseg.learners.base.Learner`) submodule; its
    ``prompt_attributes`` name the prompt vectors.
    """

    learner: nn.Module

    @property
    def trains_backbone(self) -> bool:
        return bool(getattr(type(self.learner), "trains_backbone", False))

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, p) for name, p in self.named_parameters() if p.requires_grad)

    def _trained_buffers(self) -> dict[str, Tensor]:
        """Persistent buffers that training changes: BatchNorm statistics, for ``e2e`` only.

        A frozen backbone stays in eval mode, so its statistics never move; an end-to-end run
        updates them, and predictions depend on them as much as on the weights.
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
