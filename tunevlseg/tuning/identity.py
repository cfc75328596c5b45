"""What produced a trial's files: the identity a run folder's checkpoints and result carry.

A trial folder is found again by its path alone (a requeued task, a relaunch). Anything else in
that folder (another sweep's trial, a copy from elsewhere, an older definition of the study) must
never pass for this trial's result, so ``fit`` reuses or resumes only files whose identity digest
equals the one computed here. The identity holds everything that shapes the numbers: the study,
the trial's lineage and seed, its parameters, and the resolved model, data and training settings.
It leaves out what does not (data loader workers, the preprocessing cache folder, the search's
budget and sampler), so changing those never discards finished work. Its digest is
:func:`tunevlseg.train.run_folder.identity_digest`, the one ``fit`` checks files against.
"""

from __future__ import annotations

import json
from typing import Any

from tunevlseg.config.grid import StudySpec

IDENTITY_ATTR = "tvls.identity_sha256"

_DATA_KEYS_WITHOUT_EFFECT = ("num_workers", "cache_dir")


def trial_identity(
    spec: StudySpec, params: dict[str, Any], lineage: int, seed: int
) -> dict[str, Any]:
    """The JSON-able record of what one trial (and every re-run of it) computes."""
    attrs = spec.to_attrs()
    data = {k: v for k, v in attrs["data"].items() if k not in _DATA_KEYS_WITHOUT_EFFECT}
    return {
        "study": spec.name,
        "lineage": lineage,
        "seed": seed,
        "params": json.loads(json.dumps(params, sort_keys=True)),
        "model": attrs["model"],
        "learner": spec.learner,
        "learner_options": attrs["learner_options"],
        "model_settings": attrs["model_settings"],
        "dataset": attrs["dataset"],
        "data": data,
        "training": attrs["training"],
        "objective": spec.search.objective,
    }
