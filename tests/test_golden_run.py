"""The golden run: every learner's short fixed training gives the Dice recorded in the repository.

Why: a change in a learner, a model wrapper, the data pipeline or the protocol (the experiment
file's training settings as ``expand`` resolves them) that alters results must fail CI, naming
what moved, instead of surfacing later as an unexplained table. The trainings, their settings
and the comparison live in ``tests/golden/regenerate.py`` (this test imports it, so both run the
same code); the recorded values are ``tests/golden/golden_run.json``. When a change is meant,
regenerate with ``.venv/bin/python tests/golden/regenerate.py`` and review the JSON's diff
(``tests/golden/README.md``).

Everything runs in this process (no submitit), ~10-20 s on 2 cores: 10 trainings of 3 epochs on
64 px tiny models, assets written once per module into a pytest temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
pytestmark = pytest.mark.timeout(600)  # ~15 s normally; generous for a loaded CI machine


def _load_golden_module() -> ModuleType:
    """``tests/golden/regenerate.py`` as a module (``tests/golden`` is no package)."""
    name = "tvls_golden_regenerate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GOLDEN_DIR / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


golden = _load_golden_module()


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(golden.GOLDEN_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every golden training, once per module, on assets written into a temporary folder."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the golden values are CPU values (Lightning would pick the GPU)")
    folder = tmp_path_factory.mktemp("golden")
    results: dict[str, dict[str, Any]] = golden.run_golden(folder)
    return results


def _environment_note(recorded: dict[str, Any]) -> str:
    before, now = recorded.get("environment", {}), golden.environment()
    moved = [
        f"{key} {before.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if not moved:
        return "The environment is the one the values were recorded in, so the code changed."
    return (
        "The environment differs from the one the values were recorded in ("
        + "; ".join(moved)
        + "): rounding differences grow through training, so if no code changed, confirm that "
        "and regenerate here."
    )


def test_golden_settings_are_the_recorded_ones(recorded: dict[str, Any]) -> None:
    """An edit of the golden experiment or learner list must come with regenerated values."""
    assert recorded.get("format") == golden.FORMAT_VERSION
    now = golden.settings()
    moved = sorted(
        k for k in set(now) | set(recorded["settings"]) if now.get(k) != recorded["settings"].get(k)
    )
    assert not moved, (
        f"the golden run's settings changed ({', '.join(moved)}) but {golden.GOLDEN_FILE.name} "
        "was not regenerated: run .venv/bin/python tests/golden/regenerate.py and review the diff"
    )
    assert set(recorded["results"]) == set(golden.wanted_keys())


def test_every_learner_gives_its_golden_dice(
    measured: dict[str, dict[str, Any]], recorded: dict[str, Any]
) -> None:
    changes = golden.compare(recorded["results"], measured)
    assert not changes, (
        f"{len(changes)} golden result(s) changed (tolerance {golden.TOLERANCE:g} on "
        f"{', '.join(golden.FLOAT_KEYS)}; exact on {', '.join(golden.EXACT_KEYS)}):\n  "
        + "\n  ".join(changes)
        + f"\n{_environment_note(recorded)}\nIf the change is intended, run "
        ".venv/bin/python tests/golden/regenerate.py and commit the JSON's diff for review."
    )


def test_the_golden_trainings_learned(measured: dict[str, dict[str, Any]]) -> None:
    """The record is worth guarding only if training moved the values off the untrained model.

    Checked against this run's zero-shot Dice, not the file, so it also holds right after a
    regeneration: a learner whose prompts stopped training would sit at the untrained value.
    """
    untrained = measured["clipseg/zeroshot"]["val_dice"]
    for key, record in measured.items():
        if key == "clipseg/zeroshot":
            assert record["epochs_run"] == 0 and record["trainable_params"] == 0
            continue
        assert record["epochs_run"] >= 2 and record["trainable_params"] > 0, key
        if key.startswith("clipseg/"):
            assert record["val_dice"] > untrained + 0.03, (key, record["val_dice"], untrained)


def test_the_failure_message_names_each_changed_learner() -> None:
    """compare() is the CI message: old -> new per value, missing and new studies, tolerance."""
    base = {
        "val_dice": 0.5,
        "test_dice": 0.4,
        "val_loss": 1.0,
        "epochs_run": 3,
        "best_epoch": 2,
        "trainable_params": 10,
        "params": {"lr": 0.02},
    }
    old = {"clipseg/coop": base, "clipseg/vpt": base, "cris/coop": base}
    new = {
        "clipseg/coop": {**base, "val_dice": 0.5 + 0.5 * golden.TOLERANCE},  # within tolerance
        "clipseg/vpt": {**base, "test_dice": 0.41, "trainable_params": 12},
        "clipseg/maple": base,
    }
    lines = golden.compare(old, new)
    assert lines == [
        "clipseg/maple: new, not in the golden file",
        "clipseg/vpt: test_dice 0.400000 -> 0.410000 (+1.00e-02); trainable_params 10 -> 12",
        "cris/coop: in the golden file but not run any more",
    ]
    assert golden.compare(old, old) == []
    nan = {**base, "val_loss": float("nan")}
    assert golden.compare({"a": nan}, {"a": nan}) == ["a: val_loss nan -> nan"]
