"""Fixed options of the built-in learners and their rules, without torch.

A learner entry's ``options`` in the experiment file are checked when the file is read
(:mod:`tunevlseg.config.schema`), which must not import torch; the learners check the same
parameters again when they are built (:meth:`tunevlseg.learners.base.Learner.resolve_params`).
Both use :func:`option_problems`, so each rule is written once.

The options here make the TuneVLSeg authors' projection heads and VPT initialisation available
(docs/fidelity.md rows 27-29); every default is this package's earlier behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "INIT_CHOICES",
    "OPTIONS",
    "OPTION_LEARNERS",
    "TEXT_INITS",
    "VPT_INITS",
    "option_problems",
]

TEXT_INITS = ("embedding", "gaussian", "layerwise")
"""Text context initialisations (:func:`tunevlseg.learners.base.init_text_context`)."""
VPT_INITS = ("uniform", "gaussian")
"""VPT's: Xavier-uniform at the patch embedding's scale (VPT's own), or N(0, init_std²)."""
INIT_CHOICES: dict[str, tuple[str, ...]] = {"vpt": VPT_INITS}
"""``init`` values of learners whose ``init`` is not a text initialisation (:data:`TEXT_INITS`)."""

OPTIONS: dict[str, str] = {
    "proj_norm": "cocoop, maple: end each meta-network / coupling with a LayerNorm, as the "
    "authors' code does (true | false, default false)",
    "normalize_image_features": "cocoop: L2-normalise the image feature the meta-networks read "
    "(true, default, as CoCoOp | false, as the authors' code)",
    "init_std": "vpt: standard deviation of `init: gaussian` (default 0.02)",
}
"""The options below ``init`` that only some learners take, with their descriptions."""

OPTION_LEARNERS: dict[str, tuple[str, ...]] = {
    "proj_norm": ("cocoop", "maple"),
    "normalize_image_features": ("cocoop",),
    "init_std": ("vpt",),
}
"""Which learners take each of :data:`OPTIONS`."""

_SWITCHES = ("proj_norm", "normalize_image_features")


def option_problems(learner: str | None, given: Mapping[str, Any]) -> list[str]:
    """What is wrong with the values of :data:`OPTIONS` in ``given``.

    ``init`` is checked against :data:`INIT_CHOICES` (else :data:`TEXT_INITS`) by the callers,
    which already did so before these options existed.

    Args:
        learner: the learner's name, or ``None`` when it is unknown (then only the values are
            checked, not which learner takes them).
        given: the parameters as written (not filled with defaults: ``init_std`` without
            ``init: gaussian`` is a mistake only when written).

    Returns:
        One message per problem, naming the option; empty when all are valid.
    """
    problems = []
    for key in sorted(set(given) & set(OPTIONS)):
        if learner is not None and learner not in OPTION_LEARNERS[key]:
            owners = ", ".join(OPTION_LEARNERS[key])
            problems.append(f"option {key} belongs to {owners}, not {learner}")
    problems.extend(
        f"{key} must be true or false, got {given[key]!r}"
        for key in _SWITCHES
        if key in given and not isinstance(given[key], bool)
    )
    if "init_std" in given:
        std = given["init_std"]
        if isinstance(std, bool) or not isinstance(std, int | float) or not std > 0:
            problems.append(f"init_std must be a positive number, got {std!r}")
        if given.get("init") != "gaussian":
            problems.append("init_std applies to `init: gaussian` only: add that or drop it")
    return problems
