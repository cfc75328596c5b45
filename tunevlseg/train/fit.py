"""Train, select and test one configuration, resumably.

``fit`` is safe to call again on the same run folder after any interruption (pre-emption,
time-out, a killed node):

* ``result.json`` exists: the run is finished; it is read back and nothing is trained.
* ``trained.json`` exists: training ended; only the best checkpoint is evaluated again.
* ``checkpoints/last.ckpt`` exists: training resumes from it (weights, optimizer, LR scheduler,
  early-stopping and checkpoint state, epoch counter) at the next epoch, towards the same
  ``max_epochs`` total. It is written after every epoch's validation, improvement or not;
  before the rename, the previous ``last.ckpt`` becomes ``last-prev.ckpt``.

Which files are used, and what happens to torn files and to another run's files, is the job of
:mod:`tunevlseg.train.run_folder`.

The model passed in must already hold its frozen pretrained weights: checkpoints only carry the
trainable part (see ``module``).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
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
from tunevlseg.train.paths import BEST_NAME, RunPaths
from tunevlseg.train.run_folder import (
    CKPT_IDENTITY,
    CKPT_SHA,
    Identity,
    RunFolderWarning,
    compare_identity,
    finished_result,
    fsync_dir,
    identity_digest,
    identity_fields,
    plan_training,
    write_json_atomic,
)
from tunevlseg.train.settings import FitSettings, monitor_mode

__all__ = [
    "EpochEnd",
    "EpochEndHook",
    "FitResult",
    "RunFolderWarning",
    "compare_identity",
    "evaluate",
    "fit",
    "identity_digest",
    "write_json_atomic",
]


@dataclass(frozen=True)
class EpochEnd:
    """One finished training epoch, as :func:`fit`'s ``on_epoch_end`` hook sees it.

    Attributes:
        epoch: 0-based epoch.
        metrics: The logged metrics (``val_dice``, ``val_loss``, ...).
        val_images: Per-image validation ``{"dice": [...], "iou": [...]}`` in validation-set
            order; empty for a replayed epoch.
        replayed: ``True`` for an epoch of an earlier attempt, passed again (with its
            validation metrics, from the checkpoint) when a resumed run starts, so a hook that
            records every epoch misses none, even one whose hook call a kill interrupted.
        last: ``True`` when training ends after this epoch anyway (``max_epochs`` reached, or
            early stopping decided so past ``min_epochs``).
    """

    epoch: int
    metrics: dict[str, float]
    val_images: dict[str, list[float]] = field(default_factory=dict, hash=False)
    replayed: bool = False
    last: bool = False

    @property
    def completed(self) -> int:
        """Epochs completed, counting this one (the step a learning curve is reported at)."""
        return self.epoch + 1


EpochEndHook = Callable[[EpochEnd], None]


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
        val_images: Per-image validation scores of the best checkpoint in validation-set order,
            ``{"dice": [...], "iou": [...]}`` (what a paired per-image comparison of two trials
            needs); empty in results written before it was kept.
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
    val_images: dict[str, list[float]] = field(default_factory=dict, hash=False)

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
        on_epoch_end: Called with an :class:`EpochEnd` after each training epoch's validation
            (and after ``last.ckpt`` is written), e.g. to report to an Optuna trial; after a
            resume, first once per epoch of the earlier attempts (``replayed``). Calls must be
            idempotent: a kill between the checkpoint and the call, or inside the call, replays
            that epoch. Exceptions propagate and stop training; the run can be resumed later.
        identity: What this run is (study, trial lineage, params, resolved settings; JSON
            values), recorded in every file it writes. Files of the folder are then reused only
            if they record the same identity; others are moved to ``foreign-<UTC time>/`` with
            a :class:`RunFolderWarning`, and the run starts afresh. ``None``: files are reused
            without this check (and none is recorded).

    Returns:
        The result, also stored in ``run_dir/result.json``.
    """
    paths = RunPaths(Path(run_dir))
    expected = Identity.of(identity)
    finished = finished_result(paths, expected, "finishing the run from its other files")
    if finished is not None:
        _replay_epochs(paths, on_epoch_end)
        return FitResult.from_dict(finished)
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
        dice_smooth=settings.dice_smooth,
    )
    clock = _WallClock()
    plan = plan_training(paths, expected)
    resume, resumed_from = plan.resume, plan.resumed_from

    with _quiet_lightning():
        if plan.trained is not None:
            trained = plan.trained
            _replay_epochs(paths, on_epoch_end)
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
                **identity_fields(expected),
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
        val_images=module.val_images,
        best_epoch=_checkpoint_epoch(paths.best_checkpoint),
        epochs_run=int(trained["epochs_run"]),
        wall_time_s=float(trained["train_time_s"]) + time.monotonic() - eval_start,
        resumed_from_epoch=trained["resumed_from_epoch"],
    )
    write_json_atomic(paths.result, {**result.to_dict(), **identity_fields(expected)})
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
    expected = Identity.of(identity)
    finished = finished_result(paths, expected, "evaluating again")
    if finished is not None:
        return FitResult.from_dict(finished)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module = SegmentationModule(
        model,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        monitor=settings.monitor,
        dice_smooth=settings.dice_smooth,
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
        val_images=module.val_images,
        best_epoch=-1,
        epochs_run=0,
        wall_time_s=time.monotonic() - start,
    )
    write_json_atomic(paths.result, {**result.to_dict(), **identity_fields(expected)})
    return result


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


def _replay_epochs(paths: RunPaths, hook: EpochEndHook | None) -> None:
    """Pass a run's recorded epochs to ``hook`` when training is already over.

    A run that finished training (or evaluation) in an earlier attempt trains no epoch now, so
    the replay that a resumed fit does at its start happens here, from ``last.ckpt``'s record:
    a caller that lost the earlier attempt's reports (a re-queued trial is a new Optuna
    trial) still gets every epoch. Nothing is replayed without a readable ``last.ckpt``.
    """
    if hook is None or not paths.last_checkpoint.is_file():
        return
    try:
        state = torch.load(paths.last_checkpoint, map_location="cpu", weights_only=False)
        stored = next(
            (
                v
                for k, v in state.get("callbacks", {}).items()
                if k.startswith(_EpochEndCallback.__qualname__)
            ),
            None,
        )
    except Exception:  # noqa: BLE001 - unreadable: the run's result does not depend on it
        return
    replay = _EpochEndCallback(hook)
    replay.load_state_dict(stored or {})
    replay.replay()


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
        fsync_dir(target.parent)


def _key(path: Path) -> str:
    return os.path.abspath(path)


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

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CKPT_IDENTITY] = self.identity.value
        checkpoint[CKPT_SHA] = self.identity.digest


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
    """Calls the user's hook once the epoch's validation and ``last.ckpt`` are done.

    Each epoch's validation metrics are kept in the callback's state, which the epoch's
    ``last.ckpt`` carries (this plain callback's ``on_validation_end`` runs before the
    checkpoint callbacks'), so a resumed run can replay the earlier attempts' epochs.
    """

    def __init__(self, hook: EpochEndHook) -> None:
        self.hook = hook
        self.history: dict[int, dict[str, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": {str(epoch): metrics for epoch, metrics in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("history", {})
        self.history = {int(epoch): dict(metrics) for epoch, metrics in stored.items()}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.history[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.replay()  # the history was restored from last.ckpt: earlier attempts' epochs

    def replay(self) -> None:
        for epoch in sorted(self.history):
            self.hook(EpochEnd(epoch, dict(self.history[epoch]), replayed=True))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resume from an epoch-end checkpoint replays that epoch's end hooks; on_train_start
        # has already passed that epoch on, so skip it.
        if trainer.sanity_checking or trainer.fit_loop.restarting:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        images = getattr(pl_module, "val_images", {})
        completed = trainer.current_epoch + 1
        last = completed >= (trainer.max_epochs or completed) or (
            trainer.should_stop and completed >= (trainer.min_epochs or 0)
        )
        self.hook(EpochEnd(trainer.current_epoch, metrics, val_images=dict(images), last=last))


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
