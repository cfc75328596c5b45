"""One trial: build the prompted model and the data from a study spec, train, evaluate.

The returned record holds the validation objective (what Optuna optimises) and the test metrics
of the best-by-validation checkpoint (what the result tables report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunevlseg.catalog import LEARNERS, MODELS, load_object
from tunevlseg.config.grid import StudySpec
from tunevlseg.config.schema import UPSAMPLER_INPUT_MODELS
from tunevlseg.config.spaces import TRAINING_PARAMS

if TYPE_CHECKING:
    from tunevlseg.train.fit import EpochEndHook


def learner_params(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """The sampled parameters the learner takes, plus the learner's fixed options."""
    chosen = {k: v for k, v in params.items() if k not in TRAINING_PARAMS}
    return {**spec.learner_options, **chosen}


def model_settings_kwargs(spec: StudySpec) -> dict[str, Any]:
    """The study's model settings as the family's builder takes them.

    ``vision_prompts_in_decoder`` is only passed to families with a ViT image encoder: only
    those take visual prompts (the catalog's viability rule), so the CRIS builder keeps a
    signature without a setting it could only ignore; ``upsampler_input`` likewise only to the
    families that have a choice (``UPSAMPLER_INPUT_MODELS``: CRIS). ``prompt_suffix`` is not a
    builder argument: it acts where prompts are tokenized, in the data module
    (:func:`build_datamodule`), the same way for every model family.
    """
    settings = spec.model_settings
    kwargs: dict[str, Any] = {
        "n_ctx": settings.n_ctx,
        "use_upsampler": settings.use_upsampler,
        "upsampler_padding": settings.upsampler_padding,
    }
    if MODELS[spec.model.name].image_encoder == "vit":
        kwargs["vision_prompts_in_decoder"] = settings.vision_prompts_in_decoder
    if spec.model.name in UPSAMPLER_INPUT_MODELS:
        kwargs["upsampler_input"] = settings.upsampler_input
    return kwargs


def build_model(spec: StudySpec, params: dict[str, Any]) -> Any:
    """The prompted model of a study with a trial's parameters."""
    builder = load_object(MODELS[spec.model.name].builder)
    return builder(
        spec.model.resolved_pretrained,
        spec.learner,
        learner_params(spec, params),
        **model_settings_kwargs(spec),
    )


def build_datamodule(spec: StudySpec, model: Any, seed: int) -> Any:
    """The study's data module: its data set, the model's size/normalisation/tokenizer, the
    protocol's augmentation (``data.augmentation``) and prompt suffix
    (``model.prompt_suffix``), and the validation hold-out of natural sets without a test split
    (``data.val_fraction``; the hold-out uses a fixed data seed, not ``seed``, so every trial of
    the study validates on the same images)."""
    from tunevlseg.data.datamodule import SegmentationDataModule
    from tunevlseg.data.transforms import Augmentation

    augmentation = spec.data.augmentation
    return SegmentationDataModule(
        root=Path(spec.dataset.root),
        format=spec.dataset.format,
        prompt_key=spec.dataset.prompt_key or spec.data.prompt_key,
        image_size=spec.image_size,
        mean=model.image_mean,
        std=model.image_std,
        tokenize=model.tokenize,
        batch_size=spec.training.batch_size,
        num_workers=spec.data.num_workers,
        seed=seed,
        train_fraction=spec.data.train_fraction,
        val_fraction=spec.data.val_fraction,
        cache_dir=spec.data.cache_dir,
        augmentation=Augmentation(
            affine_p=augmentation.affine_p,
            color_p=augmentation.color_p,
            border_mode=augmentation.border_mode,
        ),
        prompt_suffix=spec.model_settings.prompt_suffix,
        unseen_classes=spec.data.unseen_classes,  # train and val leave them out, test keeps them
    )


def fit_settings(spec: StudySpec, params: dict[str, Any], seed: int) -> Any:
    """The trial's :class:`FitSettings`: the study's training block and a trial's parameters.

    The search objective is the monitor of the best checkpoint; the scheduler and early
    stopping watch it too unless ``training.scheduler.monitor`` /
    ``training.early_stopping.monitor`` name another metric.
    """
    import torch

    from tunevlseg.train.settings import FitSettings

    precision = spec.training.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() else "32"
    return FitSettings(
        max_epochs=spec.training.max_epochs,
        min_epochs=spec.training.min_epochs,
        patience=spec.training.stopping_patience,
        batch_size=spec.training.batch_size,
        effective_batch_size=spec.training.effective_batch_size,
        lr=float(params.get("lr", 1e-3)),
        weight_decay=float(params.get("weight_decay", 0.0)),
        precision=precision,
        seed=seed,
        num_workers=spec.data.num_workers,
        monitor=spec.search.objective,
        lr_monitor=spec.training.scheduler.monitor,
        lr_factor=spec.training.scheduler.factor,
        lr_patience=spec.training.scheduler.patience,
        early_stopping_monitor=spec.training.early_stopping.monitor,
        dice_smooth=spec.training.dice_smooth,
    )


def run_trial(
    spec: StudySpec,
    params: dict[str, Any],
    run_dir: Path,
    seed: int,
    identity: dict[str, Any] | None = None,
    on_epoch_end: EpochEndHook | None = None,
) -> dict[str, Any]:
    """Train (or, for zero-shot, only evaluate) one configuration; resumable from ``run_dir``.

    ``identity`` (see :mod:`tunevlseg.tuning.identity`) binds the folder's files to this trial:
    a result or checkpoint written for anything else is set aside, never reused.
    ``on_epoch_end`` is the fit's epoch hook (:class:`tunevlseg.tuning.pruning.EpochReporter`).

    Raises:
        TrialPrunedAt: the hook's pruner stopped the run, now or in an earlier attempt (the
            folder's ``pruned.json``); the folder is marked and its checkpoints are gone.
    """
    import lightning

    from tunevlseg.failpoints import failpoint
    from tunevlseg.train.fit import evaluate, fit
    from tunevlseg.train.paths import RunPaths
    from tunevlseg.train.run_folder import Identity, finished_pruned, record_pruned
    from tunevlseg.tuning.pruning import TrialPrunedAt

    paths, expected = RunPaths(run_dir), Identity.of(identity)
    curve = finished_pruned(paths, expected)
    if curve is not None:
        raise TrialPrunedAt(curve)
    lightning.seed_everything(seed, workers=True, verbose=False)
    model = build_model(spec, params)
    datamodule = build_datamodule(spec, model, seed)
    settings = fit_settings(spec, params, seed)
    failpoint("model-built")
    run_dir.mkdir(parents=True, exist_ok=True)
    if LEARNERS[spec.learner].trains:
        try:
            fitted = fit(
                model, datamodule, settings, run_dir, identity=identity, on_epoch_end=on_epoch_end
            )
        except TrialPrunedAt as pruned:
            record_pruned(paths, expected, pruned.curve)
            failpoint("pruned-marked")
            raise
    else:
        fitted = evaluate(model, datamodule, settings, run_dir, identity=identity)
    result = fitted.to_dict()
    (run_dir / "params.json").write_text(json.dumps({"params": params, "seed": seed}, indent=2))
    trainable, total = model.count_parameters()
    result.update(trainable_params=trainable, total_params=total)
    return result
