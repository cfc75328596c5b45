"""Search spaces: the paper's Table 2 per learner, and the rules for overriding it in YAML.

A parameter keeps its kind (log-float, float, int, choice) from the paper's space; a YAML
override only narrows or moves the bounds, replaces the choices, or fixes a value. That way a
YAML number written as ``1e-5`` (a string to YAML 1.1) is still read as a float, and a typo in
a parameter name is an error instead of a silently unused setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

Kind = Literal["float", "int", "choice"]


@dataclass(frozen=True)
class ParamSpace:
    """One hyperparameter's range, or a fixed value when ``fixed`` is set."""

    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    fixed: Any = None
    is_fixed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the study's user attributes."""
        if self.is_fixed:
            return {"kind": self.kind, "fixed": self.fixed}
        if self.kind == "choice":
            return {"kind": "choice", "choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParamSpace:
        if "fixed" in data:
            return cls(kind=data["kind"], fixed=data["fixed"], is_fixed=True)
        if data["kind"] == "choice":
            return cls(kind="choice", choices=tuple(data["choices"]))
        return cls(kind=data["kind"], low=data["low"], high=data["high"], log=data["log"])

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Draw this parameter for a trial (fixed values are recorded as user attributes)."""
        if self.is_fixed:
            trial.set_user_attr(f"fixed.{name}", self.fixed)
            return self.fixed
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.low is None or self.high is None:
            raise ValueError(f"{name}: a {self.kind} range needs low and high")
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.is_fixed:
            return f"= {self.fixed!r}"
        if self.kind == "choice":
            return "{" + ", ".join(repr(c) for c in self.choices) + "}"
        scale = "log " if self.log else ""
        return f"{self.kind} {scale}[{self.low:g}, {self.high:g}]"


def _log_float(low: float, high: float) -> ParamSpace:
    return ParamSpace("float", low=low, high=high, log=True)


COMMON = {
    "lr": _log_float(1e-5, 5e-3),
    "weight_decay": _log_float(1e-5, 1e-2),
}
PROMPT_DEPTH = {"prompt_depth": ParamSpace("int", low=1, high=11)}
META_NET = {
    "intermediate_dim": ParamSpace("choice", choices=(32, 64, 96, 128)),
    "use_lora": ParamSpace("choice", choices=(True, False)),
}

PAPER_SPACES: dict[str, dict[str, ParamSpace]] = {
    "coop": {**COMMON, **PROMPT_DEPTH},
    "cocoop": {**COMMON, **PROMPT_DEPTH, **META_NET},
    "vpt": {**COMMON, **PROMPT_DEPTH},
    "maple": {**COMMON, **PROMPT_DEPTH, **META_NET},
    "shared_separate": {
        **COMMON,
        **PROMPT_DEPTH,
        "shared_dim": ParamSpace("choice", choices=(32, 64)),
    },
    "shared_attention": {
        **COMMON,
        **PROMPT_DEPTH,
        "n_heads": ParamSpace("choice", choices=(16, 20, 32)),
        "dropout": ParamSpace("float", low=0.1, high=0.55),
        "ff_dim": ParamSpace("choice", choices=(1280, 1420)),
        "norm_first": ParamSpace("choice", choices=(True, False)),
    },
    # Not in the paper (tunevlseg.learners.vlpt). lr, weight decay and depth: the paper's ranges
    # (ours, for comparability with the rows above). n_ctx_vision: LDVC's 40-100 visual tokens,
    # widened by us down to 4 (model.n_ctx, what VPT and MaPLe use); log scale, default 20.
    # The adapter and consensus switches are options, not searched: each variant is its own row.
    "vlpt": {
        **COMMON,
        **PROMPT_DEPTH,
        "n_ctx_vision": ParamSpace("int", low=4, high=100, log=True),
    },
    # H-CLIP trained CLIP with Adam at lr 5e-6, weight decay 1e-4 (Sec. 5.1) for 80k iterations;
    # the lr range is ours, wide enough to hold that point and the faster rates short medical
    # runs need; weight decay is COMMON's (it holds 1e-4). q, orthogonal, dcrc are options.
    "hclip": {"lr": _log_float(1e-6, 1e-3), "weight_decay": COMMON["weight_decay"]},
    "e2e": dict(COMMON),
    "decoder": dict(COMMON),  # searched like e2e; the authors fixed lr 2e-4, wd 1e-3
    "zeroshot": {},
}


@dataclass(frozen=True)
class OnRequest:
    """A learner setting searched only when an experiment names it in a ``space:`` (the range
    below, narrowed or fixed by the override as any other), and the options it needs to have
    an effect."""

    space: ParamSpace
    needs: dict[str, Any] = field(default_factory=dict)


ON_REQUEST: dict[str, dict[str, OnRequest]] = {
    # LDVC's components, searched on request (they are options by default, so the paper-style
    # rows stay comparable): 6 text tokens in LDVC, here 2-16; its 4x4 windows and top quarter
    # of the windows are the defaults the ranges surround (36 windows on CLIPSeg's 22x22 grid).
    "vlpt": {
        "n_ctx_text": OnRequest(ParamSpace("int", low=2, high=16)),
        "consensus_window": OnRequest(ParamSpace("choice", choices=(2, 4)), {"consensus": True}),
        "consensus_top_m": OnRequest(ParamSpace("int", low=4, high=36), {"consensus": True}),
    },
    # H-CLIP's block size (its Table 4 ablates 32-256); every value divides the real encoders'
    # widths (512, 768, 2048, 3072).
    "hclip": {"q": OnRequest(ParamSpace("choice", choices=(64, 128, 256)))},
}
"""Per learner: parameters an experiment may add to the search space (``space: {q: ...}``)."""


def searchable(learner: str) -> dict[str, ParamSpace]:
    """Every parameter an experiment may search or fix for ``learner``: its paper space, then
    what it searches on request."""
    extra = {name: entry.space for name, entry in ON_REQUEST.get(learner, {}).items()}
    return {**PAPER_SPACES[learner], **extra}


TRAINING_PARAMS = frozenset(COMMON)
"""Parameters the optimiser takes; every other parameter goes to the learner."""


class SpaceError(ValueError):
    """An override that does not fit the parameter it overrides."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise SpaceError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpaceError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SpaceError(f"{what} must be finite, got {value!r}")
    return number


def apply_override(base: ParamSpace, override: Any) -> ParamSpace:
    """Return ``base`` changed by a YAML override.

    An override is a scalar (fix the value), ``{low, high[, log]}`` for numeric parameters,
    ``{choices: [...]}`` for any parameter, ``{fixed: value}``, or ``{}``: the range as it is
    (how a parameter searched on request, :data:`ON_REQUEST`, is asked for with its range).
    """
    if not isinstance(override, dict):
        return _fixed(base, override)
    if not override:
        return base
    unknown = set(override) - {"low", "high", "log", "choices", "fixed"}
    if unknown:
        raise SpaceError(f"unknown field(s) {sorted(unknown)}; use low/high/log, choices, or fixed")
    if "fixed" in override:
        if len(override) > 1:
            raise SpaceError("'fixed' cannot be combined with other fields")
        return _fixed(base, override["fixed"])
    if "choices" in override:
        if set(override) != {"choices"}:
            raise SpaceError("'choices' cannot be combined with low/high/log")
        choices = override["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError("'choices' must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"'choices' has duplicates: {choices!r}")
        return ParamSpace("choice", choices=tuple(_coerce(base, c) for c in choices))
    if base.kind == "choice":
        raise SpaceError("this parameter is a choice: override it with 'choices' or 'fixed'")
    low = _number(override.get("low", base.low), "low")
    high = _number(override.get("high", base.high), "high")
    log = override.get("log", base.log)
    if not isinstance(log, bool):
        raise SpaceError(f"'log' must be true or false, got {log!r}")
    if base.kind == "int" and (low != int(low) or high != int(high)):
        raise SpaceError(f"an integer parameter needs whole bounds, got [{low:g}, {high:g}]")
    if low >= high:
        raise SpaceError(f"low must be below high, got low={low:g}, high={high:g}")
    if log and low <= 0:
        raise SpaceError(f"a log-scaled range needs low > 0, got low={low:g}")
    if base.kind == "int":
        return ParamSpace("int", low=int(low), high=int(high), log=log)
    return ParamSpace("float", low=low, high=high, log=log)


def _coerce(base: ParamSpace, value: Any) -> Any:
    """Read a YAML value in the parameter's kind (``1e-5`` is a string in YAML 1.1)."""
    if isinstance(value, (dict, list)):
        raise SpaceError(f"a value must be a scalar, got {value!r}")
    if base.kind == "float":
        return _number(value, "value")
    if base.kind == "int":
        number = _number(value, "value")
        if number != int(number):
            raise SpaceError(f"an integer parameter needs a whole number, got {value!r}")
        return int(number)
    kinds = {type(c) for c in base.choices}
    if kinds and type(value) not in kinds and not (kinds == {int} and isinstance(value, float)):
        names = sorted(k.__name__ for k in kinds)
        raise SpaceError(f"value {value!r} is not of the parameter's type ({', '.join(names)})")
    return value


def _fixed(base: ParamSpace, value: Any) -> ParamSpace:
    return ParamSpace(base.kind, fixed=_coerce(base, value), is_fixed=True)


SPACE_AXIS = "search.space."
"""A grid axis ``search.space.<parameter>`` fixes a searched parameter in each cell, so each
value is tuned separately (a figure of Dice against prompt depth)."""


def resolve_space(learner: str, *overrides: dict[str, Any]) -> dict[str, ParamSpace]:
    """The learner's paper space with each override mapping applied in order.

    Raises:
        SpaceError: with the parameter name as the first word, for an unknown parameter or a
            bad override.
    """
    space = dict(PAPER_SPACES[learner])
    known = searchable(learner)
    for override in overrides:
        for name, value in override.items():
            if name not in known:
                valid = ", ".join(known) or "none"
                raise SpaceError(f"{name}: not a parameter of {learner} (valid: {valid})")
            try:
                space[name] = apply_override(space.get(name, known[name]), value)
            except SpaceError as error:
                raise SpaceError(f"{name}: {error}") from None
    return space
