"""The ``vlpt`` learner's parameters and their rules, without torch.

The experiment file's schema (:mod:`tunevlseg.config.schema`) checks a learner entry's
``options`` when the file is read, which must not import torch; the learner
(:class:`tunevlseg.learners.vlpt.VLPT`) checks the same parameters when it is built, also from a
sampled search-space point. Both use :func:`vlpt_problems`, so each rule is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_TEXT_CTX", "VLPT_DEFAULTS", "VLPT_OPTIONS", "vlpt_problems"]

MAX_TEXT_CTX = 64
"""The most text context tokens: ``model.n_ctx``'s limit, leaving CLIP's 77 text positions room
for the words of the prompt."""

VLPT_DEFAULTS: dict[str, Any] = {
    "prompt_depth": 1,
    "init": "layerwise",
    "n_ctx_text": None,
    "n_ctx_vision": None,
    "text_adapter": False,
    "consensus": False,
    "consensus_window": 4,
    "consensus_top_m": 9,
}
"""Defaults of every parameter; ``None`` token counts mean the sweep's ``model.n_ctx``."""

VLPT_OPTIONS: dict[str, str] = {
    "n_ctx_text": f"vlpt: text context tokens per layer, 1..{MAX_TEXT_CTX} (default model.n_ctx; "
    "LDVC used 6)",
    "text_adapter": "vlpt: LDVC's text adapter T_new = Proj([T * V_g; T]) on the class "
    "embedding (true | false)",
    "consensus": "vlpt: the local-consensus attention block on the decoder's last feature map "
    "(true | false)",
    "consensus_window": "vlpt: consensus window side in patch tokens (default 4)",
    "consensus_top_m": "vlpt: windows each window attends to (default 9 = a quarter of the 36 "
    "windows at 352 px)",
}
"""The learner-entry ``options`` only ``vlpt`` takes, with their descriptions. ``n_ctx_vision``
is not among them: it is a searched parameter (fixed with ``space: {n_ctx_vision: 40}``)."""


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def vlpt_problems(params: Mapping[str, Any]) -> list[str]:
    """What is wrong with the vlpt-specific values in ``params`` (absent keys are fine).

    Returns:
        One message per bad value, naming the parameter; empty when all are valid.
    """
    problems = []
    text = params.get("n_ctx_text")
    if text is not None and not (_positive_int(text) and text <= MAX_TEXT_CTX):
        problems.append(f"n_ctx_text must be an int in 1..{MAX_TEXT_CTX}, got {text!r}")
    vision = params.get("n_ctx_vision")
    if vision is not None and not _positive_int(vision):
        problems.append(f"n_ctx_vision must be a positive int, got {vision!r}")
    problems += [
        f"{key} must be true or false, got {params[key]!r}"
        for key in ("text_adapter", "consensus")
        if key in params and not isinstance(params[key], bool)
    ]
    problems += [
        f"{key} must be a positive int, got {params[key]!r}"
        for key in ("consensus_window", "consensus_top_m")
        if key in params and not _positive_int(params[key])
    ]
    tuned = sorted(k for k in ("consensus_window", "consensus_top_m") if k in params)
    if tuned and params.get("consensus") is not True:
        problems.append(f"{', '.join(tuned)} need(s) consensus: true (no effect without it)")
    return problems
