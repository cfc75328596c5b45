"""The two weight-touching newcomers resume like the others: a fit stopped after an epoch's
checkpoint and run again ends exactly where the uninterrupted fit ends.

``hclip`` keeps its learnable blocks in the learner while the frozen weights read them through
a parametrization, and ``vlpt`` has an adapter and a consensus block beside its prompts; a resume
that restored the prompts but not those (or restored them into a model built differently)
would end elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.models.clipseg import build_prompted_clipseg
from tunevlseg.models.tiny import write_tiny_clipseg
from tunevlseg.train.fit import EpochEnd, FitResult, fit
from tunevlseg.train.settings import FitSettings

SIZE = 32
SETTINGS = FitSettings(
    max_epochs=3,
    patience=50,
    batch_size=4,
    effective_batch_size=4,
    lr=5e-3,
    weight_decay=1e-4,
    seed=0,
    accelerator="cpu",
)
LEARNERS = {
    "hclip": {"q": 32, "dcrc": True},
    "vlpt": {"prompt_depth": 2, "n_ctx_vision": 4, "text_adapter": True, "consensus": True},
}


class Preempted(Exception):
    """Stands in for a pre-emption right after an epoch's checkpoint."""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("resume-new-learners")
    model = write_tiny_clipseg(base / "clipseg-tiny", image_size=SIZE)
    data = write_synthetic_medvlsm(base / "data", n_train=8, n_val=4, n_test=4, image_size=SIZE)
    return model, data


def _fit(
    assets: tuple[Path, Path], learner: str, run_dir: Path, stop_after: int | None
) -> FitResult:
    model_dir, data = assets
    torch.manual_seed(0)
    model = build_prompted_clipseg(str(model_dir), learner, dict(LEARNERS[learner]))
    datamodule = SegmentationDataModule(
        data,
        "medvlsm",
        "p1",
        image_size=SIZE,
        mean=model.image_mean,
        std=model.image_std,
        tokenize=model.tokenize,
        batch_size=SETTINGS.batch_size,
        seed=SETTINGS.seed,
    )

    def stop(end: EpochEnd) -> None:
        if not end.replayed and end.epoch == stop_after:
            raise Preempted(f"after epoch {end.epoch}")

    return fit(model, datamodule, SETTINGS, run_dir, on_epoch_end=stop)


def _trainable(run_dir: Path) -> dict[str, Any]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return checkpoint["state_dict"]


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_a_stopped_fit_resumes_to_the_uninterrupted_result(
    assets: tuple[Path, Path], learner: str, tmp_path: Path
) -> None:
    whole = _fit(assets, learner, tmp_path / "whole", stop_after=None)
    with pytest.raises(Preempted):
        _fit(assets, learner, tmp_path / "stopped", stop_after=0)
    resumed = _fit(assets, learner, tmp_path / "stopped", stop_after=None)

    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == whole.epochs_run == 3
    assert resumed.test_dice == whole.test_dice and resumed.val_dice == whole.val_dice
    before, after = _trainable(tmp_path / "whole"), _trainable(tmp_path / "stopped")
    assert before.keys() == after.keys()
    assert any(".learner." in f".{key}" for key in before)
    for key in before:
        assert torch.equal(before[key], after[key]), key
