"""The paper's protocol settings, each from the experiment file to the place where it acts.

``training.min_epochs``, ``training.scheduler``, ``training.early_stopping``,
``search.objective: val_loss``, ``data.augmentation`` and ``model.prompt_suffix``. Their
validation (file:line errors) is in ``tests/test_config_errors.py``'s BAD_FILES table; here each
one is followed into the trial: the fit settings and identity, the trainer's callbacks, the
optimizer's scheduler, the study's direction and best trial, the albumentations pipeline, and
the tokenizer's input.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import albumentations as A
import cv2
import numpy as np
import optuna
import pytest
import torch
from torch import Tensor, nn

from tunevlseg.collect.results import study_results
from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import ConfigError, load_experiment, parse_experiment
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.dataset import EpochKey
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.data.transforms import Augmentation, build_transform, load_image, load_mask_of
from tunevlseg.models.tiny import write_tiny_clipseg
from tunevlseg.train.fit import EpochEnd, FitResult, fit
from tunevlseg.train.loss import DICE_SMOOTH, dice_bce_loss
from tunevlseg.train.module import PLATEAU_KEY, SegmentationModule
from tunevlseg.train.paths import RunPaths
from tunevlseg.train.settings import FitSettings
from tunevlseg.train.testing import TinySegNet, byte_tokenize
from tunevlseg.tuning.identity import trial_identity
from tunevlseg.tuning.objective import build_datamodule, build_model, fit_settings, run_trial
from tunevlseg.tuning.storage import default_storage, open_storage
from tunevlseg.tuning.studies import ensure_studies, progress

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _spec(tmp_path: Path, extra: str = "", *, model: str = "", root: str = "data") -> StudySpec:
    """The one study of a small experiment file with ``extra`` blocks appended."""
    model = model or "{name: clipseg, pretrained: ./tiny, synthetic: true, image_size: 32}"
    text = textwrap.dedent(
        f"""\
        name: p
        output_dir: out
        models:
          - {model}
        learners: [coop]
        datasets:
          - {{name: d, root: {root}}}
        """
    ) + textwrap.dedent(extra)
    studies = expand(parse_experiment(text, tmp_path / "p.yaml")).studies
    assert len(studies) == 1
    return studies[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_medvlsm(tmp_path_factory.mktemp("protocol") / "data", image_size=48)


def _datamodule(root: Path, batch_size: int = 8, **kwargs: Any) -> SegmentationDataModule:
    return SegmentationDataModule(
        root,
        "medvlsm",
        "p2",
        image_size=32,
        mean=MEAN,
        std=STD,
        tokenize=byte_tokenize,
        batch_size=batch_size,
        **kwargs,
    )


def _settings(**changes: Any) -> FitSettings:
    base: dict[str, Any] = {
        "max_epochs": 4,
        "patience": 50,
        "batch_size": 8,
        "effective_batch_size": 8,
        "lr": 1e-2,
        "weight_decay": 1e-4,
        "seed": 0,
        "accelerator": "cpu",
    }
    return FitSettings(**{**base, **changes})


class ValLosses:
    """The on_epoch_end hook: each training epoch's validation metrics."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def __call__(self, end: EpochEnd) -> None:
        self.metrics.append(end.metrics)

    def values(self, key: str) -> list[float]:
        return [m[key] for m in self.metrics]


def _callback_state(checkpoint: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The (state key, state) of the one callback of class ``name`` in a checkpoint."""
    found = [(k, v) for k, v in checkpoint["callbacks"].items() if k.startswith(name + "{")]
    assert len(found) == 1, list(checkpoint["callbacks"])
    return found[0]


def _load(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


# -- from the file to the trial's settings and identity ------------------------------------------


def test_defaults_are_the_behaviour_before_the_settings(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    settings = fit_settings(spec, {}, seed=0)
    before = FitSettings()  # the values the LightningModule always used
    assert (settings.min_epochs, settings.patience) == (0, 10)
    assert (settings.lr_factor, settings.lr_patience) == (before.lr_factor, before.lr_patience)
    assert settings.monitor == settings.resolved_lr_monitor == "val_dice"
    assert settings.resolved_early_stopping_monitor == "val_dice"
    assert spec.search.direction == "maximize"
    assert spec.model_settings.prompt_suffix == ""
    assert settings.dice_smooth == before.dice_smooth == DICE_SMOOTH == 1.0
    augmentation = spec.data.augmentation
    assert Augmentation(augmentation.affine_p, augmentation.color_p, augmentation.border_mode) == (
        Augmentation()
    )
    # Unset monitors follow the objective, whatever it is (as before: everything watched it).
    iou = fit_settings(_spec(tmp_path, "search: {objective: val_iou}\n"), {}, seed=0)
    assert iou.resolved_lr_monitor == iou.resolved_early_stopping_monitor == "val_iou"


PROTOCOL = """\
model: {prompt_suffix: "."}
data:
  augmentation: {affine_p: 0.3, color_p: 0.0, border_mode: replicate}
training:
  max_epochs: 50
  min_epochs: 5
  dice_smooth: 1.0e-5
  scheduler: {monitor: val_loss, factor: 0.2, patience: 4}
  early_stopping: {monitor: val_dice, patience: 7}
search: {objective: val_loss}
"""


def test_each_setting_reaches_the_fit_settings_and_the_identity(tmp_path: Path) -> None:
    spec = _spec(tmp_path, PROTOCOL)
    settings = fit_settings(spec, {"lr": 1e-3}, seed=0)
    assert settings.min_epochs == 5
    assert settings.dice_smooth == 1e-5
    assert settings.patience == 7
    assert (settings.resolved_lr_monitor, settings.lr_factor, settings.lr_patience) == (
        "val_loss",
        0.2,
        4,
    )
    assert settings.resolved_early_stopping_monitor == "val_dice"
    assert (settings.monitor, settings.monitor_mode) == ("val_loss", "min")
    assert spec.search.direction == "minimize"
    # The stored definition round-trips, and a trial's identity holds every setting.
    assert StudySpec.model_validate(spec.to_attrs()) == spec
    identity = trial_identity(spec, {"lr": 1e-3}, lineage=0, seed=0)
    training = identity["training"]
    assert training["min_epochs"] == 5
    assert training["dice_smooth"] == 1e-5
    assert training["scheduler"] == {"monitor": "val_loss", "factor": 0.2, "patience": 4}
    assert training["early_stopping"] == {"monitor": "val_dice", "patience": 7}
    assert identity["data"]["augmentation"] == {
        "affine_p": 0.3,
        "color_p": 0.0,
        "border_mode": "replicate",
    }
    assert identity["model_settings"]["prompt_suffix"] == "."
    assert identity["objective"] == "val_loss"


@pytest.mark.parametrize(
    ("training", "patience"),
    [
        ("training: {patience: 4}\n", 4),
        ("training: {early_stopping: {patience: 6}}\n", 6),
        ("training: {patience: 6, early_stopping: {patience: 6}}\n", 6),  # agreeing: accepted
    ],
)
def test_training_patience_is_the_short_form(tmp_path: Path, training: str, patience: int) -> None:
    spec = _spec(tmp_path, training)
    assert fit_settings(spec, {}, seed=0).patience == patience
    assert StudySpec.model_validate(spec.to_attrs()) == spec  # stored specs need no file rule


# -- where the training settings act ----------------------------------------------------------


class FlatNet(nn.Module):
    """A model whose predictions never change: early stopping sees no gain after epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return pixel_values[:, :1] * 0.0 * self.scale

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": [self.scale], "weight_decay": weight_decay}]


def test_min_epochs_keeps_training_past_early_stopping(data_root: Path, tmp_path: Path) -> None:
    epochs = {}
    for min_epochs in (0, 3):
        settings = _settings(max_epochs=8, patience=1, min_epochs=min_epochs)
        result = fit(FlatNet(), _datamodule(data_root), settings, tmp_path / f"min{min_epochs}")
        epochs[min_epochs] = result.epochs_run
    # Without min_epochs: epoch 0 sets the best, epoch 1 does not improve -> stop after 2.
    assert epochs == {0: 2, 3: 3}


def test_scheduler_settings_configure_the_plateau_scheduler() -> None:
    module = SegmentationModule(
        TinySegNet(width=4),
        lr=1e-3,
        weight_decay=0.0,
        monitor="val_loss",
        lr_factor=0.2,
        lr_patience=4,
    )
    assert module.plateau is None
    optimizer = module.configure_optimizers()
    plateau = module.plateau
    assert plateau is not None and plateau.optimizer is optimizer
    assert (plateau.factor, plateau.patience, plateau.mode) == (0.2, 4, "min")


def test_scheduler_and_early_stopping_watch_their_own_metrics(
    data_root: Path, tmp_path: Path
) -> None:
    """Selection by Dice, LR reduction and early stopping on the loss, in one real fit."""
    torch.manual_seed(0)
    settings = _settings(
        max_epochs=3,
        monitor="val_dice",
        lr_monitor="val_loss",
        lr_factor=0.25,
        lr_patience=1,
        early_stopping_monitor="val_loss",
        patience=5,
    )
    hook = ValLosses()
    fit(TinySegNet(width=8), _datamodule(data_root), settings, tmp_path, on_epoch_end=hook)
    last = _load(RunPaths(tmp_path).last_checkpoint)
    plateau = last[PLATEAU_KEY]
    assert (plateau["factor"], plateau["patience"], plateau["mode"]) == (0.25, 1, "min")
    assert plateau["best"] == pytest.approx(min(hook.values("val_loss")), rel=1e-3)
    key, stopping = _callback_state(last, "EarlyStopping")
    assert "'monitor': 'val_loss'" in key and "'mode': 'min'" in key
    assert stopping["patience"] == 5
    key, _ = _callback_state(last, "ModelCheckpoint")
    assert "'monitor': 'val_dice'" in key and "'mode': 'max'" in key


def test_val_loss_objective_keeps_the_lowest_val_loss_checkpoint(
    data_root: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    hook = ValLosses()
    result = fit(
        TinySegNet(width=8),
        _datamodule(data_root),
        _settings(monitor="val_loss"),
        tmp_path,
        on_epoch_end=hook,
    )
    losses = hook.values("val_loss")
    assert len(losses) == 4
    assert result.best_epoch == int(np.argmin(losses))
    assert result.val_loss == pytest.approx(min(losses), rel=1e-4)
    assert FitResult.from_dict(result.to_dict()).val_loss == result.val_loss
    best = _load(RunPaths(tmp_path).best_checkpoint)
    key, state = _callback_state(best, "ModelCheckpoint")
    assert "'monitor': 'val_loss'" in key and "'mode': 'min'" in key
    assert float(state["best_model_score"]) == pytest.approx(min(losses), rel=1e-6)


def test_a_val_loss_study_is_minimised_by_optuna_progress_and_the_collector(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, "search: {objective: val_loss, n_trials: 3}\n")
    storage = open_storage(default_storage(tmp_path))
    ensure_studies(storage, [spec])
    study = optuna.load_study(study_name=spec.name, storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for value, test_dice in ((0.5, 0.1), (0.2, 0.9), (0.35, 0.5)):
        trial = study.ask()
        trial.set_user_attr("test_dice", test_dice)
        study.tell(trial, value)
    assert progress(storage, spec).best_value == pytest.approx(0.2)
    (result,) = study_results(storage, "p")
    assert (result.best_trial, result.best_value) == (1, pytest.approx(0.2))
    assert result.test_dice == pytest.approx(0.9)


# -- where the data settings act ----------------------------------------------------------------


def _example() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), np.uint8)
    mask[8:30, 10:40] = 1
    return image, mask


def test_zero_probabilities_make_the_train_transform_the_evaluation_one(data_root: Path) -> None:
    image, mask = _example()
    evaluation = build_transform(32, train=False)
    train = build_transform(32, train=True, augmentation=Augmentation(affine_p=0, color_p=0))
    assert [type(t) for t in train.transforms] == [A.Resize]
    expected = evaluation(image=image, mask=mask)
    for seed in range(3):
        train.set_random_seed(seed)
        out = train(image=image, mask=mask)
        np.testing.assert_array_equal(out["image"], expected["image"])
        np.testing.assert_array_equal(out["mask"], expected["mask"])
    # Through the data module: every epoch's training item is the plain resized sample, while
    # the default augmentation changes some of them.
    plain = _datamodule(data_root, augmentation=Augmentation(affine_p=0.0, color_p=0.0))
    default = _datamodule(data_root)
    plain.setup("fit")
    default.setup("fit")
    sample = plain.datasets["train"].samples[0]
    picture = load_image(sample.image)
    target = evaluation(image=picture, mask=load_mask_of(sample.mask, sample.image, picture.shape))[
        "image"
    ]
    changed = 0
    for epoch in range(4):
        item = plain.datasets["train"][EpochKey(epoch, 0)]["pixel_values"]
        np.testing.assert_array_equal(item.permute(1, 2, 0).numpy(), target)
        augmented = default.datasets["train"][EpochKey(epoch, 0)]["pixel_values"]
        changed += not np.array_equal(augmented.permute(1, 2, 0).numpy(), target)
    assert changed > 0


def test_augmentation_settings_reach_the_albumentations_pipeline(
    data_root: Path, tmp_path: Path
) -> None:
    spec = _spec(
        tmp_path,
        "data:\n  augmentation: {affine_p: 1.0, color_p: 0.25, border_mode: replicate}\n",
        root=str(data_root),
    )
    model = SimpleNamespace(image_mean=MEAN, image_std=STD, tokenize=byte_tokenize)
    datamodule = build_datamodule(spec, model, seed=0)
    datamodule.setup("fit")
    steps = {type(t): t for t in datamodule.datasets["train"].transform.transforms}
    assert steps[A.Affine].border_mode == cv2.BORDER_REPLICATE and steps[A.Affine].p == 1.0
    assert steps[A.RandomBrightnessContrast].p == 0.25
    assert [type(t) for t in datamodule.datasets["val"].transform.transforms] == [A.Resize]
    # What the border mode does: a white image stays white under "replicate"; "constant"
    # brings in black corners.
    white, mask = np.full((40, 40, 3), 255, np.uint8), np.ones((40, 40), np.uint8)
    darkest = {}
    for border in ("replicate", "constant"):
        warp = build_transform(
            32,
            train=True,
            augmentation=Augmentation(1.0, 0.0, border),  # type: ignore[arg-type]
        )
        lows = []
        for seed in range(5):
            warp.set_random_seed(seed)
            lows.append(int(warp(image=white, mask=mask)["image"].min()))
        darkest[border] = min(lows)
    assert darkest == {"replicate": 255, "constant": 0}


def test_dice_smoothing_reaches_the_loss_of_every_step() -> None:
    """An empty mask and a faint prediction: smoothing 1 forgives it, the authors' 1e-5 not."""
    logits = torch.full((1, 1, 8, 8), -6.0)  # probabilities of 0.0025, summing to 0.16
    empty = torch.zeros_like(logits)
    forgiving = SegmentationModule(TinySegNet(width=2), lr=1e-3, weight_decay=0.0)
    strict = SegmentationModule(TinySegNet(width=2), lr=1e-3, weight_decay=0.0, dice_smooth=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, empty)
    assert dice_bce_loss(logits, empty, smooth=forgiving.dice_smooth) < 0.2 + 0.2 * bce
    assert dice_bce_loss(logits, empty, smooth=strict.dice_smooth) > 0.99 + 0.2 * bce
    with pytest.raises(ValueError, match="dice_smooth"):
        FitSettings(dice_smooth=0.0)


def test_a_dice_smoothing_of_zero_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: t\noutput_dir: out\nmodels: [clipseg]\nlearners: [coop]\n"
        "datasets: [{name: d, root: d}]\ntraining:\n  dice_smooth: 0\n"
    )
    with pytest.raises(
        ConfigError, match=r"e.yaml:7: training.dice_smooth: Input should be greater than 0"
    ):
        load_experiment(path)


def test_augmentation_refuses_what_the_file_would() -> None:
    with pytest.raises(ValueError, match="affine_p"):
        Augmentation(affine_p=1.5)
    with pytest.raises(ValueError, match="border_mode"):
        Augmentation(border_mode="reflect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        build_transform(32, train=True, augment_p=0.5, augmentation=Augmentation())


# -- where the prompt suffix acts ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clipseg(tmp_path_factory.mktemp("tiny") / "clipseg")


def _clipseg_spec(tmp_path: Path, folder: Path, data_root: Path, extra: str) -> StudySpec:
    model = f"{{name: clipseg, pretrained: {folder}, image_size: 96}}"
    data = "data: {prompt_key: p1, num_workers: 0}\n"  # p1: the class name, "polyp"
    return _spec(tmp_path, data + extra, model=model, root=str(data_root))


@pytest.mark.parametrize("suffix", ["", "."])
def test_prompt_suffix_reaches_the_tokenizer(
    tmp_path: Path, tiny_clipseg: Path, data_root: Path, suffix: str
) -> None:
    extra = f'model: {{prompt_suffix: "{suffix}"}}\n'
    spec = _clipseg_spec(tmp_path, tiny_clipseg, data_root, extra)
    model = build_model(spec, {"prompt_depth": 1})
    datamodule = build_datamodule(spec, model, seed=0)
    datamodule.setup()
    for split in ("train", "val", "test"):
        dataset = datamodule.datasets[split]
        assert dataset[0]["prompt"] == "polyp"  # the data set's prompt is left as read
        loader = getattr(datamodule, f"{split}_dataloader")()
        batch = next(iter(loader))
        n = batch["input_ids"].shape[0]
        expected = model.tokenize(["polyp" + suffix] * n)
        assert torch.equal(batch["input_ids"], expected["input_ids"]), split
        assert torch.equal(batch["attention_mask"], expected["attention_mask"]), split
        if suffix:
            bare = model.tokenize(["polyp"] * n)["input_ids"]
            assert batch["input_ids"].shape != bare.shape or not torch.equal(
                batch["input_ids"], bare
            )


def test_run_trial_with_the_protocol(tmp_path: Path, tiny_clipseg: Path, data_root: Path) -> None:
    """objective.run_trial end to end: what the worker tells Optuna is the best val_loss."""
    extra = textwrap.dedent(
        """\
        model: {prompt_suffix: "."}
        training:
          max_epochs: 2
          min_epochs: 2
          batch_size: 8
          effective_batch_size: 8
          precision: "32"
          scheduler: {factor: 0.2, patience: 0}
          early_stopping: {monitor: val_dice, patience: 1}
        search: {objective: val_loss}
        """
    )
    spec = _clipseg_spec(tmp_path, tiny_clipseg, data_root, extra)
    run_dir = tmp_path / "trial"
    result = run_trial(spec, {"prompt_depth": 1, "lr": 5e-3}, run_dir, seed=0)
    value = float(result[spec.search.objective])  # as cluster.worker.run_task reads it
    assert value == result["val_loss"] > 0
    assert result["epochs_run"] == 2
    last = _load(RunPaths(run_dir).last_checkpoint)
    assert (last[PLATEAU_KEY]["factor"], last[PLATEAU_KEY]["patience"]) == (0.2, 0)
    assert last[PLATEAU_KEY]["mode"] == "min"  # the scheduler follows the objective
    key, _ = _callback_state(last, "EarlyStopping")
    assert "'monitor': 'val_dice'" in key
    key, state = _callback_state(last, "ModelCheckpoint")
    assert "'monitor': 'val_loss'" in key and "'mode': 'min'" in key
    assert float(state["best_model_score"]) == pytest.approx(value, rel=1e-4)
