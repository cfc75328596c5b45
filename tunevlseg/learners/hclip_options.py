"""The ``hclip`` learner's options and their rules, without torch.

The experiment file's schema (:mod:`tunevlseg.config.schema`) checks a learner entry's
``options`` when the file is read, which must not import torch; the learner
(:class:`tunevlseg.learners.hclip.HCLIP`) checks the same parameters when it is built. Both use
:func:`hclip_problems`, so each rule is written once. Whether ``q`` divides the encoder widths
depends on the checkpoint and is checked when the model is built (the message names the weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "HCLIP_DEFAULTS",
    "HCLIP_OPTIONS",
    "ORTHOGONAL_CHOICES",
    "TARGET_CHOICES",
    "hclip_problems",
]

ORTHOGONAL_CHOICES = ("text", "both", "none")
TARGET_CHOICES = ("all", "qkv")

HCLIP_DEFAULTS: dict[str, Any] = {"q": 128, "orthogonal": "text", "dcrc": True, "targets": "all"}
"""H-CLIP as published: q = 128, orthogonal text blocks, free vision blocks, DCRC on."""

HCLIP_OPTIONS: dict[str, str] = {
    "q": "hclip: block size of the block-diagonal matrices (default 128, H-CLIP's); must divide "
    "every adapted weight's input size (tiny models: 32)",
    "orthogonal": "hclip: encoders whose blocks are Cayley rotations: text (H-CLIP's POF) | both "
    "| none",
    "dcrc": "hclip: dual cross-relation communication between all blocks (true | false)",
    "targets": "hclip: adapted weights: all (attention q/k/v/out and MLP) | qkv",
}
"""The learner-entry ``options`` only ``hclip`` takes, with their descriptions. None is
searched: each value changes the parameter count (q by ~4x per doubling), so each variant is its
own row (a ``label``), as in the paper's ablations."""


def hclip_problems(params: Mapping[str, Any]) -> list[str]:
    """What is wrong with the hclip values in ``params`` (absent keys are fine).

    Returns:
        One message per bad value, naming the option; empty when all are valid.
    """
    problems = []
    q = params.get("q", 2)
    if isinstance(q, bool) or not isinstance(q, int) or q < 2:
        problems.append(f"q must be an int >= 2, got {q!r}")
    orthogonal = params.get("orthogonal", "text")
    if orthogonal not in ORTHOGONAL_CHOICES:
        problems.append(
            f"orthogonal must be one of {', '.join(ORTHOGONAL_CHOICES)}, got {orthogonal!r}"
        )
    if "dcrc" in params and not isinstance(params["dcrc"], bool):
        problems.append(f"dcrc must be true or false, got {params['dcrc']!r}")
    targets = params.get("targets", "all")
    if targets not in TARGET_CHOICES:
        problems.append(f"targets must be one of {', '.join(TARGET_CHOICES)}, got {targets!r}")
    return problems
