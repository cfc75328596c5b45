"""Stand-ins for tests and smoke runs: a tiny model and a tokenizer that need no downloads.

:class:`TinySegNet` follows the model interface ``SegmentationModule`` expects and, like a real
prompted model, has a frozen part and a trainable part, so checkpoint slimming is exercised.
It ignores the text.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TinySegNet", "byte_tokenize"]


class TinySegNet(nn.Module):
    """Frozen random 3x3 conv stem + trainable conv head (with a norm layer) -> 1 logit map."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem.requires_grad_(False)
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        logits: Tensor = self.head(torch.relu(self.stem(pixel_values)))
        return logits

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on conv kernels only; none on biases and norm parameters."""
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for _, p in trainable if p.ndim > 1]
        no_decay = [p for _, p in trainable if p.ndim <= 1]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def byte_tokenize(prompts: list[str], length: int = 16) -> dict[str, Tensor]:
    """UTF-8 bytes (+1, 0 = padding), cut or padded to ``length``."""
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        data = list(prompt.encode("utf-8"))[:length]
        ids[row, : len(data)] = torch.tensor(data, dtype=torch.long) + 1
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}
