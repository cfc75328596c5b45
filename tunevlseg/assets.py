"""Models and data sets a sweep needs: checked before launch, and made when synthetic.

The checks are cheap (file existence, the Hugging Face cache index) and run before anything is
written or submitted, so a typo in a data root fails on the login node, not 40 minutes later in
every array task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunevlseg.catalog import MODELS, load_object
from tunevlseg.config.grid import StudySpec
from tunevlseg.config.schema import DatasetEntry, ModelEntry

SPLITS = ("train", "val", "test")


def _dataset_problems(dataset: DatasetEntry) -> list[str]:
    root = Path(dataset.root)
    if dataset.synthetic:
        return []
    if not root.is_dir():
        return [f"data set {dataset.name!r}: root {root} does not exist (edit `root:` in the experiment file)"]
    if dataset.format == "medvlsm":
        wanted = [root / "anns" / f"{split}.json" for split in SPLITS]
    else:
        wanted = [root / "annotations" / split for split in SPLITS]
    missing = [str(path) for path in wanted if not path.exists()]
    if missing:
        return [f"data set {dataset.name!r} ({dataset.format} layout): missing {', '.join(missing)}"]
    return []


def _model_problems(model: ModelEntry) -> list[str]:
    pretrained = model.resolved_pretrained
    if model.synthetic:
        return []
    path = Path(pretrained).expanduser()
    if path.is_absolute() or pretrained.startswith("."):
        if not path.is_dir():
            return [f"model {model.key!r}: folder {path} does not exist"]
        return []
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(pretrained, "config.json"), str):
        return [
            f"model {model.key!r}: {pretrained!r} is not in the Hugging Face cache "
            "(run `tvls-prefetch <experiment.yaml>` on a login node; compute nodes are offline)"
        ]
    return []


def preflight(studies: Sequence[StudySpec]) -> list[str]:
    """Every missing data set or model the studies name, one line each."""
    problems: list[str] = []
    seen: set[str] = set()
    for spec in studies:
        for key, found in (
            (f"d:{spec.dataset.name}", lambda s=spec: _dataset_problems(s.dataset)),
            (f"m:{spec.model.key}", lambda s=spec: _model_problems(s.model)),
        ):
            if key not in seen:
                seen.add(key)
                problems += found()
    return problems


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

            writer = write_synthetic_medvlsm if spec.dataset.format == "medvlsm" else write_synthetic_natural
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
