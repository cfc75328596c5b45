"""Train, select and test one configuration, resumably.

``fit`` is safe to call again on the same run folder after any interruption (pre-emption,
time-out, a killed node):

* ``result.json`` exists: the run is finished; it is read back and nothing is trained.
* ``trained.json`` exists: training ended; only the best checkpoint is evaluated again.
* ``checkpoints/last.ckpt`` exists: training resumes from it (weights, optimizer, LR scheduler,
  early-stopping and checkpoint state, epoch counter) at the next epoch, towards the same
  ``max_epochs`` total. It is written after every epoch's validation, improvement or not.

Every file is written to a temporary file, fsynced and renamed (then the folder is fsynced), so
neither a kill nor a node crash during a save leaves a half-written file under the real name.
Before the rename, the previous ``last.ckpt`` becomes ``last-prev.ckpt``.

A file that is there but cannot be used is never fatal; it is set aside (kept, never read
again) with a :class:`RunFolderWarning` naming it and what happens instead:

* unreadable (torn, or lacking the keys a resume needs): renamed ``<name>.torn``; a torn
  ``last.ckpt`` falls back to ``last-prev.ckpt``, and without a usable one training starts
  from the beginning; a torn ``result.json`` or ``trained.json`` is redone from the other files.
* ``best.ckpt`` unusable while training has ended or is to be resumed: the best weights are
  lost, and a resume could only restore their score, so the run's files go to
  ``superseded-<UTC time>/`` and training starts again from the beginning (same seed, so the
  same run).
* with ``identity``: a file recording another identity, or none, belongs to another run; all of
  the run's files (result, trained, checkpoints, logs; not the caller's) go to
  ``foreign-<UTC time>/`` and the run starts afresh. :func:`compare_identity` says which keys
  differ.

The model passed in must already hold its frozen pretrained weights: checkpoints only carry the
trainable part (see ``module``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments.lightning import LightningEnvironment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from tunevlseg.train.module import SegmentationModule
from tunevlseg.train.paths import (
    BEST_NAME,
    FOREIGN_PREFIX,
    SUPERSEDED_PREFIX,
    TORN_SUFFIX,
    RunPaths,
)
from tunevlseg.train.settings import FitSettings, monitor_mode

__all__ = [
    "EpochEndHook",
    "FitResult",
    "RunFolderWarning",
    "compare_identity",
    "evaluate",
    "fit",
    "identity_digest",
    "write_json_atomic",
]

EpochEndHook = Callable[[int, dict[str, float]], None]


class RunFolderWarning(UserWarning):
    """A run folder held a file that could not be used; the message names it and what was done."""


@dataclass(frozen=True)
class FitResult:
    """Outcome of one fit.

    Attributes:
        val_dice: Validation Dice of the best checkpoint.
        val_iou: Validation IoU of the best checkpoint.
        test_dice: Test Dice of the best checkpoint.
        test_iou: Test IoU of the best checkpoint.
        best_epoch: 0-based epoch of the best checkpoint.
        epochs_run: Epochs trained in total, over all attempts.
        wall_time_s: Seconds spent training and evaluating, over all attempts.
        resumed_from_epoch: ``None`` for an uninterrupted run; else the epochs already completed
            when the (last) resume happened, which is also the 0-based epoch it continued at.
        val_loss: Validation loss of the best checkpoint, the value a study minimises under
            ``search.objective: val_loss`` (``None`` in results written before it was kept).
        test_per_class: Test scores of the best checkpoint per class name,
            ``{class: {"dice", "iou", "n"}}`` (see ``metrics.PerClassScores``); empty in results
            written before it was kept, and when the test batches name no classes.
    """

    val_dice: float
    val_iou: float
    test_dice: float
    test_iou: float
    best_epoch: int
    epochs_run: int
    wall_time_s: float
    resumed_from_epoch: int | None = None
    val_loss: float | None = None
    # hash=False: a dict is unhashable, and the frozen dataclass would otherwise hash it.
    test_per_class: dict[str, dict[str, float | int]] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitResult:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def fit(
    model: nn.Module,
    datamodule: L.LightningDataModule,
    settings: FitSettings,
    run_dir: Path,
    *,
    on_epoch_end: EpochEndHook | None = None,
    identity: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` with early stopping, then validate and test its best checkpoint.

    Args:
        model: A prompted segmentation model (see ``module.PromptedSegmenter``).
        datamodule: Provides train/val/test loaders with the batch keys the model needs.
        settings: The training settings. ``batch_size``/``num_workers`` are the data module's
            business; they are recorded here so that a run is described by one record.
        run_dir: The run's folder (created if needed); see :class:`RunPaths`.
        on_epoch_end: Called after each training epoch's validation (and after ``last.ckpt`` is
            written) with the 0-based epoch and the logged metrics, e.g. to report to an Optuna
            trial. Exceptions propagate and stop training; the run can be resumed later.
        identity: What this run is (study, trial lineage, params, resolved settings; JSON
            values), recorded in every file it writes. Files of the folder are then reused only
            if they record the same identity; others are moved to ``foreign-<UTC time>/`` with
            a :class:`RunFolderWarning`, and the run starts afresh. ``None``: files are reused
            without this check (and none is recorded).

    Returns:
        The result, also stored in ``run_dir/result.json``.
    """
    paths = RunPaths(Path(run_dir))
    expected = _Identity.of(identity)
    finished = _finished(paths, expected, "finishing the run from its other files")
    if finished is not None:
        return finished
    loader_batch = getattr(datamodule, "batch_size", settings.batch_size)
    if loader_batch != settings.batch_size:
        raise ValueError(
            f"the data module's batch_size ({loader_batch}) differs from settings.batch_size "
            f"({settings.batch_size}); gradient accumulation would miss the effective batch size"
        )
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = SegmentationModule(
        model,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        monitor=settings.resolved_lr_monitor,
        lr_factor=settings.lr_factor,
        lr_patience=settings.lr_patience,
    )
    clock = _WallClock()
    plan = _plan_training(paths, expected)
    resume, resumed_from = plan.resume, plan.resumed_from

    with _quiet_lightning():
        if plan.trained is not None:
            trained = plan.trained
            trainer = _make_trainer(settings, paths, [])
        else:
            callbacks: list[Callback] = [
                ModelCheckpoint(
                    dirpath=paths.checkpoints_dir,
                    filename=BEST_NAME,
                    monitor=settings.monitor,
                    mode=settings.monitor_mode,
                    save_top_k=1,
                    # Lightning writes "last" only together with a new best: _LastCheckpoint
                    # writes it after every epoch instead.
                    save_last=False,
                    enable_version_counter=False,
                    # Save right after validation, so that on_epoch_end (called at the end of
                    # the training epoch) only ever sees epochs whose checkpoint is on disk.
                    save_on_train_epoch_end=False,
                ),
                EarlyStopping(
                    monitor=settings.resolved_early_stopping_monitor,
                    mode=monitor_mode(settings.resolved_early_stopping_monitor),
                    patience=settings.patience,
                    # Decide before the checkpoint is written, so the saved state includes it.
                    check_on_train_epoch_end=False,
                ),
                clock,
                # After ModelCheckpoint (Lightning keeps the order among Checkpoint callbacks),
                # so this epoch's best score is part of the state it saves.
                _LastCheckpoint(paths.last_checkpoint),
            ]
            if expected is not None:
                callbacks.append(_IdentityStamp(expected))
            if on_epoch_end is not None:
                callbacks.append(_EpochEndCallback(on_epoch_end))
            trainer = _make_trainer(settings, paths, callbacks)
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            trained = {
                "epochs_run": trainer.current_epoch,
                "train_time_s": clock.elapsed(),
                "resumed_from_epoch": resumed_from,
                **_identity_fields(expected),
            }
            write_json_atomic(paths.trained, trained)
        if not paths.best_checkpoint.is_file():
            raise RuntimeError(
                f"training ended without a best checkpoint in {paths.checkpoints_dir}"
            )
        eval_start = time.monotonic()
        val = trainer.validate(
            module, datamodule=datamodule, ckpt_path=paths.best_checkpoint, verbose=False
        )[0]
        test = trainer.test(
            module, datamodule=datamodule, ckpt_path=paths.best_checkpoint, verbose=False
        )[0]

    result = FitResult(
        val_dice=float(val["val_dice"]),
        val_iou=float(val["val_iou"]),
        val_loss=float(val["val_loss"]),
        test_dice=float(test["test_dice"]),
        test_iou=float(test["test_iou"]),
        test_per_class=module.test_per_class,
        best_epoch=_checkpoint_epoch(paths.best_checkpoint),
        epochs_run=int(trained["epochs_run"]),
        wall_time_s=float(trained["train_time_s"]) + time.monotonic() - eval_start,
        resumed_from_epoch=trained["resumed_from_epoch"],
    )
    write_json_atomic(paths.result, {**result.to_dict(), **_identity_fields(expected)})
    return result


def evaluate(
    model: nn.Module,
    datamodule: L.LightningDataModule,
    settings: FitSettings,
    run_dir: Path,
    *,
    identity: Mapping[str, Any] | None = None,
) -> FitResult:
    """Validate and test ``model`` as it is, without training (the zero-shot baseline).

    The result has ``epochs_run = 0`` and ``best_epoch = -1`` (no checkpoint was chosen) and is
    written to ``run_dir/result.json`` like a fit's, so a finished evaluation is not repeated;
    with ``identity``, only if it records the same one (see :func:`fit`).
    """
    paths = RunPaths(Path(run_dir))
    expected = _Identity.of(identity)
    finished = _finished(paths, expected, "evaluating again")
    if finished is not None:
        return finished
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = SegmentationModule(
        model, lr=settings.lr, weight_decay=settings.weight_decay, monitor=settings.monitor
    )
    start = time.monotonic()
    with _quiet_lightning():
        trainer = _make_trainer(settings, paths, [])
        val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    result = FitResult(
        val_dice=float(val["val_dice"]),
        val_iou=float(val["val_iou"]),
        val_loss=float(val["val_loss"]),
        test_dice=float(test["test_dice"]),
        test_iou=float(test["test_iou"]),
        test_per_class=module.test_per_class,
        best_epoch=-1,
        epochs_run=0,
        wall_time_s=time.monotonic() - start,
    )
    write_json_atomic(paths.result, {**result.to_dict(), **_identity_fields(expected)})
    return result


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (readers never see half a file).

    Synced like the checkpoints, so a node crash cannot leave a renamed but empty file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def identity_digest(identity: Mapping[str, Any]) -> str:
    """sha256 (hex) of ``json.dumps(identity, sort_keys=True)``: equal identities, equal digests.

    Sorted keys make the digest independent of the order the caller built the mapping in, so
    a requeued job (another process) computes the same digest for the same trial.
    """
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def compare_identity(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """The keys in which two identities differ, sorted; nested mappings one level deep, dotted.

    ``old=None`` (a file that recorded no identity) differs in every key of ``new``. Values are
    compared as JSON (a tuple equals a list), as they are recorded. Meant for telling a user why
    a run folder was not reused, e.g. ``["params.lr", "study"]``.
    """
    before, after = _as_json(old or {}), _as_json(new)
    keys: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, _ABSENT), after.get(key, _ABSENT)
        nested = [v for v in (a, b) if v is not _ABSENT]
        if all(isinstance(v, dict) for v in nested):
            a_sub = a if isinstance(a, dict) else {}
            b_sub = b if isinstance(b, dict) else {}
            keys.extend(
                f"{key}.{sub}"
                for sub in sorted(set(a_sub) | set(b_sub))
                if a_sub.get(sub, _ABSENT) != b_sub.get(sub, _ABSENT)
            )
        elif a != b:
            keys.append(key)
    return keys


_ABSENT: Any = object()


def _as_json(value: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(value, sort_keys=True, default=str))
    return data


# -- what a run folder holds -------------------------------------------------------------------

# Where the identity is recorded: in result.json/trained.json, and in every checkpoint.
_JSON_IDENTITY, _JSON_SHA = "identity", "identity_sha256"
_CKPT_IDENTITY, _CKPT_SHA = "tvls_identity", "tvls_identity_sha256"
_SHOWN_KEYS = 8


@dataclass(frozen=True)
class _Identity:
    """The identity a run was asked for: its JSON form (as recorded) and its digest."""

    value: dict[str, Any]
    digest: str

    @classmethod
    def of(cls, identity: Mapping[str, Any] | None) -> _Identity | None:
        if identity is None:
            return None
        return cls(_as_json(identity), identity_digest(identity))


def _identity_fields(expected: _Identity | None) -> dict[str, Any]:
    """What result.json/trained.json record about the identity (nothing without one)."""
    if expected is None:
        return {}
    return {_JSON_IDENTITY: expected.value, _JSON_SHA: expected.digest}


class _ForeignRun(Exception):
    """``source`` records another identity (or none) than the run asked for."""

    def __init__(self, source: Path, recorded: Any) -> None:
        super().__init__(str(source))
        self.source = source
        self.recorded = recorded


def _check_owner(
    source: Path, data: Mapping[str, Any], expected: _Identity | None, *, checkpoint: bool
) -> None:
    """Raise :class:`_ForeignRun` unless ``data`` (read from ``source``) is this run's."""
    if expected is None:
        return
    identity_key, sha_key = (
        (_CKPT_IDENTITY, _CKPT_SHA) if checkpoint else (_JSON_IDENTITY, _JSON_SHA)
    )
    if data.get(sha_key) != expected.digest:
        raise _ForeignRun(source, data.get(identity_key))


def _set_aside_foreign(
    paths: RunPaths, foreign: _ForeignRun, expected: _Identity, then: str
) -> None:
    """Keep another run's files for inspection, out of this run's way, and say what differs."""
    aside = _set_aside(paths, FOREIGN_PREFIX)
    recorded = foreign.recorded
    if not isinstance(recorded, Mapping):
        detail = f"{foreign.source.name} records no identity"
    else:
        old = _as_json(recorded)
        keys = compare_identity(old, expected.value)
        shown = [
            f"{key}: {_dotted(old, key)} -> {_dotted(expected.value, key)}"
            for key in keys[:_SHOWN_KEYS]
        ]
        if len(keys) > _SHOWN_KEYS:
            shown.append(f"... {len(keys) - _SHOWN_KEYS} more")
        differences = "; ".join(shown) or "same values, other digest"
        detail = f"{foreign.source.name} records another identity ({differences})"
    _warn(
        f"run folder {paths.run_dir} holds another run's files: {detail}; moved them to "
        f"{aside}; {then}"
    )


def _dotted(identity: Mapping[str, Any], key: str) -> str:
    """The value at a key of :func:`compare_identity` (``a`` or ``a.b``), short, for a message."""
    value: Any = identity
    for part in [key] if key in identity else key.split(".", 1):
        value = value.get(part, _ABSENT) if isinstance(value, Mapping) else _ABSENT
    if value is _ABSENT:
        return "<absent>"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _finished(paths: RunPaths, expected: _Identity | None, then_torn: str) -> FitResult | None:
    """This run's result from ``result.json``; else ``None`` (an unusable file set aside)."""
    data = _read_json(paths.result, then_torn)
    if data is None:
        return None
    try:
        _check_owner(paths.result, data, expected, checkpoint=False)
    except _ForeignRun as foreign:
        assert expected is not None
        _set_aside_foreign(paths, foreign, expected, "running it afresh")
        return None
    return FitResult.from_dict(data)


# What a resume needs from a checkpoint; a file without it is as unusable as a torn one.
_CHECKPOINT_KEYS = ("epoch", "global_step", "state_dict", "optimizer_states", "loops", "callbacks")


@dataclass(frozen=True)
class _Plan:
    """How to continue a run whose ``result.json`` is absent.

    ``trained`` (``trained.json``, its ``best.ckpt`` checked): only evaluate. Else ``resume``
    (a checked ``last.ckpt`` or ``last-prev.ckpt``, ``resumed_from`` epochs done): continue.
    Neither: train from the start.
    """

    trained: dict[str, Any] | None = None
    resume: Path | None = None
    resumed_from: int | None = None


def _plan_training(paths: RunPaths, expected: _Identity | None) -> _Plan:
    """Decide from the folder's files, setting aside (with a warning) those that cannot be used."""
    try:
        return _plan_own_files(paths, expected)
    except _ForeignRun as foreign:
        assert expected is not None
        _set_aside_foreign(paths, foreign, expected, "training afresh")
        return _Plan()


def _plan_own_files(paths: RunPaths, expected: _Identity | None) -> _Plan:
    """:func:`_plan_training`, but raising :class:`_ForeignRun` at the first file of another run.

    The check comes before a checkpoint is chosen or a torn checkpoint renamed, so a folder of
    another run is set aside (by the caller) as it was found, apart from a torn JSON file.
    """
    trained = _read_json(paths.trained, "resuming training from the last checkpoint")
    if trained is not None:
        _check_owner(paths.trained, trained, expected, checkpoint=False)
        best_problem = _best_problem(paths, expected)
        if best_problem is None:
            return _Plan(trained=trained)
        _start_over(paths, best_problem)
        return _Plan()
    resume: Path | None = None
    resumed_from: int | None = None
    torn: list[tuple[Path, str]] = []
    for path in (paths.last_checkpoint, paths.previous_last_checkpoint):
        if not path.exists():
            continue
        state, problem = _load_checkpoint(path)
        if state is None:
            torn.append((path, problem))
            continue
        _check_owner(path, state, expected, checkpoint=True)
        resume, resumed_from = path, int(state["epoch"]) + 1
        break
    # A resume continues towards the best checkpoint it recorded: without that file it could
    # neither be evaluated nor end as an uninterrupted run would.
    best_problem = _best_problem(paths, expected) if resume is not None else None
    then = f"resuming from {resume}" if resume and not best_problem else "training from the start"
    for path, problem in torn:
        aside = _set_torn(path)
        _warn(f"checkpoint {path} is unreadable ({problem}); moved to {aside.name}; {then}")
    if best_problem is not None:
        _start_over(paths, best_problem)
        return _Plan()
    return _Plan(resume=resume, resumed_from=resumed_from)


def _best_problem(paths: RunPaths, expected: _Identity | None) -> str | None:
    """Why ``best.ckpt`` cannot be used (``"is missing"``, ``"is unreadable (...)"``), or None.

    Raises :class:`_ForeignRun` if it is readable but another run's.
    """
    if not paths.best_checkpoint.is_file():
        return "is missing"
    state, problem = _load_checkpoint(paths.best_checkpoint)
    if state is None:
        return f"is unreadable ({problem})"
    _check_owner(paths.best_checkpoint, state, expected, checkpoint=True)
    return None


def _start_over(paths: RunPaths, best_problem: str) -> None:
    """The best weights are lost: keep the run's files aside and train again from the start.

    Resuming from ``last.ckpt`` instead would restore a best score without its weights: unless a
    later epoch beat it, the run would end without any best checkpoint, and if one did, it would
    not be the run's best. Training again with the same seed reproduces the run (as closely as
    a resume would).
    """
    best = paths.best_checkpoint
    if best.is_file():
        _set_torn(best)
    aside = _set_aside(paths, SUPERSEDED_PREFIX)
    _warn(
        f"checkpoint {best} {best_problem}: the run's best weights are lost, so training from "
        f"the start; its previous files are kept in {aside}"
    )


def _load_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint's content, or ``None`` and why it cannot be used for a resume."""
    try:
        # Our own, small checkpoint; it also holds plain Python callback state.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torn files fail in many ways: zip, pickle, EOF, OS errors
        return None, _describe(exc)
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not a checkpoint"
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    return state, ""


def _read_json(path: Path, then: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if absent or unreadable (then set aside, warned)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        aside = _set_torn(path)
        _warn(f"{path} is unreadable ({_describe(exc)}); moved to {aside.name}; {then}")
        return None
    return data


def _set_torn(path: Path) -> Path:
    """Rename an unusable file to ``<name>.torn`` (kept for inspection, never read again)."""
    aside = _free_name(path.with_name(path.name + TORN_SUFFIX))
    os.replace(path, aside)
    return aside


def _set_aside(paths: RunPaths, prefix: str) -> Path:
    """Move the files ``fit`` owns into ``run_dir/<prefix><UTC time>/``; the caller's stay."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = _free_name(paths.aside_dir(prefix, stamp))
    aside.mkdir(parents=True)
    for entry in paths.owned():
        if entry.exists():
            os.replace(entry, aside / entry.name)
    _fsync_dir(paths.run_dir)
    return aside


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... if taken: setting aside never overwrites."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def _warn(message: str) -> None:
    warnings.warn(message, RunFolderWarning, stacklevel=3)


# -- trainer assembly ---------------------------------------------------------------------------


def _make_trainer(settings: FitSettings, paths: RunPaths, callbacks: list[Callback]) -> L.Trainer:
    if _uses_cuda(settings.accelerator):
        # TF32 matmuls and convolutions on Ampere+: ~2x faster fp32 parts, precision ample here.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    return L.Trainer(
        accelerator=settings.accelerator,
        devices=1,
        max_epochs=settings.max_epochs,
        # Lightning keeps training while early stopping asks to stop before min_epochs.
        min_epochs=settings.min_epochs,
        precision=settings.resolved_precision(_uses_cuda(settings.accelerator)),  # type: ignore[arg-type]
        accumulate_grad_batches=settings.accumulate_grad_batches,
        deterministic=settings.deterministic,
        callbacks=callbacks,
        # A new version_N folder per attempt: the CSV writer would truncate an existing file.
        logger=CSVLogger(paths.run_dir, name=paths.logs_dir.name),
        # A plain environment even inside a SLURM job: otherwise Lightning installs its own
        # SIGUSR1 requeue handler, while pre-emption and requeueing belong to submitit.
        plugins=[
            _AtomicCheckpointIO({paths.last_checkpoint: paths.previous_last_checkpoint}),
            LightningEnvironment(),
        ],
        default_root_dir=paths.run_dir,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def _uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def _checkpoint_epoch(checkpoint: Path) -> int:
    # Our own, small checkpoint; it also holds plain Python callback state.
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(state["epoch"])


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file in the same folder, then renames over the target.

    The temporary file is fsynced before the rename and the folder after it: without that, a
    node crash can leave a renamed but empty file (the rename reached the disk, the data did
    not). ``keep_previous`` maps a target to a name its current file is renamed to just before
    the new one replaces it, so one older good copy survives a newest one damaged after all.
    """

    def __init__(self, keep_previous: Mapping[Path, Path] | None = None) -> None:
        super().__init__()
        self.keep_previous = {_key(k): v for k, v in (keep_previous or {}).items()}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        previous = self.keep_previous.get(_key(target))
        if previous is not None and target.is_file():
            os.replace(target, previous)
        os.replace(tmp, target)
        _fsync_dir(target.parent)


def _key(path: Path) -> str:
    return os.path.abspath(path)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every OS/file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` after every validation of a fit, whether the objective improved or not.

    ``ModelCheckpoint(save_last=True)`` (Lightning 2.6) writes "last" only in a step where it
    also wrote a top-k checkpoint, i.e. on improvement, so a pre-emption during a plateau would
    lose every epoch since the last one. As a ``Checkpoint`` it runs after the other callbacks'
    ``on_validation_end`` (early stopping) and after the best-checkpoint callback listed before
    it, so the state it saves includes this epoch's decisions.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.save_checkpoint(self.path)


class _IdentityStamp(Callback):
    """Records the run's identity in every checkpoint, so a copied file can be recognised."""

    def __init__(self, identity: _Identity) -> None:
        self.identity = identity

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[_CKPT_IDENTITY] = self.identity.value
        checkpoint[_CKPT_SHA] = self.identity.digest


class _WallClock(Callback):
    """Training time summed over attempts (its state travels in the checkpoint)."""

    def __init__(self) -> None:
        self.previous = 0.0
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.previous + time.monotonic() - self.started

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous = float(state_dict["elapsed"])
        self.started = time.monotonic()


class _EpochEndCallback(Callback):
    """Calls the user's hook once the epoch's validation and ``last.ckpt`` are done."""

    def __init__(self, hook: EpochEndHook) -> None:
        self.hook = hook

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resume from an epoch-end checkpoint replays that epoch's end hooks; the hook has
        # already seen that epoch (it runs after the checkpoint is written), so skip it.
        if trainer.sanity_checking or trainer.fit_loop.restarting:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.hook(trainer.current_epoch, metrics)


_NOISE = (
    r".*does not have many workers.*",
    r".*exists and is not empty.*",
    r".*smaller than the logging interval.*",
    r".*LightningModule.* has parameters that were not used.*",
    r".*treespec, LeafSpec.*",
    r".*callbacks used to create the checkpoint need to be provided.*",
    r".*module\(s\) in eval mode.*",  # the frozen encoders stay in eval mode on purpose
    r".*The `srun` command is available on your system but is not used.*",  # submitit owns SLURM
)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's banners and advice that do not apply to these runs."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
