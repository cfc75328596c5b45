"""Everything that shapes one training run, as one frozen record."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["MONITORS", "PRECISIONS", "FitSettings", "monitor_mode"]

Precision = Literal["32", "16-mixed", "bf16-mixed"]
PRECISIONS: tuple[str, ...] = ("32", "16-mixed", "bf16-mixed")
MONITORS: dict[str, Literal["min", "max"]] = {
    "val_dice": "max",
    "val_iou": "max",
    "val_loss": "min",
}


def monitor_mode(monitor: str) -> Literal["min", "max"]:
    """Whether larger (``"max"``) or smaller (``"min"``) values of ``monitor`` are better."""
    try:
        return MONITORS[monitor]
    except KeyError:
        expected = ", ".join(sorted(MONITORS))
        raise ValueError(f"unknown monitor {monitor!r}; expected one of {expected}") from None


@dataclass(frozen=True)
class FitSettings:
    """Settings of one fit.

    Attributes:
        max_epochs: Upper bound on epochs (also after a resume: the total, not the remainder).
        patience: Early-stopping patience in epochs without improvement of ``monitor``.
        batch_size: Per-step batch size (what fits in memory).
        effective_batch_size: Images per optimizer step, reached by gradient accumulation of
            ``ceil(effective_batch_size / batch_size)`` steps (the paper uses 32).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (the model's ``param_groups`` exempts what it should).
        precision: ``"32"``, or ``"16-mixed"`` / ``"bf16-mixed"`` on CUDA only; on a CPU the
            mixed modes fall back to ``"32"`` with a warning (see :meth:`resolved_precision`).
        seed: Seed of everything (weights of new prompts, data order, augmentation).
        num_workers: DataLoader workers (used by whoever builds the data module).
        monitor: Validation objective: the best checkpoint is the one with the best value of
            it, and it is what early stopping and LR reduction watch unless told otherwise.
        accelerator: Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        deterministic: Ask torch for deterministic algorithms (slower on GPU).
        lr_factor: ReduceLROnPlateau factor.
        lr_patience: ReduceLROnPlateau patience in epochs.
        min_epochs: Epochs trained before early stopping may end the run (0: none). A
            protocol setting: early stopping on a noisy first few epochs would otherwise end a
            run before the prompts have moved.
        lr_monitor: What ReduceLROnPlateau watches; ``None``: ``monitor``. A separate setting
            because a protocol may reduce the LR on the loss while selecting by Dice.
        early_stopping_monitor: What early stopping watches; ``None``: ``monitor``.
        dice_smooth: Smoothing of the loss's soft Dice term (> 0).
    """

    max_epochs: int = 100
    patience: int = 10
    batch_size: int = 8
    effective_batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    precision: Precision = "32"
    seed: int = 0
    num_workers: int = 0
    monitor: str = "val_dice"
    accelerator: str = "auto"
    deterministic: bool = False
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_epochs: int = 0
    lr_monitor: str | None = None
    early_stopping_monitor: str | None = None
    dice_smooth: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_epochs", "patience", "batch_size", "effective_batch_size", "lr_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "lr_patience" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 < self.lr_factor < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 < lr_factor < 1")
        if not self.dice_smooth > 0:
            raise ValueError(f"dice_smooth must be > 0, got {self.dice_smooth!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.min_epochs, int) or not 0 <= self.min_epochs <= self.max_epochs:
            raise ValueError(
                f"min_epochs must be an integer in [0, max_epochs={self.max_epochs}], "
                f"got {self.min_epochs!r}"
            )
        for monitor in (self.monitor, self.lr_monitor, self.early_stopping_monitor):
            if monitor is not None:
                monitor_mode(monitor)

    @property
    def accumulate_grad_batches(self) -> int:
        """Steps per optimizer update: ``ceil(effective_batch_size / batch_size)``."""
        return max(1, math.ceil(self.effective_batch_size / self.batch_size))

    @property
    def monitor_mode(self) -> Literal["min", "max"]:
        return monitor_mode(self.monitor)

    @property
    def resolved_lr_monitor(self) -> str:
        """The metric ReduceLROnPlateau watches (its mode follows from it)."""
        return self.lr_monitor or self.monitor

    @property
    def resolved_early_stopping_monitor(self) -> str:
        """The metric early stopping watches (its mode follows from it)."""
        return self.early_stopping_monitor or self.monitor

    def resolved_precision(self, on_cuda: bool) -> str:
        """The Lightning precision string to use; mixed precision only on CUDA."""
        if self.precision == "32":
            return "32-true"
        if not on_cuda:
            warnings.warn(
                f"precision {self.precision!r} needs CUDA; training in fp32 on this device",
                RuntimeWarning,
                stacklevel=2,
            )
            return "32-true"
        return self.precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
