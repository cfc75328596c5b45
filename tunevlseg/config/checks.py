"""Rules that span several keys of an experiment file, each reported at the key to change."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from tunevlseg.catalog import LEARNERS, MODELS, is_viable
from tunevlseg.config.schema import DataSettings, ExperimentSpec, ModelSettings, TrainingSettings
from tunevlseg.config.spaces import PAPER_SPACES, SpaceError, apply_override, resolve_space
from tunevlseg.tuning.storage import StorageURLError, parse_storage_url

GRID_SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelSettings,
    "data": DataSettings,
    "training": TrainingSettings,
}
"""Blocks whose keys may be grid axes: ``<block>.<key>``."""

Finding = tuple[tuple[str | int, ...], str]


def check_experiment(spec: ExperimentSpec) -> Iterator[Finding]:
    """Yield ``(key path, message)`` for every cross-key problem."""
    yield from _check_unique(spec)
    yield from _check_spaces(spec)
    yield from _check_grid(spec)
    yield from _check_viable(spec)
    if spec.storage is not None:
        try:
            parse_storage_url(spec.storage)
        except StorageURLError as error:
            yield ("storage",), str(error)


def _check_unique(spec: ExperimentSpec) -> Iterator[Finding]:
    for section, keys in (
        ("models", [m.key for m in spec.models]),
        ("learners", [entry.name for entry in spec.learners]),
        ("datasets", [d.name for d in spec.datasets]),
    ):
        for index, key in enumerate(keys):
            if key in keys[:index]:
                hint = " (give one a `label:`)" if section == "models" else ""
                yield (section, index), f"{key!r} is listed twice{hint}"


def _check_spaces(spec: ExperimentSpec) -> Iterator[Finding]:
    learners = [entry.name for entry in spec.learners]
    for name, value in spec.search.space.items():
        owners = [learner for learner in learners if name in PAPER_SPACES[learner]]
        if not owners:
            known = sorted({p for learner in learners for p in PAPER_SPACES[learner]})
            yield ("search", "space", name), (
                f"no listed learner has this parameter (parameters: {', '.join(known)})"
            )
            continue
        try:
            apply_override(PAPER_SPACES[owners[0]][name], value)
        except SpaceError as error:
            yield ("search", "space", name), str(error)
    for index, entry in enumerate(spec.learners):
        for name, value in entry.space.items():
            try:
                resolve_space(entry.name, {name: value})
            except SpaceError as error:
                message = str(error).removeprefix(f"{name}: ")
                yield ("learners", index, "space", name), message


def _check_grid(spec: ExperimentSpec) -> Iterator[Finding]:
    for axis, values in spec.grid.items():
        section, _, key = axis.partition(".")
        settings_type = GRID_SECTIONS.get(section)
        if settings_type is None or key not in settings_type.model_fields:
            valid = [f"{s}.{k}" for s, t in GRID_SECTIONS.items() for k in t.model_fields]
            close = difflib.get_close_matches(axis, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            yield ("grid", axis), f"not a setting a grid can vary ({hint}valid: {', '.join(valid)})"
            continue
        if not values:
            yield ("grid", axis), "an axis needs at least one value"
        base: BaseModel = getattr(spec, section)
        seen: list[Any] = []
        for index, value in enumerate(values):
            if isinstance(value, (dict, list)):
                yield ("grid", axis, index), "a grid value must be a single value"
                continue
            if value in seen:
                yield ("grid", axis, index), f"{value!r} appears twice"
            seen.append(value)
            try:
                settings_type.model_validate({**base.model_dump(), key: value})
            except ValidationError as error:
                message = error.errors()[0]["msg"].removeprefix("Value error, ")
                yield ("grid", axis, index), message


def _check_viable(spec: ExperimentSpec) -> Iterator[Finding]:
    combos = [(m.name, e.name) for m in spec.models for e in spec.learners]
    if not any(is_viable(model, learner) for model, learner in combos):
        yield ("learners",), (
            "no listed learner can run on the listed models: visual and multimodal learners "
            f"need a ViT image encoder ({', '.join(n for n, i in MODELS.items() if i.image_encoder == 'vit')})"
        )
    for index, entry in enumerate(spec.learners):
        if not LEARNERS[entry.name].trains and entry.space:
            yield ("learners", index, "space"), "zeroshot is not trained and has no search space"
