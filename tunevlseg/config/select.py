"""``--only KEY=VALUE[,KEY=VALUE...]``: part of a sweep, for ``tvls-launch``, ``tvls-status`` and
``tvls-collect`` alike.

Keys: ``model`` (the model entry's key as in study names, or its family name), ``learner`` (the
learner's name or its entry's label), ``dataset``, and every ``grid:`` axis, by its full name
(``model.use_upsampler``) or by the short name study names use (``use_upsampler``) when that is
unique. Values are spelled as in study names (``false``, ``3``, ``p2``). One key given twice is
an OR, different keys an AND; after a comma, a bare value continues the key before it
(``learner=coop,vpt`` is ``learner=coop,learner=vpt``).

Every key and value is checked against the experiment's studies, so a typo is an error naming
the valid keys or values, never a silently empty selection.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tunevlseg.config.grid import Expansion, SkippedCombination, StudySpec, _value_text

STUDY_KEYS = ("model", "learner", "dataset")
FOLDER_NAME_MAX = 120


class SelectionError(ValueError):
    """An ``--only`` that cannot be read, or that names what the sweep does not have."""


@dataclass(frozen=True)
class Selection:
    """Accepted values per key; a study is selected when each key accepts one of its values.

    Built by :func:`parse_only` (syntax only, keys as written) and made canonical by
    :meth:`resolve` (grid axes by their full names, every value known to the sweep).
    """

    terms: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def text(self) -> str:
        """The selection as one ``--only`` argument, e.g. ``learner=coop,learner=vpt,dataset=d``."""
        return ",".join(f"{key}={value}" for key, values in self.terms for value in values)

    def __str__(self) -> str:
        return self.text

    @property
    def folder_name(self) -> str:
        """A folder name for the selection's own tables: ``only-learner=coop,dataset=d``.

        Keys and values are names the schema already allows in folder names; a very long
        selection is shortened, with a digest of the whole text keeping it apart from others.
        """
        name = f"only-{self.text}"
        if len(name) <= FOLDER_NAME_MAX:
            return name
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:12]
        return f"{name[: FOLDER_NAME_MAX - 13]}-{digest}"

    def matches(self, spec: StudySpec) -> bool:
        return all(_accepts(key, values, spec) for key, values in self.terms)

    def resolve(self, expansion: Expansion) -> Selection:
        """The selection with canonical keys, checked against the sweep's studies.

        Raises:
            SelectionError: every unknown key and every value that matches no study, with the
                valid keys or values (and the closest one), in one message; or a selection
                that is valid key by key but selects no study.
        """
        axes = _grid_axes(expansion.studies)
        aliases = _key_aliases(axes)
        problems: list[str] = []
        merged: dict[str, list[str]] = {}
        for key, values in self.terms:
            canonical = aliases.get(key)
            if canonical is None:
                problems.append(
                    f"unknown key {key!r}{_nearest(key, aliases)}; valid keys: {_keys_text(axes)}"
                )
                continue
            known = _known_values(canonical, expansion.studies)
            for value in values:
                spelled = _match_value(canonical, value, known)
                if spelled is None:
                    problems.append(
                        f"{key}={value} matches no study{_nearest(value, known)}; valid values of "
                        f"{canonical}: {', '.join(known) or 'none'}"
                        f"{_skipped_value(canonical, value, expansion)}"
                    )
                    continue
                accepted = merged.setdefault(canonical, [])
                if spelled not in accepted:
                    accepted.append(spelled)
        if problems:
            raise SelectionError("; ".join(problems))
        resolved = Selection(tuple((key, tuple(values)) for key, values in merged.items()))
        if not any(resolved.matches(spec) for spec in expansion.studies):
            raise SelectionError(
                f"{resolved.text} selects no study: no study has all of these"
                + _skipped_text(resolved, expansion)
            )
        return resolved

    def apply(self, expansion: Expansion) -> Expansion:
        """The selected studies (and the skipped combinations of the selected models/learners)."""
        studies = [spec for spec in expansion.studies if self.matches(spec)]
        return Expansion(studies, _skipped(self, expansion))


def parse_only(texts: Iterable[str] | None) -> Selection | None:
    """The ``--only`` arguments read (None when there are none); keys are not checked yet.

    Raises:
        SelectionError: an item without ``=`` where no key comes before it, or an empty key or
            value.
    """
    terms: dict[str, list[str]] = {}
    for text in texts or ():
        key: str | None = None
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if "=" in item:
                key, _, value = (part.strip() for part in item.partition("="))
                if not key:
                    raise SelectionError(f"{item!r} has no key before '='; expected KEY=VALUE")
            elif key is None:
                raise SelectionError(f"{item!r} is not KEY=VALUE (e.g. learner=coop)")
            else:
                value = item  # learner=coop,vpt: the key before it
            if not value:
                raise SelectionError(f"{key}= has no value; expected KEY=VALUE")
            accepted = terms.setdefault(key, [])
            if value not in accepted:
                accepted.append(value)
    if not terms:
        return None
    return Selection(tuple((key, tuple(values)) for key, values in terms.items()))


def select(
    expansion: Expansion, only: Selection | Sequence[str] | None
) -> tuple[Expansion, Selection | None]:
    """The studies of the sweep that ``--only`` selects, and the selection made canonical.

    No selection (None or no arguments) is the whole sweep: ``(expansion, None)``.

    Raises:
        SelectionError: see :func:`parse_only` and :meth:`Selection.resolve`.
    """
    selection = only if isinstance(only, Selection) or only is None else parse_only(only)
    if selection is None:
        return expansion, None
    resolved = selection.resolve(expansion)
    return resolved.apply(expansion), resolved


# -- what a key reads from a study ------------------------------------------------------------


def _study_values(key: str, spec: StudySpec) -> tuple[str, ...]:
    """The spellings under which ``spec`` answers ``key`` (the first one is the canonical)."""
    if key == "model":
        return (spec.model.key, spec.model.name)
    if key == "learner":
        return tuple(v for v in (spec.learner_label, spec.learner) if v)
    if key == "dataset":
        return (spec.dataset.name,)
    if key in spec.grid:
        return (_value_text(spec.grid[key]),)
    return ()


def _accepts(key: str, values: tuple[str, ...], spec: StudySpec) -> bool:
    return any(value in values for value in _study_values(key, spec))


def _skipped(selection: Selection, expansion: Expansion) -> list[SkippedCombination]:
    """The skipped combinations (model key, learner name) of the selected models and learners."""
    terms = dict(selection.terms)
    models, learners = terms.get("model"), terms.get("learner")
    if learners is not None:  # a label stands for its learner
        labels = {
            spec.learner_label: spec.learner for spec in expansion.studies if spec.learner_label
        }
        learners = tuple(labels.get(value, value) for value in learners)
    return [
        combo
        for combo in expansion.skipped
        if (models is None or combo.model in models)
        and (learners is None or combo.learner in learners)
    ]


def _grid_axes(studies: Sequence[StudySpec]) -> list[str]:
    return list(dict.fromkeys(axis for spec in studies for axis in spec.grid))


def _key_aliases(axes: Sequence[str]) -> dict[str, str]:
    """Every spelling of a key -> its canonical name; short axis names only when unique."""
    aliases = {key: key for key in STUDY_KEYS}
    aliases.update({axis: axis for axis in axes})
    short: dict[str, list[str]] = {}
    for axis in axes:
        short.setdefault(axis.rsplit(".", 1)[-1], []).append(axis)
    for name, full in short.items():
        if len(full) == 1 and name not in aliases:
            aliases[name] = full[0]
    return aliases


def _keys_text(axes: Sequence[str]) -> str:
    """The valid keys, each grid axis with its short name when that is accepted too."""
    if not axes:
        return ", ".join(STUDY_KEYS) + " (the experiment has no grid axes)"
    short = {full: alias for alias, full in _key_aliases(axes).items() if alias != full}
    return ", ".join(
        [*STUDY_KEYS, *(f"{axis} ({short[axis]})" if axis in short else axis for axis in axes)]
    )


def _known_values(key: str, studies: Sequence[StudySpec]) -> list[str]:
    return list(dict.fromkeys(value for spec in studies for value in _study_values(key, spec)))


def _match_value(key: str, value: str, known: Sequence[str]) -> str | None:
    """The known spelling ``value`` stands for; grid values also ignore case (``False``)."""
    if value in known:
        return value
    if key not in STUDY_KEYS:
        folded = [v for v in known if v.lower() == value.lower()]
        if len(folded) == 1:
            return folded[0]
    return None


def _nearest(text: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(text, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _skipped_text(selection: Selection, expansion: Expansion) -> str:
    reasons = [
        f"{combo.model} + {combo.learner} is skipped ({combo.reason})"
        for combo in _skipped(selection, expansion)
    ]
    return f"; {'; '.join(reasons)}" if reasons else ""


def _skipped_value(key: str, value: str, expansion: Expansion) -> str:
    """Why a model or learner of the file has no study: its combinations were all skipped."""
    if key not in ("model", "learner"):
        return ""
    reasons = list(
        dict.fromkeys(
            f"{combo.model} + {combo.learner} is skipped ({combo.reason})"
            for combo in expansion.skipped
            if getattr(combo, key) == value
        )
    )
    return f" ({'; '.join(reasons)})" if reasons else ""


__all__ = [
    "STUDY_KEYS",
    "Selection",
    "SelectionError",
    "parse_only",
    "select",
]
