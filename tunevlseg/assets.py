"""Models and data sets a sweep needs: checked before launch, and made when synthetic.

The checks run before anything is written or submitted, so a deterministic problem fails on the
login node with one message, not 40 minutes later in every array task:

* data roots and annotation files exist (a natural set needs train and val; its test split is
  optional, see :mod:`tunevlseg.data.natural`); each MedVLSM annotation file is a list of
  entries the training reader accepts, and every entry has the study's ``prompt_key`` (the
  reader's own rules, :func:`tunevlseg.data.medvlsm.parse_entries`; a count and a few examples
  per split);
* models exist (a folder, or the Hugging Face cache); a model folder's ``config.json`` is
  readable, and the search range of ``prompt_depth`` fits the layers it declares (catalogued
  and synthetic models are checked when the experiment file is read, in
  :mod:`tunevlseg.config.checks`);
* unseen classes (``data.unseen_classes``) are class folders of their natural set, spelled
  either way, and leave at least one class to tune on (:func:`unseen_class_problems`, located
  at the file's line).

They stay cheap: annotation files and ``config.json`` are read, images are not (a mask of
another size than its image is for ``tvls-data check`` and stops training with that advice).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tunevlseg.catalog import MODELS, load_object
from tunevlseg.config.checks import catalogued_layers, prompt_depth_problems
from tunevlseg.config.grid import StudySpec
from tunevlseg.config.loader import Experiment, located
from tunevlseg.config.schema import DatasetEntry, ModelEntry
from tunevlseg.data.medvlsm import (
    MissingPromptError,
    annotation_path,
    load_annotation,
    parse_entries,
)
from tunevlseg.data.sample import DatasetFormatError
from tunevlseg.data.unseen import class_folders, unseen_problems

SPLITS = ("train", "val", "test")
EXAMPLES = 3
"""Entries shown per problem and split; the count says how many there are."""


def _dataset_problems(dataset: DatasetEntry) -> list[str]:
    root = Path(dataset.root)
    if dataset.synthetic:
        return []
    if not root.is_dir():
        problem = (
            f"data set {dataset.name!r}: root {root} does not exist (edit `root:` in the "
            "experiment file)"
        )
        return [problem]
    if dataset.format == "medvlsm":
        wanted = [root / "anns" / f"{split}.json" for split in SPLITS]
    else:
        # Natural sets need train and val; without annotations/test the official val split is
        # the test split and val is held out from train (data/natural.py, "Split policy"),
        # which is what `tvls-data binarize` writes. A test split, when present, is used.
        splits = SPLITS if (root / "annotations" / "test").is_dir() else ("train", "val")
        wanted = [root / kind / split for split in splits for kind in ("annotations", "images")]
    missing = [str(path) for path in wanted if not path.exists()]
    if missing:
        return [
            f"data set {dataset.name!r} ({dataset.format} layout): missing {', '.join(missing)}"
        ]
    return []


def _annotation_problems(
    dataset: DatasetEntry, prompt_key: str, *, grid_key: bool, read: Callable[[Path, str], Any]
) -> list[str]:
    """What :func:`~tunevlseg.data.medvlsm.read_medvlsm` would refuse in any split, grouped.

    Args:
        dataset: A MedVLSM data set whose root exists.
        prompt_key: The prompt the study reads.
        grid_key: The grid varies ``data.prompt_key`` (named in the fix).
        read: :func:`~tunevlseg.data.medvlsm.load_annotation`, memoised across prompt keys.
    """
    root, label = Path(dataset.root), f"data set {dataset.name!r}"
    problems: list[str] = []
    loaded: dict[str, list[Any]] = {}
    for split in SPLITS:
        try:
            entries = read(root, split)
        except FileNotFoundError:
            continue  # reported by _dataset_problems
        except DatasetFormatError as error:
            problems.append(f"{label}: {error}")
            continue
        if not entries:
            problems.append(f"{label}: {annotation_path(root, split)}: the split is empty")
            continue
        loaded[split] = entries
    setting = "data.prompt_key or the data set's prompt_key"
    if grid_key:
        setting += " (or the grid's data.prompt_key values)"
    common = _prompt_keys_of_every_entry(loaded.values())
    fix = (
        f"set {setting} to one that every entry has: {', '.join(common)}"
        if common
        else f"no prompt key is in every entry (`tvls-data check {root}` lists each split's keys)"
    )
    for split, entries in loaded.items():
        path = annotation_path(root, split)
        _, errors = parse_entries(root, split, entries, prompt_key)
        missing = [e for e in errors if isinstance(e, MissingPromptError)]
        malformed = [e for e in errors if not isinstance(e, MissingPromptError)]
        if len(missing) == 1:
            [lone] = missing
            problems.append(
                f"{label}: {path} entry {lone.index} (img_name {lone.img_name!r}) has no prompt "
                f"{prompt_key!r} (its prompts: {', '.join(lone.available) or 'none'}); {fix}"
            )
        elif missing:
            examples = ", ".join(
                f"entry {e.index} (img_name {e.img_name!r}; its prompts: "
                f"{', '.join(e.available) or 'none'})"
                for e in missing[:EXAMPLES]
            )
            problems.append(
                f"{label}: {path}: {len(missing):,} of {len(entries):,} entries have no prompt "
                f"{prompt_key!r}, e.g. {examples}; {fix}"
            )
        if malformed:
            where = [str(e).removeprefix(f"{path} ") for e in malformed[:EXAMPLES]]
            head = (
                f"{path} {where[0]}"
                if len(malformed) == 1
                else f"{path}: {len(malformed):,} of {len(entries):,} entries are malformed, "
                f"e.g. {'; '.join(where)}"
            )
            problems.append(f"{label}: {head}; `tvls-data check {root}` lists every problem")
    return problems


def _prompt_keys_of_every_entry(splits: Any) -> list[str]:
    """The prompt keys all entries of all splits share (one prompt_key serves every split)."""
    common: set[str] | None = None
    for entries in splits:
        for entry in entries:
            prompts = entry.get("prompts") if isinstance(entry, dict) else None
            keys = set(prompts) if isinstance(prompts, dict) else set()
            common = keys if common is None else common & keys
    return sorted(common or ())


def _local_folder(model: ModelEntry) -> Path | None:
    """The model's folder when ``pretrained`` is a path rather than a hub id."""
    pretrained = model.resolved_pretrained
    path = Path(pretrained).expanduser()
    return path if path.is_absolute() or pretrained.startswith(".") else None


def _model_config(model: ModelEntry) -> tuple[Path | None, dict[str, Any] | None, str]:
    """The model's ``config.json`` (a folder's, or the Hugging Face cache's copy), parsed.

    Returns:
        (path, content, problem): the path is None when the model has no readable place yet
        (its absence is reported by :func:`_model_problems`); the problem is "" or a message.
    """
    folder = _local_folder(model)
    if folder is not None:
        if not folder.is_dir():
            return None, None, ""
        path = folder / "config.json"
        if not path.is_file():
            return (
                None,
                None,
                (
                    f"model {model.key!r}: {folder} has no config.json, so it is not a model "
                    "folder (CLIPSeg: a save_pretrained folder; CRIS: make_cris_folder's)"
                ),
            )
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.resolved_pretrained, "config.json")
        if not isinstance(cached, str):
            return None, None, ""
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return path, None, f"model {model.key!r}: {path} is not valid JSON ({error})"
    if not isinstance(config, dict):
        return path, None, f"model {model.key!r}: {path} is not a JSON object"
    return path, config, ""


def _depth_problems(spec: StudySpec, config_path: Path, config: dict[str, Any]) -> list[str]:
    """The study's ``prompt_depth`` range against the layers its model's config declares."""
    info = MODELS[spec.model.name]
    param = spec.param_space.get("prompt_depth")
    if param is None or info.layers_from_config is None:
        return []
    try:
        layers = info.layers_from_config(config)
    except (TypeError, ValueError, AttributeError):
        return []  # an odd config: loading the model reports it; nothing sure to say here
    where = f"search.space.prompt_depth or learners[{spec.learner}].space.prompt_depth"
    return [
        f"{spec.combination}: {where}: {message}"
        for message in prompt_depth_problems(
            param, spec.learner, model=spec.model.name, layers=layers, source=str(config_path)
        )
    ]


def _model_problems(model: ModelEntry) -> list[str]:
    pretrained = model.resolved_pretrained
    if model.synthetic:
        return []
    path = _local_folder(model)
    if path is not None:
        if not path.is_dir():
            return [f"model {model.key!r}: folder {path} does not exist"]
        return []
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(pretrained, "config.json"), str):
        problem = (
            f"model {model.key!r}: {pretrained!r} is not in the Hugging Face cache "
            "(run `tvls-prefetch <experiment.yaml>` on a login node; compute nodes are offline)"
        )
        return [problem]
    return []


def preflight(studies: Sequence[StudySpec]) -> list[str]:
    """Every problem the studies' data sets and models would meet in every trial, one line each.

    Each data set, model, (data set, prompt key) and (model, learner, search space) is checked
    once, and each annotation file is read once however many studies use it. A data set or
    model that does not exist gets that one message and no further checks.
    """
    problems: list[str] = []
    found: dict[tuple[str, ...], list[str]] = {}
    annotations: dict[tuple[Path, str], Any] = {}

    def read(root: Path, split: str) -> Any:
        key = (root, split)
        if key not in annotations:
            try:
                annotations[key] = load_annotation(root, split)
            except (FileNotFoundError, DatasetFormatError) as error:
                annotations[key] = error
        if isinstance(annotations[key], Exception):
            raise annotations[key]
        return annotations[key]

    def once(key: tuple[str, ...], check: Callable[[], list[str]]) -> list[str]:
        if key not in found:
            found[key] = check()
            problems.extend(found[key])
        return found[key]

    for spec in studies:
        dataset, model = spec.dataset, spec.model
        if not once(("data set", dataset.name), partial(_dataset_problems, dataset)) and (
            dataset.format == "medvlsm" and not dataset.synthetic
        ):
            prompt_key = dataset.prompt_key or spec.data.prompt_key
            once(
                ("prompts", dataset.name, prompt_key),
                partial(
                    _annotation_problems,
                    dataset,
                    prompt_key,
                    grid_key="data.prompt_key" in spec.grid,
                    read=read,
                ),
            )
        if once(("model", model.key), partial(_model_problems, model)) or model.synthetic:
            continue
        if catalogued_layers(model)[0] is not None:
            continue  # checked when the experiment file was read
        config_path, config, problem = _model_config(model)
        once(("config", model.key), partial(_as_list, problem))
        if config_path is not None and config is not None:
            space = json.dumps(spec.space.get("prompt_depth"), sort_keys=True)
            once(
                ("depth", model.key, spec.learner, space),
                partial(_depth_problems, spec, config_path, config),
            )
    return list(dict.fromkeys(problems))


def unseen_class_problems(experiment: Experiment, studies: Sequence[StudySpec]) -> list[str]:
    """Unseen classes that are no class of their data set, or that leave none to tune on, at
    the line of the list that set them (a data set's own ``unseen_classes``, else ``data.``).

    A data set whose class folders are not on disk yet (a synthetic set before the launch
    writes it, a missing root: reported by :func:`preflight`) is checked by the data module.
    """
    problems: list[str] = []
    entries = {entry.name: index for index, entry in enumerate(experiment.spec.datasets)}
    checked: set[tuple[str, tuple[str, ...]]] = set()
    for spec in studies:
        names, dataset = tuple(spec.data.unseen_classes), spec.dataset
        if not names or (dataset.name, names) in checked or dataset.format != "natural":
            continue
        checked.add((dataset.name, names))
        classes = class_folders(Path(dataset.root))
        if not classes:
            continue
        index = entries.get(dataset.name)
        own = index is not None and experiment.spec.datasets[index].unseen_classes is not None
        where: tuple[str | int, ...] = (
            ("datasets", index, "unseen_classes")
            if own and index is not None
            else ("data", "unseen_classes")
        )
        for position, message in unseen_problems(names, classes):
            loc = where if position is None else (*where, position)
            problems.append(located(experiment, loc, f"data set {dataset.name!r}: {message}"))
    return problems


def _as_list(problem: str | None) -> list[str]:
    return [problem] if problem else []


def _has_content(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def prepare_synthetic(studies: Sequence[StudySpec]) -> list[str]:
    """Write the synthetic models and data sets that are absent; return what was written."""
    written: list[str] = []
    seen: set[str] = set()
    for spec in studies:
        if spec.dataset.synthetic and str(spec.dataset.root) not in seen:
            seen.add(str(spec.dataset.root))
            from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural

            writer = (
                write_synthetic_medvlsm
                if spec.dataset.format == "medvlsm"
                else write_synthetic_natural
            )
            existed = _has_content(Path(spec.dataset.root))
            writer(Path(spec.dataset.root), image_size=spec.image_size)  # idempotent
            if not existed:
                written.append(f"synthetic data set {spec.dataset.name} at {spec.dataset.root}")
        pretrained = spec.model.resolved_pretrained
        if spec.model.synthetic and pretrained not in seen:
            seen.add(pretrained)
            if (Path(pretrained) / "config.json").is_file():
                continue  # written before (atomically); skip importing torch for nothing
            write_tiny = load_object(MODELS[spec.model.name].tiny_writer)
            write_tiny(Path(pretrained), image_size=spec.image_size)
            written.append(f"tiny random {spec.model.name} at {pretrained}")
    return written
