"""The sweep plan: what each study still needs, as tasks of one trial each, in array chunks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tunevlseg.config.grid import Expansion, StudySpec
from tunevlseg.tuning.studies import StudyProgress, progress

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


@dataclass(frozen=True)
class Task:
    """One array task: one trial of one study."""

    study: str
    trial_number: int


@dataclass(frozen=True)
class StudyPlan:
    spec: StudySpec
    progress: StudyProgress

    @property
    def n_new(self) -> int:
        """Trials the launch will add to the study."""
        return self.progress.to_enqueue

    @property
    def n_tasks(self) -> int:
        """Tasks the launch will start: the waiting trials and the new ones."""
        return self.progress.waiting + self.n_new


@dataclass(frozen=True)
class Plan:
    studies: list[StudyPlan]
    expansion: Expansion
    notes: list[str] = field(default_factory=list)

    @property
    def n_studies(self) -> int:
        return len(self.studies)

    @property
    def n_trials(self) -> int:
        return sum(s.spec.n_trials for s in self.studies)

    @property
    def n_tasks(self) -> int:
        return sum(s.n_tasks for s in self.studies)

    @property
    def n_done(self) -> int:
        return sum(s.progress.done for s in self.studies)

    @property
    def complete(self) -> bool:
        return all(s.progress.remaining == 0 for s in self.studies)

    def digest(self) -> str:
        """A hash of the studies' definitions (not of their progress)."""
        specs = [s.spec.to_attrs() for s in self.studies]
        return hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "studies": self.n_studies,
            "trials": self.n_trials,
            "done": self.n_done,
            "tasks": self.n_tasks,
            "plan_sha256": self.digest(),
        }


def make_plan(expansion: Expansion, storage: BaseStorage | None) -> Plan:
    """The plan against the storage's current state; no storage means nothing exists yet."""
    studies = []
    for spec in expansion.studies:
        state = progress(storage, spec) if storage is not None else None
        studies.append(
            StudyPlan(spec, state or StudyProgress(spec.name, spec.n_trials, exists=False))
        )
    notes = [f"skipped {s.model} + {s.learner}: {s.reason}" for s in expansion.skipped]
    return Plan(studies, expansion, notes)


T = TypeVar("T")
"""Whatever is split into arrays: tasks, or their indices."""


def chunk(tasks: Sequence[T], max_array_size: int) -> list[list[T]]:
    """Split tasks into arrays whose indices stay below SLURM's ``MaxArraySize``."""
    if max_array_size < 1:
        raise ValueError("max_array_size must be at least 1")
    return [list(tasks[i : i + max_array_size]) for i in range(0, len(tasks), max_array_size)]
