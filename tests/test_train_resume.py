"""fit(): resumes from the newest epoch, survives torn checkpoints, and never mixes up runs.

The plateau model keeps the validation objective constant after epoch 0, so these tests see what
happens during a plateau: the epochs where the best checkpoint is no longer rewritten.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.train.fit import (
    EpochEnd,
    FitResult,
    RunFolderWarning,
    compare_identity,
    evaluate,
    fit,
)
from tunevlseg.train.module import PLATEAU_KEY
from tunevlseg.train.paths import RunPaths
from tunevlseg.train.settings import FitSettings
from tunevlseg.train.testing import TinySegNet, byte_tokenize

# Early stopping after 3 epochs without improvement, LR halved after 2: a plateau from epoch 1
# on stops the run after epoch 3 and changes the LR at epoch 2, so a resume that loses any of
# these states ends differently.
SETTINGS = FitSettings(
    max_epochs=6,
    patience=3,
    lr_patience=1,
    batch_size=8,
    effective_batch_size=8,
    lr=1e-2,
    seed=0,
    accelerator="cpu",
)


class PlateauNet(TinySegNet):
    """A TinySegNet whose output ignores its trainable head: validation scores never change.

    The head still gets (zero) gradients and weight decay, so there is an optimizer state and a
    checkpoint with trainable weights, as in a real run.
    """

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        features = torch.relu(self.stem(pixel_values))
        return features.mean(1, keepdim=True) - 0.5 + 0.0 * self.head(features)


def make_model() -> PlateauNet:
    torch.manual_seed(0)  # the frozen stem must be the same for every fit
    return PlateauNet(width=4)


def make_datamodule(root: Path) -> SegmentationDataModule:
    return SegmentationDataModule(
        root,
        "medvlsm",
        "p1",
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        tokenize=byte_tokenize,
        batch_size=SETTINGS.batch_size,
        seed=SETTINGS.seed,
    )


class Preempted(Exception):
    """Stands in for a pre-emption that stops training after an epoch's checkpoint."""


class EpochLog:
    """Records the epochs the hook saw; raises ``Preempted`` after ``stop_after``."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.epochs: list[int] = []
        self.stop_after = stop_after

    def __call__(self, end: EpochEnd) -> None:
        if end.replayed:
            return
        self.epochs.append(end.epoch)
        if end.epoch == self.stop_after:
            raise Preempted(f"stopped after epoch {end.epoch}")


def run(root: Path, run_dir: Path, log: EpochLog | None = None, **kwargs: Any) -> FitResult:
    return fit(make_model(), make_datamodule(root), SETTINGS, run_dir, on_epoch_end=log, **kwargs)


def load(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def callback_state(checkpoint: dict[str, Any], name: str) -> dict[str, Any]:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith(name)]
    return state


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(
        tmp_path_factory.mktemp("resume") / "data", n_train=16, image_size=32
    )


@pytest.fixture(scope="module")
def uninterrupted(
    data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, FitResult]:
    run_dir = tmp_path_factory.mktemp("plateau")
    log = EpochLog()
    result = run(data_root, run_dir, log)
    assert log.epochs == [0, 1, 2, 3]  # early stopping after three epochs without improvement
    assert result.best_epoch == 0
    return run_dir, result


def test_last_checkpoint_is_written_every_epoch_of_a_plateau(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    paths = RunPaths(tmp_path / "run")
    with pytest.raises(Preempted):
        run(data_root, paths.run_dir, EpochLog(stop_after=2))
    last = load(paths.last_checkpoint)
    assert last["epoch"] == 2  # not 0, the last improvement
    assert load(paths.previous_last_checkpoint)["epoch"] == 1
    assert callback_state(last, "EarlyStopping")["wait_count"] == 2
    assert load(paths.best_checkpoint)["epoch"] == 0

    log = EpochLog()
    result = run(data_root, paths.run_dir, log)
    assert log.epochs == [3]
    assert result.resumed_from_epoch == 3
    # Early stopping counter, best score and LR schedule restored: the same end as without
    # the interruption.
    expected_dir, expected = uninterrupted
    assert (result.epochs_run, result.best_epoch) == (expected.epochs_run, expected.best_epoch)
    assert result.val_dice == pytest.approx(expected.val_dice, abs=1e-6)
    resumed_last = load(paths.last_checkpoint)
    expected_last = load(RunPaths(expected_dir).last_checkpoint)
    assert resumed_last["epoch"] == expected_last["epoch"] == 3
    assert resumed_last[PLATEAU_KEY] == expected_last[PLATEAU_KEY]
    lrs = [
        [group["lr"] for group in checkpoint["optimizer_states"][0]["param_groups"]]
        for checkpoint in (resumed_last, expected_last)
    ]
    assert lrs[0] == lrs[1] == [SETTINGS.lr * SETTINGS.lr_factor] * 2
    best_state = callback_state(resumed_last, "ModelCheckpoint")
    assert float(best_state["best_model_score"]) == pytest.approx(expected.val_dice, abs=1e-6)


def test_checkpoint_is_synced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node crash right after the rename must not leave a renamed but empty checkpoint."""
    import os

    from tunevlseg.train import fit as fit_module

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "ckpt" / "last.ckpt"
    fit_module._AtomicCheckpointIO().save_checkpoint({"epoch": 0}, target)

    assert load(target) == {"epoch": 0}
    kinds = [kind for kind, _ in events]
    rename = kinds.index("replace")
    assert events[rename][1].endswith(f"-> {target}")
    tmp_name = events[rename][1].split(" -> ")[0]
    assert ("fsync", tmp_name) in events[:rename]  # the data is on disk before the rename
    assert ("fsync", str(target.parent)) in events[rename:]  # and so is the rename


# -- torn files ----------------------------------------------------------------------------------


def truncate(path: Path) -> bytes:
    """Cut ``path`` to half its bytes, as a crash or a full disk might; returns what is left."""
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


EVERYTHING = ("checkpoints", "logs", "trained.json", "result.json")


def copy_run(source: Path, dest: Path, names: tuple[str, ...]) -> RunPaths:
    """Copy some of a run folder's entries (as if the run had been killed before the others)."""
    dest.mkdir(parents=True)
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name)
        else:
            shutil.copy2(source / name, dest / name)
    return RunPaths(dest)


def test_torn_last_checkpoint_resumes_from_the_previous_one(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    paths = RunPaths(tmp_path / "run")
    with pytest.raises(Preempted):
        run(data_root, paths.run_dir, EpochLog(stop_after=2))
    torn = truncate(paths.last_checkpoint)

    log = EpochLog()
    expected = (
        rf"{re.escape(str(paths.last_checkpoint))} is unreadable .*; "
        rf"resuming from {re.escape(str(paths.previous_last_checkpoint))}"
    )
    with pytest.warns(RunFolderWarning, match=expected):
        result = run(data_root, paths.run_dir, log)
    assert log.epochs == [2, 3]
    assert result.resumed_from_epoch == 2
    assert result.epochs_run == uninterrupted[1].epochs_run
    assert result.val_dice == pytest.approx(uninterrupted[1].val_dice, abs=1e-6)
    kept = paths.checkpoints_dir / "last.ckpt.torn"
    assert kept.read_bytes() == torn  # moved aside, not deleted
    assert load(paths.last_checkpoint)["epoch"] == 3


def test_unusable_checkpoints_train_from_the_start(data_root: Path, tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    with pytest.raises(Preempted):
        run(data_root, paths.run_dir, EpochLog(stop_after=1))
    torch.save({"epoch": 1}, paths.last_checkpoint)  # loads, but is no training state
    paths.previous_last_checkpoint.write_bytes(b"\x00garbage")

    log = EpochLog()
    with pytest.warns(RunFolderWarning) as caught:
        result = run(data_root, paths.run_dir, log)
    messages = [str(w.message) for w in caught]
    for path in (paths.last_checkpoint, paths.previous_last_checkpoint):
        assert any(str(path) in m and "training from the start" in m for m in messages), messages
        assert path.with_name(path.name + ".torn").is_file()
    assert log.epochs == [0, 1, 2, 3]
    assert result.resumed_from_epoch is None


@pytest.mark.parametrize("training_ended", [True, False])
def test_torn_best_checkpoint_trains_again(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult], training_ended: bool
) -> None:
    """Without the best weights the run cannot be evaluated, nor resumed to the same end."""
    source, expected = uninterrupted
    names = ("checkpoints", "trained.json") if training_ended else ("checkpoints",)
    paths = copy_run(source, tmp_path / "run", names)
    truncate(paths.best_checkpoint)

    log = EpochLog()
    unreadable = rf"{re.escape(str(paths.best_checkpoint))} is unreadable"
    with pytest.warns(RunFolderWarning, match=unreadable):
        result = run(data_root, paths.run_dir, log)
    assert log.epochs == [0, 1, 2, 3]
    assert result.resumed_from_epoch is None
    assert result.val_dice == pytest.approx(expected.val_dice, abs=1e-6)
    (aside,) = paths.run_dir.glob("superseded-*")
    assert (aside / "checkpoints" / "best.ckpt.torn").is_file()
    assert (aside / "trained.json").is_file() == training_ended


def test_torn_result_is_evaluated_again(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    source, expected = uninterrupted
    paths = copy_run(source, tmp_path / "run", ("checkpoints", "trained.json", "result.json"))
    truncate(paths.result)
    log = EpochLog()
    with pytest.warns(RunFolderWarning, match=rf"{re.escape(str(paths.result))} is unreadable"):
        result = run(data_root, paths.run_dir, log)
    assert log.epochs == []
    assert result.test_dice == pytest.approx(expected.test_dice, abs=1e-6)
    assert paths.run_dir.joinpath("result.json.torn").is_file()


# -- identity of a run folder ----------------------------------------------------------------------

IDENTITY_A: dict[str, Any] = {
    "study": "kvasir-coop",
    "trial": {"number": 3, "lineage": 0},
    "params": {"lr": 0.01, "prompt": "p1"},
    "settings": {"max_epochs": 6, "patience": 3},
}
IDENTITY_B: dict[str, Any] = {**IDENTITY_A, "params": {"lr": 0.02, "prompt": "p1"}}


def sha256_of(identity: dict[str, Any]) -> str:
    """The digest as specified: sha256 of the sorted-keys JSON (computed here independently)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def finished_a(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FitResult]:
    """A run of identity A, once interrupted (so there is a last-prev.ckpt), then finished."""
    run_dir = tmp_path_factory.mktemp("identity-a")
    with pytest.raises(Preempted):
        run(data_root, run_dir, EpochLog(stop_after=1), identity=IDENTITY_A)
    return run_dir, run(data_root, run_dir, identity=IDENTITY_A)


def test_identity_is_recorded_in_every_file(finished_a: tuple[Path, FitResult]) -> None:
    paths = RunPaths(finished_a[0])
    for path in (paths.result, paths.trained):
        data = json.loads(path.read_text())
        assert data["identity"] == IDENTITY_A
        assert data["identity_sha256"] == sha256_of(IDENTITY_A)
    for path in (paths.last_checkpoint, paths.previous_last_checkpoint, paths.best_checkpoint):
        state = load(path)
        assert state["tvls_identity"] == IDENTITY_A
        assert state["tvls_identity_sha256"] == sha256_of(IDENTITY_A)
    assert FitResult.from_dict(json.loads(paths.result.read_text())) == finished_a[1]


def test_same_identity_reuses_the_run(
    data_root: Path, tmp_path: Path, finished_a: tuple[Path, FitResult]
) -> None:
    source, expected = finished_a
    paths = copy_run(source, tmp_path / "done", EVERYTHING)
    stamp = paths.result.stat().st_mtime_ns
    log = EpochLog()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(data_root, paths.run_dir, log, identity=dict(IDENTITY_A)) == expected
        # Killed before result.json: only evaluated again, from its own best checkpoint.
        evaluated = copy_run(source, tmp_path / "trained", ("checkpoints", "trained.json"))
        again = run(data_root, evaluated.run_dir, log, identity=IDENTITY_A)
    assert log.epochs == []
    assert paths.result.stat().st_mtime_ns == stamp
    assert again.test_dice == pytest.approx(expected.test_dice, abs=1e-6)


def test_result_of_another_identity_is_set_aside(
    data_root: Path, tmp_path: Path, finished_a: tuple[Path, FitResult]
) -> None:
    source, _ = finished_a
    paths = copy_run(source, tmp_path / "run", EVERYTHING)
    (paths.run_dir / "params.json").write_text("{}")  # the caller's file, not fit's
    old_result = paths.result.read_bytes()

    log = EpochLog()
    expected = rf"{re.escape(str(paths.run_dir))}.*params\.lr: 0\.01 -> 0\.02"
    with pytest.warns(RunFolderWarning, match=expected):
        result = run(data_root, paths.run_dir, log, identity=IDENTITY_B)
    assert log.epochs == [0, 1, 2, 3]  # trained, not A's result
    assert result.resumed_from_epoch is None
    assert json.loads(paths.result.read_text())["identity_sha256"] == sha256_of(IDENTITY_B)
    (aside,) = paths.run_dir.glob("foreign-*")
    assert (aside / "result.json").read_bytes() == old_result
    assert (paths.run_dir / "params.json").is_file()


def test_checkpoint_of_another_run_is_not_resumed(
    data_root: Path, tmp_path: Path, finished_a: tuple[Path, FitResult]
) -> None:
    paths = RunPaths(tmp_path / "run")
    paths.checkpoints_dir.mkdir(parents=True)
    # Hand-copied from run A, whose last checkpoint is at epoch 3.
    shutil.copy2(RunPaths(finished_a[0]).last_checkpoint, paths.last_checkpoint)

    log = EpochLog()
    with pytest.warns(RunFolderWarning, match=rf"{re.escape(str(paths.run_dir))}.*params\.lr"):
        result = run(data_root, paths.run_dir, log, identity=IDENTITY_B)
    assert log.epochs == [0, 1, 2, 3]
    assert result.resumed_from_epoch is None
    (aside,) = paths.run_dir.glob("foreign-*")
    assert load(aside / "checkpoints" / "last.ckpt")["tvls_identity"] == IDENTITY_A
    assert load(paths.last_checkpoint)["tvls_identity"] == IDENTITY_B


def test_result_without_identity_is_foreign(
    data_root: Path, tmp_path: Path, uninterrupted: tuple[Path, FitResult]
) -> None:
    names = ("checkpoints", "trained.json", "result.json")
    paths = copy_run(uninterrupted[0], tmp_path / "run", names)
    log = EpochLog()
    with pytest.warns(RunFolderWarning, match=rf"{re.escape(str(paths.run_dir))}.*no identity"):
        run(data_root, paths.run_dir, log, identity=IDENTITY_A)
    assert log.epochs == [0, 1, 2, 3]
    (aside,) = paths.run_dir.glob("foreign-*")
    assert {p.name for p in aside.iterdir()} == {"checkpoints", "trained.json", "result.json"}


def test_evaluate_checks_identity(data_root: Path, tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "zero-shot")

    def zero_shot(identity: dict[str, Any]) -> FitResult:
        return evaluate(
            make_model(), make_datamodule(data_root), SETTINGS, paths.run_dir, identity=identity
        )

    first = zero_shot(IDENTITY_A)
    assert json.loads(paths.result.read_text())["identity_sha256"] == sha256_of(IDENTITY_A)
    stamp = paths.result.stat().st_mtime_ns
    again = zero_shot(IDENTITY_A)
    assert again == first and paths.result.stat().st_mtime_ns == stamp
    with pytest.warns(RunFolderWarning, match=r"params\.lr"):
        zero_shot(IDENTITY_B)
    assert json.loads(paths.result.read_text())["identity"] == IDENTITY_B
    (aside,) = paths.run_dir.glob("foreign-*")
    assert json.loads((aside / "result.json").read_text())["identity"] == IDENTITY_A


def test_compare_identity() -> None:
    old = {"a": 1, "p": {"x": 1, "y": 2}, "gone": 0, "kind": 1}
    new = {"a": 1, "p": {"x": 1, "y": 3, "z": 0}, "new": 5, "kind": {"x": 1}}
    assert compare_identity(old, new) == ["gone", "kind", "new", "p.y", "p.z"]
    assert compare_identity(None, {"a": 1, "p": {"x": 1}}) == ["a", "p.x"]
    assert compare_identity(new, new) == []
