"""Grid expansion: one study per (model, learner, data set, cell of the ``grid:`` axes).

A :class:`StudySpec` is complete by itself: it is stored in the study's user attributes, and a
worker on a compute node or the collector rebuilds everything from it without the YAML file.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunevlseg.catalog import LEARNERS, MODELS, is_viable
from tunevlseg.config.loader import Experiment
from tunevlseg.config.schema import (
    UPSAMPLER_INPUT_MODELS,
    DatasetEntry,
    DataSettings,
    ModelEntry,
    ModelSettings,
    SearchSettings,
    TrainingSettings,
)
from tunevlseg.config.spaces import SPACE_AXIS, ParamSpace, resolve_space, searchable


class StudySpec(BaseModel):
    """Everything one Optuna study needs, with paths made absolute."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: str
    name: str
    model: ModelEntry
    learner: str
    learner_label: str | None = None
    learner_options: dict[str, Any]
    dataset: DatasetEntry
    model_settings: ModelSettings
    data: DataSettings
    training: TrainingSettings
    search: SearchSettings
    space: dict[str, dict[str, Any]]
    grid: dict[str, Any]
    output_dir: str

    @property
    def n_trials(self) -> int:
        """The study's trial budget (zero-shot evaluation is deterministic: one trial)."""
        return self.search.n_trials if LEARNERS[self.learner].trains else 1

    @property
    def param_space(self) -> dict[str, ParamSpace]:
        return {name: ParamSpace.from_dict(spec) for name, spec in self.space.items()}

    @property
    def image_size(self) -> int:
        return self.model.image_size or MODELS[self.model.name].image_size

    @property
    def folder(self) -> str:
        """The study's folder below the sweep's output folder."""
        return self.name.split("/", 1)[1]

    @property
    def combination(self) -> str:
        return f"{self.model.key}-{self.learner_label or self.learner}"

    def to_attrs(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class SkippedCombination:
    model: str
    learner: str
    reason: str


@dataclass(frozen=True)
class Expansion:
    studies: list[StudySpec]
    skipped: list[SkippedCombination]

    @property
    def n_trials(self) -> int:
        return sum(study.n_trials for study in self.studies)


def _value_text(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "empty"


def grid_key(cell: dict[str, Any]) -> str:
    """A short readable key for a cell of the grid, e.g. ``use_upsampler=false,prompt_key=p2``."""
    short = {axis: axis.rsplit(".", 1)[-1] for axis in cell}
    if len(set(short.values())) < len(short):
        short = {axis: axis for axis in cell}
    return ",".join(f"{short[axis]}={_value_text(value)}" for axis, value in cell.items())


def _cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    axes = list(grid)
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*grid.values())]


def _with_cell(settings: BaseModel, section: str, cell: dict[str, Any]) -> Any:
    changes = {
        axis.split(".", 1)[1]: v for axis, v in cell.items() if axis.split(".")[0] == section
    }
    return type(settings).model_validate({**settings.model_dump(), **changes})


def expand(experiment: Experiment) -> Expansion:
    """All studies of a sweep, in a stable order (models, learners, data sets, grid cells).

    A learner entry with ``datasets`` makes studies only on those data sets.
    """
    spec = experiment.spec
    output_dir = str(experiment.output_dir)
    studies: list[StudySpec] = []
    skipped: list[SkippedCombination] = []
    search = spec.search.model_copy(update={"space": {}})
    for model, entry, dataset, cell in itertools.product(
        spec.models, spec.learners, spec.datasets, _cells(spec.grid)
    ):
        if entry.datasets is not None and dataset.name not in entry.datasets:
            continue
        if not is_viable(model.name, entry.name):
            combo = SkippedCombination(
                model.key,
                entry.name,
                f"{LEARNERS[entry.name].modality} prompts need a ViT image encoder",
            )
            if combo not in skipped:
                skipped.append(combo)
            continue
        model_settings = _with_cell(spec.model, "model", cell)
        if not LEARNERS[entry.name].trains:
            model_settings = model_settings.model_copy(update={"use_upsampler": False})
        if model.name not in UPSAMPLER_INPUT_MODELS:  # no choice there: keep its definition
            model_settings = model_settings.model_copy(update={"upsampler_input": "projector"})
        data = _with_cell(spec.data, "data", cell)
        if data.cache_dir is not None:
            data = data.model_copy(update={"cache_dir": experiment.resolve(data.cache_dir)})
        if dataset.unseen_classes is not None:  # the study's data block holds the one list used
            data = data.model_copy(update={"unseen_classes": list(dataset.unseen_classes)})
        prompt_key = data.prompt_key if "data.prompt_key" in cell else dataset.prompt_key
        resolved_dataset = dataset.model_copy(
            update={
                "root": experiment.resolve(dataset.root),
                "prompt_key": prompt_key or data.prompt_key,
                "unseen_classes": None,
            }
        )
        resolved_model = model
        if model.pretrained is not None and _looks_local(model.pretrained, experiment):
            resolved_model = model.model_copy(
                update={"pretrained": str(experiment.resolve(model.pretrained))}
            )
        known = searchable(entry.name)
        shared = {k: v for k, v in spec.search.space.items() if k in known}
        fixed = {
            axis.removeprefix(SPACE_AXIS): value
            for axis, value in cell.items()
            if axis.startswith(SPACE_AXIS) and axis.removeprefix(SPACE_AXIS) in known
        }
        space = resolve_space(entry.name, shared, entry.space, fixed)
        name = f"{spec.name}/{model.key}-{entry.key}/{dataset.name}"
        if cell:
            name += f"/{grid_key(cell)}"
        studies.append(
            StudySpec(
                sweep=spec.name,
                name=name,
                model=resolved_model,
                learner=entry.name,
                learner_label=entry.label,
                learner_options=dict(entry.options),
                dataset=resolved_dataset,
                model_settings=model_settings,
                data=data,
                training=_with_cell(spec.training, "training", cell),
                search=search,
                space={k: v.to_dict() for k, v in space.items()},
                grid=cell,
                output_dir=output_dir,
            )
        )
    return Expansion(studies, skipped)


def _looks_local(pretrained: str, experiment: Experiment) -> bool:
    """A folder path rather than a hub id (``org/name``): starts with . / ~ or exists."""
    if pretrained.startswith((".", "/", "~")):
        return True
    return experiment.resolve(pretrained).exists()


__all__ = ["Expansion", "SkippedCombination", "StudySpec", "expand", "grid_key"]
