"""Rules that span several keys of an experiment file, each reported at the key to change."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tunevlseg.catalog import LEARNERS, MAX_PROMPT_DEPTH, MODELS, PromptLayers, is_viable
from tunevlseg.config.schema import (
    UPSAMPLER_INPUT_MODELS,
    DataSettings,
    ExperimentSpec,
    LearnerEntry,
    ModelEntry,
    ModelSettings,
    TrainingSettings,
)
from tunevlseg.config.spaces import (
    ON_REQUEST,
    PAPER_SPACES,
    SPACE_AXIS,
    ParamSpace,
    SpaceError,
    apply_override,
    resolve_space,
    searchable,
)
from tunevlseg.tuning.storage import StorageURLError, parse_storage_url

GRID_SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelSettings,
    "data": DataSettings,
    "training": TrainingSettings,
}
"""Blocks whose keys may be grid axes: ``<block>.<key>``."""

Finding = tuple[tuple[str | int, ...], str]


def check_experiment(spec: ExperimentSpec, base_dir: Path | None = None) -> Iterator[Finding]:
    """Yield ``(key path, message)`` for every cross-key problem; ``base_dir`` is the experiment
    file's folder, against which relative paths (a plain journal path) are read."""
    yield from _check_unique(spec)
    yield from _check_spaces(spec)
    yield from _check_prompt_depth(spec)
    yield from _check_grid(spec)
    yield from _check_patience(spec)
    yield from _check_viable(spec)
    yield from _check_learner_datasets(spec)
    yield from _check_pruner(spec)
    yield from _check_upsampler_input(spec)
    yield from _check_unseen_classes(spec)
    yield from _check_storage(spec, base_dir)


def _check_storage(spec: ExperimentSpec, base_dir: Path | None) -> Iterator[Finding]:
    """The URL's form; a storage proxy or a pooler only in front of ``postgresql://``."""
    scheme = None
    if spec.storage is not None:
        try:
            scheme = parse_storage_url(spec.storage, base_dir).scheme
        except StorageURLError as error:
            yield ("storage",), str(error)
            return
        if spec.storage.startswith("grpc+file://"):
            yield (
                ("storage",),
                (
                    "grpc+file:// is what the launcher gives the tasks of its own storage proxy; "
                    "write postgresql://... with cluster.storage_proxy, or grpc://host:port for a "
                    "proxy you run"
                ),
            )
            return
    cluster = spec.cluster
    if cluster.storage_proxy is not None and scheme != "postgresql":
        fix = (
            "drop cluster.storage_proxy: the storage already is a proxy you run"
            if scheme == "grpc"
            else "the proxy serves a postgresql:// storage (Optuna's gRPC proxy does not serve "
            "journal files, and SQLite has no row locks)"
        )
        yield (
            ("cluster", "storage_proxy"),
            f"a storage proxy needs storage: postgresql://...; {fix}",
        )
    if cluster.postgres_pooler and scheme != "postgresql":
        yield (
            ("cluster", "postgres_pooler"),
            "a pooler sits in front of PostgreSQL: it needs storage: postgresql://...",
        )


def _check_unique(spec: ExperimentSpec) -> Iterator[Finding]:
    for section, keys in (
        ("models", [m.key for m in spec.models]),
        ("learners", [entry.key for entry in spec.learners]),
        ("datasets", [d.name for d in spec.datasets]),
    ):
        for index, key in enumerate(keys):
            if key in keys[:index]:
                hint = " (give one a `label:`)" if section in ("models", "learners") else ""
                yield (section, index), f"{key!r} is listed twice{hint}"


def _check_spaces(spec: ExperimentSpec) -> Iterator[Finding]:
    learners = [entry.name for entry in spec.learners]
    for name, value in spec.search.space.items():
        owners = [learner for learner in learners if name in searchable(learner)]
        if not owners:
            known = sorted({p for learner in learners for p in searchable(learner)})
            yield (
                ("search", "space", name),
                (f"no listed learner has this parameter (parameters: {', '.join(known)})"),
            )
            continue
        try:
            apply_override(searchable(owners[0])[name], value)
        except SpaceError as error:
            yield ("search", "space", name), str(error)
        for entry in spec.learners:
            if name in entry.space or name not in searchable(entry.name):
                continue
            if missing := _missing_needs(entry, name):
                yield ("search", "space", name), f"{entry.key}: {missing}"
    for index, entry in enumerate(spec.learners):
        for name, value in entry.space.items():
            try:
                resolve_space(entry.name, {name: value})
            except SpaceError as error:
                message = str(error).removeprefix(f"{name}: ")
                yield ("learners", index, "space", name), message
                continue
            if missing := _missing_needs(entry, name):
                yield ("learners", index, "space", name), missing


def _missing_needs(entry: LearnerEntry, name: str) -> str | None:
    """Why searching ``name`` has no effect for ``entry`` (an option it needs is not set)."""
    request = ON_REQUEST.get(entry.name, {}).get(name)
    if request is None:
        return None
    unmet = {k: v for k, v in request.needs.items() if entry.options.get(k) != v}
    if not unmet:
        return None
    needed = ", ".join(
        f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in unmet.items()
    )
    return f"searching {name} needs options {{{needed}}} on this learner (it has no effect without)"


def prompt_depth_problems(
    param: ParamSpace,
    learner: str,
    *,
    model: str = "",
    layers: PromptLayers | None = None,
    source: str = "",
    alone: str = "",
) -> list[str]:
    """What is wrong with the ``prompt_depth`` values ``param`` can draw, with the fix.

    Every depth must be in 1..:data:`~tunevlseg.catalog.MAX_PROMPT_DEPTH` (the learners refuse
    anything else, in every trial that draws it). With the model's ``layers`` known, a range
    that differs from the paper's must also stay within the layers the learner's encoders run:
    deeper depths are clamped, so they would train the same model as the last layer under
    other names. The paper's own range (Table 2, [1, 11]) is accepted on every model, as the
    paper ran it: VPT on CLIPSeg stops at 10 layers and tiny test models at 4, by design.

    Args:
        param: The resolved search space of ``prompt_depth``.
        learner: The learner the space belongs to.
        model: The model family (``MODELS`` key), for its name in the message.
        layers: The model's layer counts, if known.
        source: Where the counts come from (a hub id, a config.json path), for the message.
        alone: Added to a message about the model's layers: where to narrow the range for
            this learner only, when it comes from a range shared by several learners.

    Returns:
        Zero, one or two messages (a bound too low, a bound too high).
    """
    if param.is_fixed:
        low = high = int(param.fixed)
        low_text, high_text, bound = f"{low}", f"{high}", "a value"
    elif param.kind == "choice":
        low, high = int(min(param.choices)), int(max(param.choices))
        low_text, high_text, bound = f"choice {low}", f"choice {high}", "choices"
    else:
        low, high = int(param.low or 0), int(param.high or 0)
        low_text, high_text, bound = f"low={low}", f"high={high}", "high"
    problems = []
    if low < 1:
        low_bound = "low" if bound == "high" else bound
        problems.append(
            f"{low_text} is below 1, the shallowest depth (prompts at the input of the first "
            f"layer); use {low_bound} >= 1"
        )
    limit = MAX_PROMPT_DEPTH
    reason = f"{MAX_PROMPT_DEPTH}, the deepest prompt_depth a learner takes"
    hint = ""
    if layers is not None and param != PAPER_SPACES[learner]["prompt_depth"]:
        reach, encoder = layers.reach(learner)
        if 0 < reach < limit:
            title = MODELS[model].title or model
            limit, hint = reach, alone and f" ({alone})"
            reason = f"the {reach} layers {title}'s {encoder} prompts can reach ({source})"
    if low > limit and bound == "high":
        problems.append(
            f"the whole range [{low}, {high}] exceeds {reason}; use a range within [1, {limit}]"
            + hint
        )
    elif high > limit:
        problems.append(f"{high_text} exceeds {reason}; use {bound} <= {limit}{hint}")
    return problems


def catalogued_layers(model: ModelEntry) -> tuple[PromptLayers | None, str]:
    """The layer counts of a model known without its files, and where they come from.

    Synthetic models are written by the catalogue's tiny writer at launch; hub ids and the
    family's default are listed in the catalogue. Any other model (a folder) is read from its
    ``config.json`` by the launch's preflight (:mod:`tunevlseg.assets`).
    """
    info = MODELS[model.name]
    if model.synthetic:
        return info.tiny_layers, f"tiny synthetic model {model.pretrained}"
    pretrained = model.resolved_pretrained
    if model.pretrained is not None and pretrained.startswith((".", "/", "~")):
        return None, ""
    layers = info.known_layers_of(pretrained)
    return (layers, pretrained) if layers is not None else (None, "")


def _check_prompt_depth(spec: ExperimentSpec) -> Iterator[Finding]:
    """Depths no trial can use, at the key that set them (a learner's space, else the shared)."""
    shared = spec.search.space.get("prompt_depth")
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for index, entry in enumerate(spec.learners):
        own = entry.space.get("prompt_depth")
        if "prompt_depth" not in PAPER_SPACES[entry.name] or (own is None and shared is None):
            continue  # the paper's range, or no depth at all
        overrides = [{"prompt_depth": value} for value in (shared, own) if value is not None]
        try:
            param = resolve_space(entry.name, *overrides)["prompt_depth"]
        except SpaceError:
            continue  # reported by _check_spaces
        loc: tuple[str | int, ...] = (
            ("learners", index, "space", "prompt_depth")
            if own is not None
            else ("search", "space", "prompt_depth")
        )
        for model in spec.models:
            if not is_viable(model.name, entry.name):
                continue
            layers, source = catalogued_layers(model)
            # A shared range may suit the other learners: say where to narrow it for this one.
            alone = (
                ""
                if own is not None
                else (f"for {entry.name} alone: learners[{index}].space.prompt_depth")
            )
            for message in prompt_depth_problems(
                param, entry.name, model=model.name, layers=layers, source=source, alone=alone
            ):
                if (loc, message) not in seen:
                    seen.add((loc, message))
                    yield loc, message


def _is_block(settings_type: type[BaseModel], key: str) -> bool:
    """Whether ``key`` of a settings block is itself a block (e.g. ``training.scheduler``)."""
    annotation = settings_type.model_fields[key].annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _check_space_axis(spec: ExperimentSpec, axis: str, values: list[Any]) -> Iterator[Finding]:
    name = axis.removeprefix(SPACE_AXIS)
    owners = [entry for entry in spec.learners if name in searchable(entry.name)]
    if not owners:
        known = sorted({p for entry in spec.learners for p in searchable(entry.name)})
        yield (
            ("grid", axis),
            f"{name!r} is not a parameter of any learner in this file (parameters: {', '.join(known)})",
        )
        return
    without = [entry.key for entry in spec.learners if entry not in owners]
    if without:
        yield (
            ("grid", axis),
            (
                f"learner(s) {', '.join(without)} have no {name}: every cell would repeat their "
                "studies; put them in a sweep of their own"
            ),
        )
    if not values:
        yield ("grid", axis), "an axis needs at least one value"
    seen: list[Any] = []
    for index, value in enumerate(values):
        if isinstance(value, (dict, list)):
            yield (
                ("grid", axis, index),
                "a grid value must be a single value (it fixes the parameter)",
            )
            continue
        if value in seen:
            yield ("grid", axis, index), f"{value!r} appears twice"
        seen.append(value)
        for entry in owners:
            try:
                resolve_space(entry.name, {name: value})
            except SpaceError as error:
                yield ("grid", axis, index), str(error).removeprefix(f"{name}: ")
                break


def _check_grid(spec: ExperimentSpec) -> Iterator[Finding]:
    for axis, values in spec.grid.items():
        if axis.startswith(SPACE_AXIS):
            yield from _check_space_axis(spec, axis, values)
            continue
        section, _, key = axis.partition(".")
        settings_type = GRID_SECTIONS.get(section)
        block = key.split(".")[0]
        if (
            settings_type is not None
            and block in settings_type.model_fields
            and _is_block(settings_type, block)
        ):
            # Grid cells replace top-level keys of a section with single values: a block, or a
            # key inside one, cannot be varied; saying so beats "unknown" or "single value".
            yield (
                ("grid", axis),
                (
                    f"{section}.{block} is a block of settings; a grid axis varies one single "
                    f"setting of {section}, not a block or a key inside one (set {section}.{block} "
                    "in the file, or use one sweep per value)"
                ),
            )
            continue
        if settings_type is None or key not in settings_type.model_fields:
            valid = [
                f"{s}.{k}"
                for s, t in GRID_SECTIONS.items()
                for k in t.model_fields
                if not _is_block(t, k)
            ]
            close = difflib.get_close_matches(axis, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            yield ("grid", axis), f"not a setting a grid can vary ({hint}valid: {', '.join(valid)})"
            continue
        if not values:
            yield ("grid", axis), "an axis needs at least one value"
        base: BaseModel = getattr(spec, section)
        seen: list[Any] = []
        for index, value in enumerate(values):
            if isinstance(value, (dict, list)):
                yield ("grid", axis, index), "a grid value must be a single value"
                continue
            if value in seen:
                yield ("grid", axis, index), f"{value!r} appears twice"
            seen.append(value)
            try:
                settings_type.model_validate({**base.model_dump(), key: value})
            except ValidationError as error:
                message = error.errors()[0]["msg"].removeprefix("Value error, ")
                yield ("grid", axis, index), message


def _check_patience(spec: ExperimentSpec) -> Iterator[Finding]:
    """``training.patience`` and ``training.early_stopping.patience`` must not disagree.

    ``training.patience`` is the short form the shipped files use; the long form wins when
    both are set (:attr:`TrainingSettings.stopping_patience`). Two different values, or a grid
    over the short form that the long form would override, are refused here, where the file's
    own keys are known (``model_fields_set``), rather than let one silently win.
    """
    training = spec.training
    long_form = training.early_stopping.patience
    if long_form is None:
        return
    if "patience" in training.model_fields_set and training.patience != long_form:
        yield (
            ("training", "early_stopping", "patience"),
            (
                f"{long_form} disagrees with training.patience ({training.patience}), its short "
                "form; set only one of them"
            ),
        )
    if "training.patience" in spec.grid:
        yield (
            ("grid", "training.patience"),
            (
                f"training.early_stopping.patience ({long_form}) is set and takes precedence, so "
                "this axis would change nothing; remove one of them"
            ),
        )


def _check_viable(spec: ExperimentSpec) -> Iterator[Finding]:
    combos = [(m.name, e.name) for m in spec.models for e in spec.learners]
    if not any(is_viable(model, learner) for model, learner in combos):
        yield (
            ("learners",),
            (
                "no listed learner can run on the listed models: visual and multimodal learners "
                f"need a ViT image encoder ({', '.join(n for n, i in MODELS.items() if i.image_encoder == 'vit')})"
            ),
        )
    for index, entry in enumerate(spec.learners):
        if not LEARNERS[entry.name].trains and entry.space:
            yield ("learners", index, "space"), "zeroshot is not trained and has no search space"


def _check_learner_datasets(spec: ExperimentSpec) -> Iterator[Finding]:
    """A learner's ``datasets`` must name data sets of the file, each once, and at least one.

    An unknown name would otherwise drop the learner's studies on that set without a word (a
    typo in ``pascal-voc`` would silently lose a row of the table), and an empty list would
    keep the learner in the file while running it nowhere.
    """
    names = [dataset.name for dataset in spec.datasets]
    valid = ", ".join(names)
    for index, entry in enumerate(spec.learners):
        if entry.datasets is None:
            continue
        if not entry.datasets:
            yield (
                ("learners", index, "datasets"),
                (
                    f"an empty list runs {entry.name} on no data set; name some of the file's data "
                    f"sets ({valid}) or leave `datasets` out to run it on all of them"
                ),
            )
        for position, name in enumerate(entry.datasets):
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                yield (
                    ("learners", index, "datasets", position),
                    (f"unknown data set {name!r}; {hint}the file's data sets: {valid}"),
                )
            elif name in entry.datasets[:position]:
                yield ("learners", index, "datasets", position), f"{name!r} is listed twice"


def _check_pruner(spec: ExperimentSpec) -> Iterator[Finding]:
    """A pruner that could never act, or one that cannot judge the objective, is refused.

    Epochs are the pruners' resource: a first rung (or warm-up) at or beyond ``max_epochs`` of
    some study would let every trial of it run to the end while the file says it prunes, and
    the Wilcoxon test pairs per-image scores, which only the overlap objectives have.
    """
    pruner = spec.search.pruner
    where = ("search", "pruner")
    axis = spec.grid.get("training.max_epochs")
    max_epochs = min(
        [v for v in axis if isinstance(v, int)] if axis else [spec.training.max_epochs],
        default=spec.training.max_epochs,
    )
    first = {
        "asha": lambda: ("min_resource", getattr(pruner, "min_resource", 0)),
        "hyperband": lambda: ("min_resource", getattr(pruner, "min_resource", 0)),
        "median": lambda: ("n_warmup_steps", getattr(pruner, "n_warmup_steps", 0)),
        "wilcoxon": lambda: ("n_warmup_epochs", getattr(pruner, "n_warmup_epochs", 0)),
    }.get(pruner.name)
    if first is not None:
        key, epochs = first()
        if epochs >= max_epochs:
            yield (
                (*where, key),
                (
                    f"{epochs} epochs is not below training.max_epochs ({max_epochs}), so this "
                    f"pruner would never stop a trial; lower {key} or set `pruner: none`"
                ),
            )
    max_resource = getattr(pruner, "max_resource", None)
    if max_resource is not None and max_resource > max_epochs:
        yield (
            (*where, "max_resource"),
            (
                f"{max_resource} epochs is more than training.max_epochs ({max_epochs}); leave it "
                "out to use max_epochs"
            ),
        )
    if pruner.name == "wilcoxon" and spec.search.objective == "val_loss":
        yield (
            (*where, "name"),
            (
                "the Wilcoxon pruner compares per-image validation Dice or IoU, and "
                "search.objective is val_loss; use val_dice or val_iou, or another pruner"
            ),
        )


def _check_upsampler_input(spec: ExperimentSpec) -> Iterator[Finding]:
    """``model.upsampler_input`` chooses among CRIS's feature maps; CLIPSeg has no choice.

    Set to ``decoder`` in a file without a CRIS model, it would change nothing, so it is
    refused. As a grid axis beside a CLIPSeg model, every cell would repeat the CLIPSeg studies
    (they always keep the default, :func:`tunevlseg.config.grid.expand`).
    """
    others = sorted({m.name for m in spec.models if m.name not in UPSAMPLER_INPUT_MODELS})
    takers = ", ".join(UPSAMPLER_INPUT_MODELS)
    default = ModelSettings.model_fields["upsampler_input"].default
    if spec.model.upsampler_input != default and all(
        m.name not in UPSAMPLER_INPUT_MODELS for m in spec.models
    ):
        yield (
            ("model", "upsampler_input"),
            (
                f"applies to {takers} only, and this file's models are {', '.join(others)}, whose "
                f"upsampler always reads the decoder's last feature map; remove the setting"
            ),
        )
    if "model.upsampler_input" in spec.grid and others:
        yield (
            ("grid", "model.upsampler_input"),
            (
                f"applies to {takers} only: every cell would repeat the studies of "
                f"{', '.join(others)}; vary it in a sweep of {takers} models alone"
            ),
        )


def _check_unseen_classes(spec: ExperimentSpec) -> Iterator[Finding]:
    """Unseen classes only on natural sets: a MedVLSM set's samples are prompts describing one
    kind of lesion or organ, with no class names to hold out. Whether each name is a class of
    the data set needs its files (the launch's preflight, :mod:`tunevlseg.assets`)."""
    inherit = [d.name for d in spec.datasets if d.unseen_classes is None and d.format != "natural"]
    if spec.data.unseen_classes and inherit:
        yield (
            ("data", "unseen_classes"),
            (
                f"applies to every data set without its own `unseen_classes:`, and "
                f"{', '.join(inherit)} {'is a MedVLSM set' if len(inherit) == 1 else 'are MedVLSM sets'} "
                "(one prompt per image, no classes to hold out); set `unseen_classes:` on the "
                "natural data sets' entries instead"
            ),
        )
    for index, dataset in enumerate(spec.datasets):
        if dataset.unseen_classes and dataset.format != "natural":
            yield (
                ("datasets", index, "unseen_classes"),
                (
                    f"{dataset.name!r} is a MedVLSM set (one prompt per image, no classes to hold "
                    "out); unseen classes need a natural, multi-class set (format: natural)"
                ),
            )
