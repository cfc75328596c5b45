"""``tvls-train``'s epoch lines: one per epoch on stderr, replayed epochs marked and shown once.

The hook is fed the records ``fit`` passes it (:class:`EpochEnd`), with a fake clock; the
end-to-end run is in ``test_cli_train.py``.
"""

from __future__ import annotations

import io

from rich.console import Console

from tunevlseg.cli.train import EpochLines
from tunevlseg.cluster.running import clock_text
from tunevlseg.train.fit import EpochEnd

LIVE = {"train_loss": 0.61234, "val_dice": 0.4321, "val_iou": 0.3012, "val_loss": 0.7}
REPLAYED = {"val_dice": 0.25, "val_iou": 0.15, "val_loss": 0.9}  # what a checkpoint keeps


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _lines(console: Console) -> list[str]:
    return [line for line in console.export_text().splitlines() if line]


def test_each_epoch_is_one_line_with_its_metrics_and_time() -> None:
    console, clock = Console(width=200, record=True, file=io.StringIO()), Clock()
    hook = EpochLines(console, max_epochs=20, clock=clock)
    clock.now += 12
    hook(EpochEnd(0, dict(LIVE)))
    clock.now += 3725
    hook(EpochEnd(1, {**LIVE, "val_dice": 0.5}))
    first, second = _lines(console)
    assert first.startswith("epoch 1/20: ") and second.startswith("epoch 2/20: ")
    assert "train loss 0.6123" in first and "val dice 0.4321" in first
    assert "iou 0.3012" in first and "loss 0.7000" in first
    assert first.endswith(f"({clock_text(12)})") and second.endswith(f"({clock_text(12 + 3725)})")
    assert "val dice 0.5000" in second


def test_a_resumed_run_lists_its_earlier_epochs_once_marked() -> None:
    console, clock = Console(width=200, record=True, file=io.StringIO()), Clock()
    hook = EpochLines(console, max_epochs=5, clock=clock)
    for epoch in (0, 1):
        hook(EpochEnd(epoch, dict(REPLAYED), replayed=True))
    hook(EpochEnd(1, dict(REPLAYED), replayed=True))  # passed again: not printed twice
    hook(EpochEnd(2, dict(LIVE)))
    lines = _lines(console)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/5", "epoch 2/5", "epoch 3/5"]
    assert all(line.endswith("(from checkpoint)") for line in lines[:2])
    assert "train loss" not in lines[0] and "val dice 0.2500" in lines[0]
    assert not lines[2].endswith("(from checkpoint)") and "train loss 0.6123" in lines[2]
