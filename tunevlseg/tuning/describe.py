"""One fixed configuration of a study: its parameter values and its trainable-parameter count.

A sweep samples parameters; ``tvls-train`` and ``tvls-train --describe`` need one point of a
study's space without a sampler. The default point follows one rule, so that a run "at the
defaults" means the same thing for every learner and every experiment file:

* a parameter the space fixes takes its fixed value;
* a categorical parameter takes its first choice (the paper's Table 2 lists the usual choice
  first, e.g. ``use_lora: [true, false]``);
* a log-scaled range takes its middle on the log scale, the geometric mean ``sqrt(low*high)``
  (``lr`` in ``[1e-5, 5e-3]`` gives ``2.24e-4``);
* a linear range takes its arithmetic middle (``dropout`` in ``[0.1, 0.55]`` gives ``0.325``);
* integers round half up (``prompt_depth`` in ``[1, 11]`` gives 6, in ``[1, 3]`` gives 2);
  floats keep three significant digits, which stays inside the range.

Counting builds the prompted model exactly as a trial does (:func:`build_model`), so the count
is the one the optimiser sees. For the real sizes (CLIPSeg ``CIDAS/clipseg-rd64``: ViT-B/16,
12 text and 12 vision layers, reduce dim 64; CRIS R50) nothing is downloaded: each backbone is
built once with random weights from its ``real_size_*_config`` and shared by every learner.
Sharing is safe because the prompted model sets every ``requires_grad`` flag of the backbone
when it is built, and counts are taken right after building.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tunevlseg.config.grid import StudySpec
from tunevlseg.config.spaces import ParamSpace

__all__ = [
    "REAL_SIZE",
    "ChosenParams",
    "ParamCount",
    "ParamError",
    "RealSizeModels",
    "choose_params",
    "count_configured",
    "default_params",
    "default_value",
    "describe_studies",
    "parse_value",
]

MAX_DEPTH = 11
"""Deepest prompt depth of the paper's space (also ``learners.base.MAX_PROMPT_DEPTH``)."""

Source = Literal["given", "fixed", "default"]


class ParamError(ValueError):
    """A parameter value that does not fit a study's space; the message names key and range."""


def _three_digits(value: float) -> float:
    return float(f"{value:.3g}")


def default_value(space: ParamSpace) -> Any:
    """The default point of one parameter (see the module docstring for the rule)."""
    if space.is_fixed:
        return space.fixed
    if space.kind == "choice":
        return space.choices[0]
    low, high = float(space.low), float(space.high)  # type: ignore[arg-type]
    middle = math.sqrt(low * high) if space.log else (low + high) / 2
    if space.kind == "int":
        return math.floor(middle + 0.5)
    return min(max(_three_digits(middle), low), high)


def default_params(space: Mapping[str, ParamSpace]) -> dict[str, Any]:
    return {name: default_value(spec) for name, spec in space.items()}


def _allowed(name: str, space: ParamSpace) -> str:
    if space.is_fixed:
        return f"{name} is fixed to {space.fixed!r} in this study"
    if space.kind == "choice":
        return f"{name} takes one of " + ", ".join(_text(c) for c in space.choices)
    scale = "log-scaled " if space.log else ""
    kind = "an integer" if space.kind == "int" else f"a {scale}float"
    if space.kind == "int" and space.log:
        kind = "a log-scaled integer"
    return f"{name} takes {kind} in [{space.low:g}, {space.high:g}]"


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_value(name: str, space: ParamSpace, value: Any) -> Any:
    """Read ``value`` (text from the command line, or already typed) in ``space``'s kind.

    Raises:
        ParamError: the value is not of the kind, out of the range, not a choice, or differs
            from the fixed value; the message names the key and what it accepts.
    """
    text = _text(value).strip()
    if space.kind == "choice" or (space.is_fixed and isinstance(space.fixed, (bool, str))):
        options = (space.fixed,) if space.is_fixed else space.choices
        for option in options:
            if _text(option).lower() == text.lower() or option == value:
                return option
        raise ParamError(f"{name}={text} is not allowed: {_allowed(name, space)}")
    try:
        number = float(text)
    except ValueError:
        raise ParamError(f"{name}={text} is not a number: {_allowed(name, space)}") from None
    if not math.isfinite(number):
        raise ParamError(f"{name}={text} is not finite: {_allowed(name, space)}")
    if space.kind == "int":
        if number != int(number):
            raise ParamError(f"{name}={text} is not a whole number: {_allowed(name, space)}")
        number = int(number)
    if space.is_fixed:
        if number != float(space.fixed):
            raise ParamError(f"{name}={text} is not allowed: {_allowed(name, space)}")
        return space.fixed
    if not float(space.low) <= number <= float(space.high):  # type: ignore[arg-type]
        raise ParamError(f"{name}={text} is out of range: {_allowed(name, space)}")
    return number


@dataclass(frozen=True)
class ChosenParams:
    """A point of a study's space and where each value came from."""

    values: dict[str, Any]
    sources: dict[str, Source]


def _unknown(names: Sequence[str], space: Mapping[str, ParamSpace], learner: str) -> ParamError:
    valid = "; ".join(_allowed(n, s) for n, s in space.items()) or "it has no parameters"
    return ParamError(f"unknown parameter(s) {', '.join(names)} for learner {learner}: {valid}")


def choose_params(
    space: Mapping[str, ParamSpace], given: Mapping[str, Any], learner: str = "this study"
) -> ChosenParams:
    """Validate ``given`` against ``space`` and fill the rest by the default rule.

    Raises:
        ParamError: an unknown key (listing every key with what it accepts) or a bad value.
    """
    unknown = [name for name in given if name not in space]
    if unknown:
        raise _unknown(unknown, space, learner)
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for name, spec in space.items():
        if name in given:
            values[name], sources[name] = parse_value(name, spec, given[name]), "given"
        else:
            values[name] = default_value(spec)
            sources[name] = "fixed" if spec.is_fixed else "default"
    return ChosenParams(values, sources)


@dataclass(frozen=True)
class ParamCount:
    """Trainable and total parameters of one study's model at one point of its space."""

    model: str
    learner: str
    params: dict[str, Any]
    trainable: int
    total: int
    scale: Literal["configured", "real size"] = "configured"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_depth(self) -> int | None:
        depth = self.params.get("prompt_depth")
        return None if depth is None else int(depth)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "learner": self.learner,
            "scale": self.scale,
            "prompt_depth": self.prompt_depth,
            "params": self.params,
            "settings": self.settings,
            "trainable": self.trainable,
            "total": self.total,
            "share": self.share,
        }


def count_configured(spec: StudySpec, params: Mapping[str, Any]) -> tuple[int, int]:
    """``(trainable, total)`` of the study's model as a trial builds it (loads the checkpoint)."""
    from tunevlseg.tuning.objective import build_model

    model = build_model(spec, dict(params))
    return model.count_parameters()


def _small_clip_tokenizer() -> Any:
    """Our small CLIP tokenizer: only token ids matter for counting (the "a photo of a"
    initialisation), and its ids all lie inside the real vocabularies."""
    import tempfile
    from pathlib import Path

    from transformers import CLIPTokenizer

    from tunevlseg.models.tiny import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder))
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _real_size_clipseg(seed: int) -> Any:
    from pathlib import Path

    from tunevlseg.catalog import IMAGENET_MEAN, IMAGENET_STD
    from tunevlseg.models.loading import LoadedCLIPSeg, quiet_transformers
    from tunevlseg.models.tiny import fast_random_clipseg, real_size_clipseg_config

    quiet_transformers()
    return LoadedCLIPSeg(
        model=fast_random_clipseg(real_size_clipseg_config(), seed=seed),
        tokenizer=_small_clip_tokenizer(),
        folder=Path("<random CIDAS/clipseg-rd64 sizes>"),
        image_size=352,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def _real_size_cris(seed: int) -> Any:
    from pathlib import Path

    from tunevlseg.models.cris.checkpoint import LoadedCRIS
    from tunevlseg.models.cris.config import real_size_cris_config
    from tunevlseg.models.cris.tiny import fast_random_cris

    config = real_size_cris_config()
    return LoadedCRIS(
        model=fast_random_cris(config, seed=seed),
        tokenizer=_small_clip_tokenizer(),
        folder=Path("<random CRIS R50 sizes>"),
        config=config,
        image_size=config.image_size,
    )


REAL_SIZE: dict[str, tuple[Any, str]] = {
    "clipseg": (_real_size_clipseg, "tunevlseg.models.clipseg:PromptedCLIPSeg"),
    "cris": (_real_size_cris, "tunevlseg.models.cris.prompted:PromptedCRIS"),
}
"""Per family: a random real-size loaded model (no download) and the prompted model class."""


class RealSizeModels:
    """Random real-size backbones, each built once on first use, to count any learner on them."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._loaded: dict[str, Any] = {}

    def count(self, spec: StudySpec, params: Mapping[str, Any]) -> tuple[int, int]:
        """``(trainable, total)`` for ``spec``'s learner and settings at ``params``."""
        from tunevlseg.catalog import LEARNERS, load_object
        from tunevlseg.tuning.objective import learner_params, model_settings_kwargs

        family = spec.model.name
        build, prompted = REAL_SIZE[family]
        if family not in self._loaded:
            self._loaded[family] = build(self.seed)
        learner_cls = load_object(LEARNERS[spec.learner].implementation)
        model = load_object(prompted)(
            self._loaded[family],
            learner_cls,
            learner_params(spec, dict(params)),
            **model_settings_kwargs(spec),
        )
        return model.count_parameters()


def _settings(spec: StudySpec) -> dict[str, Any]:
    """The settings that change the parameter count (the upsampler's input only off its
    default, so that rows stay short)."""
    settings = spec.model_settings
    counted: dict[str, Any] = {"n_ctx": settings.n_ctx, "use_upsampler": settings.use_upsampler}
    if settings.upsampler_input != "projector":
        counted["upsampler_input"] = settings.upsampler_input
    return {**counted, **spec.learner_options}


def _distinct(studies: Sequence[StudySpec]) -> list[StudySpec]:
    """One study per (model, learner, settings): the data set does not change the model."""
    chosen: dict[str, StudySpec] = {}
    for spec in studies:
        key = repr((spec.model.key, spec.learner, sorted(_settings(spec).items()), spec.space))
        chosen.setdefault(key, spec)
    return list(chosen.values())


def _given_for(spec: StudySpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if k in spec.space}


def describe_studies(
    studies: Sequence[StudySpec],
    overrides: Mapping[str, Any] | None = None,
    *,
    real_size: bool = False,
) -> list[ParamCount]:
    """Parameter counts of every distinct (model, learner, settings) of ``studies``.

    Each row is at the study's default point with ``overrides`` applied where the learner has
    the parameter. With ``real_size``, CLIPSeg studies are counted on the real model sizes at the
    default depth and also at depths 1 and 11 (unless ``prompt_depth`` is given), on random
    models of the real sizes (families without an entry in :data:`REAL_SIZE` are left out).

    Raises:
        ParamError: an override no study's learner has, or a value outside a study's space.
    """
    overrides = dict(overrides or {})
    known = {name for spec in studies for name in spec.space}
    unknown = sorted(set(overrides) - known)
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise ParamError(f"unknown parameter(s) {', '.join(unknown)}: the studies take {valid}")
    points: list[tuple[StudySpec, dict[str, Any]]] = []
    for spec in _distinct(studies):
        if real_size and spec.model.name not in REAL_SIZE:
            continue
        chosen = choose_params(spec.param_space, _given_for(spec, overrides), spec.learner)
        depths: list[int | None] = [chosen.values.get("prompt_depth")]
        if real_size and "prompt_depth" in chosen.values and "prompt_depth" not in overrides:
            depths = [*sorted({int(chosen.values["prompt_depth"]), 1, MAX_DEPTH})]
        for depth in depths:
            values = dict(chosen.values)
            if depth is not None:
                values["prompt_depth"] = depth
            points.append((spec, values))
    rows: list[ParamCount] = []
    counter = RealSizeModels() if real_size else None
    for spec, values in points:
        if counter is not None:
            trainable, total = counter.count(spec, values)
        else:
            trainable, total = count_configured(spec, values)
        rows.append(
            ParamCount(
                model=spec.model.key,
                learner=spec.learner,
                params=values,
                trainable=int(trainable),
                total=int(total),
                scale="real size" if real_size else "configured",
                settings=_settings(spec),
            )
        )
    return rows
