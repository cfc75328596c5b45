"""The golden run: fixed short trainings of every learner whose Dice must never drift silently.

Why: the sweep's numbers come from many layers (the experiment file's protocol settings, grid
expansion, the learners, the prompted models, the data pipeline, ``fit``). A change in any of
them that alters results, made on purpose or not, must show up in review rather than months
later as an unexplained table. So one short training per learner, on the tiny random models and
the synthetic data set (both written deterministically from seeds), with fixed parameters and
seeds, is recorded in ``golden_run.json`` and compared by ``tests/test_golden_run.py``.

Regenerate the JSON (only when model or protocol code changes *on purpose*; review the JSON's
diff in the commit, it is the visible record of what changed)::

    .venv/bin/python tests/golden/regenerate.py                 # rewrites tests/golden/golden_run.json
    .venv/bin/python tests/golden/regenerate.py --out /tmp/x.json   # writes elsewhere (e.g. to compare)

Either prints which entries moved against the current file. It takes 10-15 s on 2 cores.

The test imports this file, so both run exactly the same code: the experiment text below is
parsed with the real loader (:func:`tunevlseg.config.loader.parse_experiment`) and expanded with
:func:`tunevlseg.config.grid.expand`, the assets are written by
:func:`tunevlseg.assets.prepare_synthetic`, parameters come from
:func:`tunevlseg.tuning.describe.choose_params` (``lr``, ``weight_decay`` and ``prompt_depth``
are fixed by the file; the learners' other parameters take the documented default point), and
each study trains through :func:`tunevlseg.tuning.objective.run_trial`, as a worker runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GOLDEN_FILE = HERE / "golden_run.json"
FORMAT_VERSION = 1

TOLERANCE = 1e-4
"""Absolute tolerance of the float metrics. On one machine and software stack the run is
bit-identical (measured: spread 0 over 7 runs in 3 processes, two of them at once), so the margin
is not needed there; it keeps the comparison from hinging on the last bit. It is far too small
for another CPU or torch build, where rounding grows through training (see README.md)."""

THREADS = 1
"""torch's intra-op threads during the golden runs. CPU kernels split reductions by thread, so
the thread count changes the last bits of sums, and three epochs of AdamW amplify those bits
(measured: 1, 2 and 4 threads give val Dice apart by up to 0.17 for Shared Attention). Pinned,
a many-core CI machine does the same arithmetic as a 2-core laptop; one thread rather than two
because two 2-thread runs sharing 2 busy cores took 75-160 s each instead of ~10 s."""

CLIPSEG_LEARNERS = (
    "coop",
    "cocoop",
    "vpt",
    "maple",
    "shared_separate",
    "shared_attention",
    "vlpt",
    "hclip",
    "e2e",
    "decoder",
    "zeroshot",
)
CRIS_LEARNERS = ("coop", "cocoop", "hclip")
"""CRIS has a ResNet image encoder: only the text learners, and H-CLIP's text side, apply."""

FLOAT_KEYS = ("val_dice", "test_dice", "val_loss")
"""Compared within :data:`TOLERANCE`. ``val_loss`` is kept beside the Dice scores because it
moves with any change of the logits, also one too small to flip a thresholded pixel."""

EXACT_KEYS = ("epochs_run", "best_epoch", "trainable_params", "params")
"""Compared exactly: a change here is structural (another parameter count, another default
point, another stopping decision), never rounding."""

EXPERIMENT = """\
# The golden run (tests/golden/regenerate.py). Paths are relative to this file's folder; a
# model path starts with ./ because "assets/clipseg-tiny" would read as a hub id (org/name).
name: golden
output_dir: runs
models:
  - {name: clipseg, pretrained: ./assets/clipseg-tiny, image_size: 64, synthetic: true}
  - {name: cris, pretrained: ./assets/cris-tiny, image_size: 64, synthetic: true}
learners: [coop, cocoop, vpt, maple, shared_separate, shared_attention, vlpt,
           {name: hclip, options: {q: 32}}, e2e, decoder, zeroshot]
datasets:
  - {name: synthetic-polyps, category: Non-Radiology, root: assets/synthetic-polyps, synthetic: true}
model: {n_ctx: 4, use_upsampler: true, vision_prompts_in_decoder: true, prompt_suffix: "."}
data:
  prompt_key: p1
  num_workers: 0
  augmentation: {affine_p: 0.5, color_p: 0.5, border_mode: constant}
training:
  max_epochs: 3
  min_epochs: 2
  batch_size: 4
  effective_batch_size: 4
  precision: "32"
  seed: 0
  scheduler: {monitor: val_loss, factor: 0.5, patience: 0}
  early_stopping: {monitor: val_dice, patience: 1}
search:
  n_trials: 1
  objective: val_dice
  space:
    lr: 2.0e-2
    weight_decay: 1.0e-4
    prompt_depth: 2
"""
"""Short (3 epochs of 6 steps, 64 px, batch 4 of 24 training images, ~10 s in all) but it
exercises the protocol: a suffix on every prompt, the paper's augmentation, ``min_epochs``,
early stopping and the LR scheduler on different monitors (scheduler patience 0, so a plateau
halves the LR within the run).

``lr`` is 2e-2, above the paper's range (a fixed value may be): at 5e-3 three short epochs left
every learner near the untrained Dice (0.17-0.25), so the values barely told the learners apart
and a learner whose prompts stopped training would hardly move them. At 2e-2 they spread from
0.14 (CRIS CoCoOp) to 0.53 (end-to-end, MaPLe)."""


def entry_key(model: str, learner: str) -> str:
    """The JSON key of one study: ``<model>/<learner>``."""
    return f"{model}/{learner}"


def wanted_keys() -> list[str]:
    return [entry_key("clipseg", x) for x in CLIPSEG_LEARNERS] + [
        entry_key("cris", x) for x in CRIS_LEARNERS
    ]


def golden_studies(folder: Path) -> list[Any]:
    """The golden experiment parsed and expanded as a launch would, as if it lay in ``folder``.

    The expansion also yields CRIS with the baselines; those are left out to keep the test
    short (CRIS's text path is covered by CoOp and CoCoOp).
    """
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import parse_experiment

    experiment = parse_experiment(EXPERIMENT, folder / "golden.yaml")
    wanted = set(wanted_keys())
    studies = [s for s in expand(experiment).studies if entry_key(s.model.key, s.learner) in wanted]
    found = {entry_key(s.model.key, s.learner) for s in studies}
    if found != wanted:
        raise RuntimeError(f"the golden experiment lacks {sorted(wanted - found)}")
    inside = folder.resolve()
    for spec in studies:
        for path in (spec.model.resolved_pretrained, spec.dataset.root):
            if not Path(path).resolve().is_relative_to(inside):
                raise RuntimeError(f"golden asset {path} lies outside {inside}")
    return studies


def prepare(folder: Path) -> list[Any]:
    """Write the tiny models and the synthetic data set into ``folder``; return the studies."""
    from tunevlseg.assets import prepare_synthetic

    studies = golden_studies(folder)
    prepare_synthetic(studies)
    return studies


def chosen_params(spec: Any) -> dict[str, Any]:
    """The study's fixed point: the file's fixed values, the default point for the rest."""
    from tunevlseg.tuning.describe import choose_params

    return choose_params(spec.param_space, {}, spec.learner).values


@contextmanager
def pinned_threads() -> Iterator[None]:
    """:data:`THREADS` intra-op threads, restored afterwards (the test shares its process).

    Deterministic algorithms are not requested here: ``run_trial`` builds ``FitSettings`` with
    ``deterministic=False`` and Lightning's Trainer then calls
    ``torch.use_deterministic_algorithms(False)`` itself, overriding any earlier request. On a
    CPU the runs are bit-identical without it (measured), which is all the golden run needs.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_golden(folder: Path, studies: Sequence[Any] | None = None) -> dict[str, dict[str, Any]]:
    """Train every golden study once, in this process; return ``<model>/<learner>`` -> record.

    Each trial gets its own run folder under ``folder/runs`` and the worker's seed for a first
    trial (``training.seed + lineage 0``), with the identity a worker would stamp.
    """
    import torch

    from tunevlseg.tuning.identity import trial_identity
    from tunevlseg.tuning.objective import run_trial

    if torch.cuda.is_available():
        raise RuntimeError("the golden values are CPU values; run with CUDA_VISIBLE_DEVICES=''")
    studies = list(studies) if studies is not None else prepare(folder)
    results: dict[str, dict[str, Any]] = {}
    with pinned_threads():
        for spec in studies:
            params = chosen_params(spec)
            seed = spec.training.seed
            run_dir = folder / "runs" / spec.folder
            start = time.monotonic()
            result = run_trial(spec, params, run_dir, seed, trial_identity(spec, params, 0, seed))
            results[entry_key(spec.model.key, spec.learner)] = {
                "val_dice": float(result["val_dice"]),
                "test_dice": float(result["test_dice"]),
                "val_loss": float(result["val_loss"]),
                "epochs_run": int(result["epochs_run"]),
                "best_epoch": int(result["best_epoch"]),
                "trainable_params": int(result["trainable_params"]),
                "params": json.loads(json.dumps(params, sort_keys=True)),
                "seconds": round(time.monotonic() - start, 1),
            }
    return results


def settings() -> dict[str, Any]:
    """What the values depend on besides the code, recorded beside them.

    The test compares this with the file's copy first: an edit of the experiment or of the
    pinning without a regeneration is reported as such, not as every learner "changing".
    """
    return {
        "experiment": EXPERIMENT,
        "clipseg_learners": list(CLIPSEG_LEARNERS),
        "cris_learners": list(CRIS_LEARNERS),
        "torch_threads": THREADS,
        "device": "cpu",
        "seed": "training.seed + lineage 0, as a worker's first trial",
        "tolerance": TOLERANCE,
        "float_keys": list(FLOAT_KEYS),
        "exact_keys": list(EXACT_KEYS),
    }


def environment() -> dict[str, str]:
    """What the arithmetic depends on besides the code: shown when values differ, never compared.

    The float results are exact on one platform but move with the CPU's instruction set, the
    kernel libraries and their versions, so a failure message names any difference here.
    """
    import albumentations
    import cv2
    import lightning
    import numpy as np
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "albumentations": albumentations.__version__,
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def document(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON file's content; ``seconds`` are dropped (timing is not part of the record)."""
    return {
        "format": FORMAT_VERSION,
        "regenerate": ".venv/bin/python tests/golden/regenerate.py",
        "settings": settings(),
        "environment": environment(),
        "results": {
            key: {k: v for k, v in record.items() if k != "seconds"}
            for key, record in sorted(results.items())
        },
    }


def _differs(key: str, old: Any, new: Any, tolerance: float) -> bool:
    if key in FLOAT_KEYS:
        if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
            return old != new
        return not (math.isfinite(old) and math.isfinite(new) and abs(old - new) <= tolerance)
    return bool(old != new)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return repr(value)


def compare(
    old: Mapping[str, Mapping[str, Any]],
    new: Mapping[str, Mapping[str, Any]],
    tolerance: float = TOLERANCE,
) -> list[str]:
    """One line per changed study, naming each moved value as ``key old -> new``.

    Floats differ beyond ``tolerance`` (absolute); the rest must be equal. A study present on one
    side only is reported too (a learner added or dropped is a change of the record).
    """
    lines: list[str] = []
    for study in sorted(set(old) | set(new)):
        if study not in new:
            lines.append(f"{study}: in the golden file but not run any more")
            continue
        if study not in old:
            lines.append(f"{study}: new, not in the golden file")
            continue
        moved = []
        for key in (*FLOAT_KEYS, *EXACT_KEYS):
            before, after = old[study].get(key), new[study].get(key)
            if _differs(key, before, after, tolerance):
                delta = ""
                numbers = isinstance(before, float) and isinstance(after, float)
                if key in FLOAT_KEYS and numbers and math.isfinite(after - before):
                    delta = f" ({after - before:+.2e})"
                moved.append(f"{key} {_show(before)} -> {_show(after)}{delta}")
        if moved:
            lines.append(f"{study}: " + "; ".join(moved))
    return lines


def spread(runs: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, float]:
    """Largest absolute difference of each float key across ``runs`` (for measuring noise)."""
    widest = dict.fromkeys(FLOAT_KEYS, 0.0)
    for study in runs[0]:
        for key in FLOAT_KEYS:
            values = [float(run[study][key]) for run in runs]
            widest[key] = max(widest[key], max(values) - min(values))
    return widest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Rerun the golden trainings and rewrite tests/golden/golden_run.json."
    )
    parser.add_argument("--out", type=Path, default=GOLDEN_FILE, help="where to write the JSON")
    parser.add_argument(
        "--keep", type=Path, help="write the assets and runs here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tvls-golden-") as scratch:
        folder = (args.keep or Path(scratch)).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        results = run_golden(folder)
    for key, record in sorted(results.items()):
        print(
            f"{key:28s} val_dice {record['val_dice']:.6f}  test_dice {record['test_dice']:.6f}"
            f"  epochs {record['epochs_run']}  {record['seconds']:5.1f} s"
        )
    print(f"total {time.monotonic() - start:.1f} s")
    new = document(results)
    if GOLDEN_FILE.is_file():
        old = json.loads(GOLDEN_FILE.read_text())
        changes = compare(old.get("results", {}), new["results"])
        if old.get("settings") != new["settings"]:
            print("the golden settings changed (experiment, learners or pinning)")
        print("\n".join(changes) if changes else f"no change against {GOLDEN_FILE.name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
