"""Everything a trial imports, imported once by the local launch's fork server.

A local trial process is forked from a server that has imported this module
(:mod:`tunevlseg.cluster.local`), so torch, lightning, transformers, optuna and tunevlseg's
trial code are already loaded when a trial starts: importing them takes several seconds of one
core, often longer than a demo trial trains. Nothing here runs torch code: a thread pool started
before ``fork`` would not exist in the children (torch's OpenMP pool is created lazily, at the
first parallel operation, and each trial sizes it after the fork, :func:`limit_threads`).

Preloading is only a saving: a module that fails to import here is imported again by the trial
that needs it, which then fails in its own log with its own traceback, as without a server.
"""

from __future__ import annotations

import importlib
import os

from tunevlseg.catalog import LEARNERS, MODELS

TRIAL_MODULES = (
    "torch",
    "lightning",
    "transformers",
    "optuna",
    "tunevlseg.cluster.worker",
    "tunevlseg.tuning.objective",
    "tunevlseg.tuning.pruning",
    "tunevlseg.tuning.pruners",
    "tunevlseg.tuning.identity",
    "tunevlseg.train.fit",
    "tunevlseg.data.datamodule",
)
"""What :func:`tunevlseg.cluster.worker.run_task` imports, directly or lazily."""

IMPORTED_IN_PID = os.getpid()
"""The process that imported this module: the fork server's pid in every trial forked from it
(a trial that imported it itself would find its own pid here)."""


def _module_of(dotted: str) -> str:
    return dotted.partition(":")[0]


def preload() -> list[str]:
    """Import the trial modules and every model builder and learner; returns those that failed."""
    names = [
        *TRIAL_MODULES,
        *(_module_of(info.builder) for info in MODELS.values()),
        *(_module_of(info.implementation) for info in LEARNERS.values()),
    ]
    failed = []
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - see the module's docstring: the trial reports it
            failed.append(name)
    return failed


PRELOAD_FAILED = preload()
