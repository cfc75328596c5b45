"""LightningModule that trains any prompted segmentation model.

The wrapped model must provide::

    forward(pixel_values, input_ids, attention_mask) -> logits (B, 1, H, W)
    param_groups(weight_decay) -> list[dict]   # AdamW groups of the trainable parameters

Checkpoints hold only what training changes: parameters with ``requires_grad`` and the
persistent buffers (small: normalisation statistics and the like). The frozen pretrained base is
hundreds of MB and is rebuilt from the pretrained weights whenever the model is constructed, so
storing it in every trial's ``last.ckpt`` and ``best.ckpt`` would only cost disk and time. In
turn, loading accepts a state dict without the frozen parameters, but still refuses one that
lacks a trainable parameter or has unknown keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from tunevlseg.train.loss import DICE_SMOOTH, dice_bce_loss
from tunevlseg.train.metrics import (
    ClassScores,
    PerClassScores,
    SegmentationScores,
    per_image_scores,
)
from tunevlseg.train.settings import monitor_mode

__all__ = ["PLATEAU_KEY", "PromptedSegmenter", "SegmentationModule"]

PLATEAU_KEY = "tunevlseg_plateau_scheduler"


class PromptedSegmenter(Protocol):
    """What :class:`SegmentationModule` needs from a model."""

    def __call__(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> Tensor: ...

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]: ...


class SegmentationModule(L.LightningModule):
    """Loss, optimizer, LR schedule and metrics around a prompted segmentation model.

    Logs ``train_loss``, ``val_loss``, ``val_dice``, ``val_iou``, ``test_loss``, ``test_dice``
    and ``test_iou`` (epoch means; Dice/IoU are per-image means, see ``metrics``). After a test
    run, :attr:`test_per_class` holds the test Dice, IoU and sample count per class name, when
    the batches carry ``class_names`` (the data module's do); it is not logged, because a logged
    value must be a number and the class names are only known from the data. After each
    validation, :attr:`val_images` holds every validation image's Dice and IoU in loader order
    (what a paired, per-image comparison of two runs needs, e.g. the Wilcoxon pruner).

    Args:
        model: The model (an ``nn.Module`` following :class:`PromptedSegmenter`).
        lr: AdamW learning rate.
        weight_decay: Passed to ``model.param_groups``.
        monitor: What the LR scheduler watches (``val_dice``, ``val_iou``, ``val_loss``; the
            mode follows: ``val_loss`` is minimised). ``fit`` passes the experiment's
            ``training.scheduler.monitor``, which may differ from the search objective.
        lr_factor: ReduceLROnPlateau factor.
        lr_patience: ReduceLROnPlateau patience (epochs).
        dice_smooth: Smoothing of the loss's soft Dice term.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        monitor: str = "val_dice",
        lr_factor: float = 0.5,
        lr_patience: int = 3,
        dice_smooth: float = DICE_SMOOTH,
    ) -> None:
        super().__init__()
        if not callable(getattr(model, "param_groups", None)):
            raise TypeError(f"{type(model).__name__} has no param_groups(weight_decay) method")
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.monitor = monitor
        self.monitor_mode = monitor_mode(monitor)
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        self.dice_smooth = dice_smooth
        self.val_scores = SegmentationScores()
        self.test_scores = SegmentationScores()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.test_class_scores = PerClassScores()
        self.test_per_class: dict[str, ClassScores] = {}
        self.val_images: dict[str, list[float]] = {}
        self._val_batches: list[tuple[Tensor, Tensor]] = []
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None

    # -- steps -----------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        logits: Tensor = self.model(
            batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        )
        masks = batch["masks"]
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(
                logits, size=masks.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss = dice_bce_loss(self(batch), batch["masks"], smooth=self.dice_smooth)
        # Epoch-level only: per-step logging would copy the loss to the host every step.
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, batch_size=batch["masks"].shape[0]
        )
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        logits = self._evaluate(batch, self.val_scores, self.val_loss)
        # Computed again beside the metric's sums: torchmetrics' update returns nothing.
        dice, iou = per_image_scores(logits.detach(), batch["masks"])
        self._val_batches.append((dice, iou))

    def on_validation_epoch_start(self) -> None:
        self._val_batches = []

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        logits = self._evaluate(batch, self.test_scores, self.test_loss)
        names = batch.get("class_names")
        if names is not None:
            self.test_class_scores.update(logits, batch["masks"], names)

    def on_validation_epoch_end(self) -> None:
        values = self._log_scores("val", self.val_scores, self.val_loss)
        if self._val_batches:
            dice, iou = (
                torch.cat(parts).tolist() for parts in zip(*self._val_batches, strict=True)
            )
            self.val_images = {"dice": dice, "iou": iou}
        self._val_batches = []
        fitting = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        if self._plateau is not None and fitting:
            # Stepped here rather than by Lightning (which steps after the epoch-end hooks): this
            # runs before the epoch's checkpoint is written, so a resume neither loses nor
            # repeats a step.
            self._plateau.step(float(values[self.monitor]))

    def on_test_epoch_start(self) -> None:
        # A test run cut short (an exception mid-epoch) must not leak into the next one.
        self.test_class_scores.reset()
        self.test_per_class = {}

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_scores, self.test_loss)
        self.test_per_class = self.test_class_scores.compute()
        self.test_class_scores.reset()

    def _evaluate(
        self, batch: Mapping[str, Any], scores: SegmentationScores, loss_mean: MeanMetric
    ) -> Tensor:
        logits = self(batch)
        loss = dice_bce_loss(logits, batch["masks"], smooth=self.dice_smooth)
        loss_mean.update(loss, batch["masks"].shape[0])
        scores.update(logits, batch["masks"])
        return logits

    def _log_scores(
        self, stage: str, scores: SegmentationScores, loss_mean: MeanMetric
    ) -> dict[str, Tensor]:
        computed = scores.compute()
        values = {
            f"{stage}_loss": loss_mean.compute(),
            f"{stage}_dice": computed["dice"],
            f"{stage}_iou": computed["iou"],
        }
        self.log_dict(values)
        scores.reset()
        loss_mean.reset()
        return values

    # -- optimisation ----------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.model.param_groups(self.weight_decay)  # type: ignore[operator]
        if not any(p.requires_grad for g in groups for p in g["params"]):
            raise ValueError("param_groups() returned no trainable parameters")
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=self.monitor_mode, factor=self.lr_factor, patience=self.lr_patience
        )
        if self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)
            self._plateau_state = None
        return optimizer

    @property
    def plateau(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
        """The ReduceLROnPlateau scheduler once :meth:`configure_optimizers` has run.

        Public so that callers (and tests) can check which metric, factor and patience a run
        really uses, rather than trusting the settings they passed.
        """
        return self._plateau

    # -- small checkpoints -----------------------------------------------------------------

    def checkpoint_keys(self) -> set[str]:
        """State-dict keys that go into a checkpoint: trainable parameters, persistent buffers."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        parameters = {name for name, _ in self.named_parameters()}
        keys.update(k for k in self.state_dict(keep_vars=True) if k not in parameters)
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.checkpoint_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self._plateau is not None:
            checkpoint[PLATEAU_KEY] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before configure_optimizers() on resume; applied there.
        self._plateau_state = checkpoint.get(PLATEAU_KEY)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a (small) checkpoint; frozen parameters may be absent, nothing else may."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            required = self.checkpoint_keys()
            missing = [k for k in result.missing_keys if k in required]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    "checkpoint does not match the model: "
                    f"missing trainable/buffer keys {missing[:10]}, "
                    f"unexpected keys {list(result.unexpected_keys)[:10]}"
                )
        return result
