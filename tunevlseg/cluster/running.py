"""The trials a sweep is running now: how far each has trained, since when, and where.

Everything comes from the storage, nothing from squeue or the logs. Every trial reports its
objective after each validation epoch at step = epochs completed
(:mod:`tunevlseg.tuning.pruning`), so a RUNNING trial's last step is its current epoch and the
value there its last validation value; the claim stamps the start (``tvls.started_at``) and the
owner (SLURM job and array task, or host and pid). ``tvls-status --json``, ``tvls-status
--watch`` and the progress lines of a local launch all read the same record from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunevlseg.catalog import LEARNERS
from tunevlseg.cluster.worker import STARTED_ATTR
from tunevlseg.tuning import recovery
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from tunevlseg.config.grid import StudySpec

DASH = "–"
"""What a value not known (yet) shows as."""


@dataclass(frozen=True)
class RunningTrial:
    """One RUNNING trial as the displays show it.

    Attributes:
        study: The study's full name.
        trial: The trial number.
        epoch: Epochs completed so far (the last step of its curve; 0 before the first
            validation), or ``None`` for a study that trains nothing (zero-shot).
        max_epochs: The study's ``training.max_epochs``; ``None`` when it trains nothing.
        objective: The study's ``search.objective`` (the metric the curve holds).
        last_value: The objective at ``epoch``, ``None`` before the first report.
        started_at: When the trial was first claimed (seconds since the epoch), if known.
        where: ``<job>_<array task>`` (or ``<job>``) under SLURM, else ``<host>:<pid>``.
    """

    study: str
    trial: int
    epoch: int | None
    max_epochs: int | None
    objective: str
    last_value: float | None
    started_at: float | None
    where: str | None

    @classmethod
    def of(cls, trial: FrozenTrial, spec: StudySpec) -> RunningTrial:
        trains = LEARNERS[spec.learner].trains if spec.learner in LEARNERS else True
        epoch, value = curve_end(trial)
        attrs = trial_attrs(trial)
        return cls(
            study=spec.name,
            trial=trial.number,
            epoch=epoch if trains else None,
            max_epochs=spec.training.max_epochs if trains else None,
            objective=spec.search.objective,
            last_value=value,
            started_at=started_at(trial, attrs),
            where=where(attrs),
        )

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds since the claim (``now``: ``time.time()``), ``None`` when not stamped."""
        if self.started_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.started_at)

    @property
    def epoch_text(self) -> str:
        """``3/20``; ``–`` for a study that trains nothing."""
        if self.epoch is None:
            return DASH
        return f"{self.epoch}/{self.max_epochs}" if self.max_epochs else str(self.epoch)

    @property
    def value_text(self) -> str:
        return DASH if self.last_value is None else f"{self.last_value:.4f}"

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        elapsed = self.elapsed(now)
        return {
            "study": self.study,
            "trial": self.trial,
            "epoch": self.epoch,
            "max_epochs": self.max_epochs,
            "objective": self.objective,
            "last_value": self.last_value,
            "started_at": self.started_at,
            "elapsed_s": None if elapsed is None else round(elapsed, 1),
            "where": self.where,
        }


def curve_end(trial: FrozenTrial) -> tuple[int, float | None]:
    """The last step of the trial's learning curve and its value; ``(0, None)`` before any."""
    curve = trial.intermediate_values
    if not curve:
        return 0, None
    step = max(curve)
    return int(step), float(curve[step])


def started_at(trial: FrozenTrial, attrs: dict[str, Any] | None = None) -> float | None:
    """When the trial was claimed: its claim stamp, else the moment it became RUNNING."""
    attrs = trial_attrs(trial) if attrs is None else attrs
    stamped = attrs.get(STARTED_ATTR)
    if isinstance(stamped, int | float):
        return float(stamped)
    if trial.datetime_start is not None:
        return trial.datetime_start.timestamp()
    return None


def where(attrs: dict[str, Any]) -> str | None:
    """The owner stamp as one word: SLURM ``job_task`` (or ``job``), else ``host:pid``."""
    job, task = attrs.get(recovery.SLURM_JOB_ATTR), attrs.get(recovery.SLURM_TASK_ATTR)
    if job:
        return f"{job}_{task}" if task not in (None, "") else str(job)
    host, pid = attrs.get(recovery.HOST_ATTR), attrs.get(recovery.PID_ATTR)
    if host and pid is not None:
        return f"{host}:{pid}"
    return None


def running_trials(storage: BaseStorage | None, specs: Iterable[StudySpec]) -> list[RunningTrial]:
    """The RUNNING trials of the given studies, in their order, then by trial number.

    One storage read per study (a journal storage reads only the lines added since its last
    read); pass only the studies whose counts show running trials to save the others'.
    """
    from optuna.trial import TrialState

    if storage is None:
        return []
    found: list[RunningTrial] = []
    for spec in specs:
        try:
            study_id = storage.get_study_id_from_name(spec.name)
        except KeyError:
            continue
        trials = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        found.extend(RunningTrial.of(t, spec) for t in sorted(trials, key=lambda t: t.number))
    return found


def short_study(name: str) -> str:
    """A study name without its sweep (``demo/clipseg-coop/kvasir`` -> ``clipseg-coop/kvasir``):
    every study of a sweep starts with it, and the displays name the sweep once."""
    _, sep, rest = name.partition("/")
    return rest if sep and rest else name


def fit_width(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle (``clipseg-coop/syn…lyps``):
    the model and learner at the start and the data set's end both stay readable."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[: max(width, 0)]
    keep = width - 1
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def fit_study(name: str, width: int) -> str:
    """A (short) study name in ``width`` characters: the data set part gives way first, cut in
    the middle, so the model and learner stay whole (``clipseg-coop/synth…lyps``)."""
    if len(name) <= width:
        return name
    head, sep, rest = name.partition("/")
    if sep and rest and len(head) + 1 + 5 <= width:
        return f"{head}/{fit_width(rest, width - len(head) - 1)}"
    return fit_width(name, width)


def clock_text(seconds: float | None) -> str:
    """``H:MM:SS`` (``1d 02:03:04`` past a day); ``–`` when unknown."""
    if seconds is None:
        return DASH
    total = int(max(0.0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}"
