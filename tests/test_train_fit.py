"""fit(): learns on synthetic data, keeps checkpoints small, resumes after a kill, never retrains.

Run as a script, this file is the child process of the resume test: it trains until the
epoch-1 checkpoint exists, signals that through a marker file, and waits to be killed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.train.fit import EpochEnd, FitResult, fit
from tunevlseg.train.metrics import SegmentationScores
from tunevlseg.train.module import SegmentationModule
from tunevlseg.train.paths import RunPaths
from tunevlseg.train.settings import FitSettings
from tunevlseg.train.testing import TinySegNet, byte_tokenize

SETTINGS = FitSettings(
    max_epochs=4,
    patience=50,
    batch_size=8,
    effective_batch_size=16,
    lr=1e-2,
    weight_decay=1e-4,
    seed=0,
    accelerator="cpu",
)


def make_model() -> TinySegNet:
    torch.manual_seed(0)  # the "pretrained" frozen stem must be the same in every process
    return TinySegNet(width=8)


def make_datamodule(root: Path) -> SegmentationDataModule:
    return SegmentationDataModule(
        root,
        "medvlsm",
        "p2",
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        tokenize=byte_tokenize,
        batch_size=SETTINGS.batch_size,
        seed=SETTINGS.seed,
    )


class EpochLog:
    """The epochs the hook saw live, and those replayed from a checkpoint on resume."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.replayed: list[int] = []
        self.last: list[int] = []

    def __call__(self, end: EpochEnd) -> None:
        assert {"val_loss", "val_dice", "val_iou"} <= set(end.metrics)
        if end.replayed:
            self.replayed.append(end.epoch)
            return
        assert "train_loss" in end.metrics
        # Per-image validation scores come with every live epoch, and they are the ones the
        # epoch's mean was computed from.
        assert len(end.val_images["dice"]) == len(end.val_images["iou"]) > 0
        mean = sum(end.val_images["dice"]) / len(end.val_images["dice"])
        assert mean == pytest.approx(end.metrics["val_dice"], abs=1e-5)
        self.epochs.append(end.epoch)
        if end.last:
            self.last.append(end.epoch)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(tmp_path_factory.mktemp("fit") / "data", image_size=48)


@pytest.fixture(scope="module")
def uninterrupted(
    data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, FitResult]:
    run_dir = tmp_path_factory.mktemp("run")
    log = EpochLog()
    result = fit(make_model(), make_datamodule(data_root), SETTINGS, run_dir, on_epoch_end=log)
    assert log.epochs == [0, 1, 2, 3]
    assert log.replayed == []
    assert log.last == [3]  # the hook knows which epoch ends training (no pruning there)
    return run_dir, result


def untrained_val_dice(root: Path) -> float:
    model = make_model().eval()
    dm = make_datamodule(root)
    dm.setup("validate")
    scores = SegmentationScores()
    with torch.no_grad():
        for batch in map(dm.normalize, dm.val_dataloader()):
            scores.update(
                model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]),
                batch["masks"],
            )
    return float(scores.compute()["dice"])


def test_fit_learns(data_root: Path, uninterrupted: tuple[Path, FitResult]) -> None:
    run_dir, result = uninterrupted
    before = untrained_val_dice(data_root)
    assert result.val_dice > max(0.7, before + 0.3), (before, result)
    assert result.test_dice > 0.7
    assert 0 < result.val_iou <= result.val_dice
    assert result.epochs_run == 4
    assert result.resumed_from_epoch is None
    assert 0 <= result.best_epoch < 4
    assert json.loads((run_dir / "result.json").read_text()) == result.to_dict()
    assert list((run_dir / "logs").glob("version_*/metrics.csv"))


def test_checkpoints_hold_only_the_trainable_part(uninterrupted: tuple[Path, FitResult]) -> None:
    run_dir, result = uninterrupted
    paths = RunPaths(run_dir)
    for path in (paths.last_checkpoint, paths.best_checkpoint):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert not any(key.startswith("model.stem.") for key in state)
        assert {"model.head.0.weight", "model.head.1.running_mean", "model.head.3.bias"} <= set(
            state
        )
    best = torch.load(paths.best_checkpoint, map_location="cpu", weights_only=False)
    assert best["epoch"] == result.best_epoch
    assert not list(paths.checkpoints_dir.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_finished_run_is_not_trained_again(
    data_root: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    run_dir, result = uninterrupted
    log = EpochLog()
    assert (
        fit(make_model(), make_datamodule(data_root), SETTINGS, run_dir, on_epoch_end=log) == result
    )
    assert log.epochs == []
    # Nothing trained, but every epoch is passed on again (a re-queued trial is a new Optuna
    # trial and needs the whole learning curve).
    assert log.replayed == [0, 1, 2, 3]


def test_interrupted_evaluation_only_evaluates(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    source, result = uninterrupted
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("checkpoints", "trained.json"):  # as if killed before result.json
        src = source / name
        if src.is_dir():
            (run_dir / name).mkdir()
            for f in src.iterdir():
                (run_dir / name / f.name).write_bytes(f.read_bytes())
        else:
            (run_dir / name).write_bytes(src.read_bytes())
    log = EpochLog()
    again = fit(make_model(), make_datamodule(data_root), SETTINGS, run_dir, on_epoch_end=log)
    assert log.epochs == []
    assert log.replayed == [0, 1, 2, 3]
    assert again.test_dice == pytest.approx(result.test_dice, abs=1e-6)
    assert again.epochs_run == 4


def test_resume_after_kill(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "epoch1.done"
    child = subprocess.Popen([sys.executable, __file__, str(data_root), str(run_dir), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "child exited before epoch 1 ended"
            assert time.monotonic() < deadline, "child did not reach epoch 1"
            time.sleep(0.1)
    finally:
        child.kill()  # SIGKILL: no clean-up of any kind
        child.wait()
    paths = RunPaths(run_dir)
    assert torch.load(paths.last_checkpoint, weights_only=False)["epoch"] == 1
    assert not paths.result.exists()

    log = EpochLog()
    result = fit(make_model(), make_datamodule(data_root), SETTINGS, run_dir, on_epoch_end=log)
    # Killed inside epoch 1's hook: the resumed run passes epochs 0 and 1 on again (from the
    # checkpoint), so a caller recording every epoch (an Optuna learning curve) misses none.
    assert log.replayed == [0, 1]
    assert log.epochs == [2, 3]
    assert result.resumed_from_epoch == 2
    assert result.epochs_run == 4
    # Same data order, augmentation, optimizer and scheduler state: same outcome.
    expected = uninterrupted[1]
    assert result.val_dice == pytest.approx(expected.val_dice, abs=1e-5)
    assert result.best_epoch == expected.best_epoch
    stamp = paths.result.stat().st_mtime_ns
    assert fit(make_model(), make_datamodule(data_root), SETTINGS, run_dir) == result
    assert paths.result.stat().st_mtime_ns == stamp


def test_loading_refuses_a_checkpoint_without_trainable_weights() -> None:
    module = SegmentationModule(make_model(), lr=1e-3, weight_decay=0.0)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("model.stem.")}
    module.load_state_dict(state)  # frozen parameters may be absent
    del state["model.head.0.weight"]
    with pytest.raises(RuntimeError, match=r"model\.head\.0\.weight"):
        module.load_state_dict(state)


def test_settings() -> None:
    assert FitSettings(batch_size=6, effective_batch_size=32).accumulate_grad_batches == 6
    assert FitSettings(batch_size=64).accumulate_grad_batches == 1
    with pytest.warns(RuntimeWarning, match="fp32"):
        assert FitSettings(precision="bf16-mixed").resolved_precision(on_cuda=False) == "32-true"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FitSettings(precision="16-mixed").resolved_precision(on_cuda=True) == "16-mixed"
    assert FitSettings(monitor="val_loss").monitor_mode == "min"
    with pytest.raises(ValueError, match="monitor"):
        FitSettings(monitor="train_loss")
    with pytest.raises(ValueError, match="precision"):
        FitSettings(precision="16")  # type: ignore[arg-type]


def _child(data_root: Path, run_dir: Path, marker: Path) -> None:
    def hook(end: EpochEnd) -> None:
        if end.epoch == 1:
            marker.touch()
            time.sleep(600)

    fit(make_model(), make_datamodule(data_root), SETTINGS, run_dir, on_epoch_end=hook)


if __name__ == "__main__":
    _child(*(Path(arg) for arg in sys.argv[1:4]))


def test_batch_size_mismatch_is_refused(data_root: Path, tmp_path: Path) -> None:
    settings = FitSettings(batch_size=4, accelerator="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        fit(make_model(), make_datamodule(data_root), settings, tmp_path)
