"""What a run folder holds, and whether it belongs to the run: the rules ``fit`` resumes by.

Every file is written to a temporary file, fsynced and renamed (then the folder is fsynced), so
neither a kill nor a node crash during a save leaves a half-written file under the real name.

A file that is there but cannot be used is never fatal; it is set aside (kept, never read
again) with a :class:`RunFolderWarning` naming it and what happens instead:

* unreadable (torn, or lacking the keys a resume needs): renamed ``<name>.torn``; a torn
  ``last.ckpt`` falls back to ``last-prev.ckpt``, and without a usable one training starts
  from the beginning; a torn ``result.json`` or ``trained.json`` is redone from the other files.
* ``best.ckpt`` unusable while training has ended or is to be resumed: the best weights are
  lost, and a resume could only restore their score, so the run's files go to
  ``superseded-<UTC time>/`` and training starts again from the beginning (same seed, so the
  same run).
* with an identity: a file recording another identity, or none, belongs to another run; all of
  the run's files (result, trained, checkpoints, logs; not the caller's) go to
  ``foreign-<UTC time>/`` and the run starts afresh. :func:`compare_identity` says which keys
  differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunevlseg.train.paths import FOREIGN_PREFIX, SUPERSEDED_PREFIX, TORN_SUFFIX, RunPaths

__all__ = [
    "CKPT_IDENTITY",
    "CKPT_SHA",
    "Identity",
    "Plan",
    "RunFolderWarning",
    "compare_identity",
    "finished_pruned",
    "finished_result",
    "fsync_dir",
    "identity_digest",
    "identity_fields",
    "plan_training",
    "record_pruned",
    "write_json_atomic",
]


class RunFolderWarning(UserWarning):
    """A run folder held a file that could not be used; the message names it and what was done."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (readers never see half a file).

    Synced like the checkpoints, so a node crash cannot leave a renamed but empty file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def identity_digest(identity: Mapping[str, Any]) -> str:
    """sha256 (hex) of ``json.dumps(identity, sort_keys=True)``: equal identities, equal digests.

    Sorted keys make the digest independent of the order the caller built the mapping in, so
    a requeued job (another process) computes the same digest for the same trial.
    """
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def compare_identity(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """The keys in which two identities differ, sorted; nested mappings one level deep, dotted.

    ``old=None`` (a file that recorded no identity) differs in every key of ``new``. Values are
    compared as JSON (a tuple equals a list), as they are recorded. Meant for telling a user why
    a run folder was not reused, e.g. ``["params.lr", "study"]``.
    """
    before, after = _as_json(old or {}), _as_json(new)
    keys: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, _ABSENT), after.get(key, _ABSENT)
        nested = [v for v in (a, b) if v is not _ABSENT]
        if all(isinstance(v, dict) for v in nested):
            a_sub = a if isinstance(a, dict) else {}
            b_sub = b if isinstance(b, dict) else {}
            keys.extend(
                f"{key}.{sub}"
                for sub in sorted(set(a_sub) | set(b_sub))
                if a_sub.get(sub, _ABSENT) != b_sub.get(sub, _ABSENT)
            )
        elif a != b:
            keys.append(key)
    return keys


_ABSENT: Any = object()


def _as_json(value: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(value, sort_keys=True, default=str))
    return data


# -- what a run folder holds -------------------------------------------------------------------

# Where the identity is recorded: in result.json/trained.json, and in every checkpoint.
_JSON_IDENTITY, _JSON_SHA = "identity", "identity_sha256"
CKPT_IDENTITY, CKPT_SHA = "tvls_identity", "tvls_identity_sha256"
_SHOWN_KEYS = 8


@dataclass(frozen=True)
class Identity:
    """The identity a run was asked for: its JSON form (as recorded) and its digest."""

    value: dict[str, Any]
    digest: str

    @classmethod
    def of(cls, identity: Mapping[str, Any] | None) -> Identity | None:
        if identity is None:
            return None
        return cls(_as_json(identity), identity_digest(identity))


def identity_fields(expected: Identity | None) -> dict[str, Any]:
    """What result.json/trained.json record about the identity (nothing without one)."""
    if expected is None:
        return {}
    return {_JSON_IDENTITY: expected.value, _JSON_SHA: expected.digest}


class _ForeignRun(Exception):
    """``source`` records another identity (or none) than the run asked for."""

    def __init__(self, source: Path, recorded: Any) -> None:
        super().__init__(str(source))
        self.source = source
        self.recorded = recorded


def _check_owner(
    source: Path, data: Mapping[str, Any], expected: Identity | None, *, checkpoint: bool
) -> None:
    """Raise :class:`_ForeignRun` unless ``data`` (read from ``source``) is this run's."""
    if expected is None:
        return
    identity_key, sha_key = (CKPT_IDENTITY, CKPT_SHA) if checkpoint else (_JSON_IDENTITY, _JSON_SHA)
    if data.get(sha_key) != expected.digest:
        raise _ForeignRun(source, data.get(identity_key))


def _set_aside_foreign(
    paths: RunPaths, foreign: _ForeignRun, expected: Identity, then: str
) -> None:
    """Keep another run's files for inspection, out of this run's way, and say what differs."""
    aside = _set_aside(paths, FOREIGN_PREFIX)
    recorded = foreign.recorded
    if not isinstance(recorded, Mapping):
        detail = f"{foreign.source.name} records no identity"
    else:
        old = _as_json(recorded)
        keys = compare_identity(old, expected.value)
        shown = [
            f"{key}: {_dotted(old, key)} -> {_dotted(expected.value, key)}"
            for key in keys[:_SHOWN_KEYS]
        ]
        if len(keys) > _SHOWN_KEYS:
            shown.append(f"... {len(keys) - _SHOWN_KEYS} more")
        differences = "; ".join(shown) or "same values, other digest"
        detail = f"{foreign.source.name} records another identity ({differences})"
    _warn(
        f"run folder {paths.run_dir} holds another run's files: {detail}; moved them to "
        f"{aside}; {then}"
    )


def _dotted(identity: Mapping[str, Any], key: str) -> str:
    """The value at a key of :func:`compare_identity` (``a`` or ``a.b``), short, for a message."""
    value: Any = identity
    for part in [key] if key in identity else key.split(".", 1):
        value = value.get(part, _ABSENT) if isinstance(value, Mapping) else _ABSENT
    if value is _ABSENT:
        return "<absent>"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def finished_result(
    paths: RunPaths, expected: Identity | None, then_torn: str
) -> dict[str, Any] | None:
    """This run's ``result.json``; else ``None`` (an unusable or foreign file set aside)."""
    return _own_json(paths, paths.result, expected, then_torn)


def _own_json(
    paths: RunPaths, path: Path, expected: Identity | None, then_torn: str
) -> dict[str, Any] | None:
    """The JSON object in ``path`` if it is this run's; a torn or foreign file is set aside."""
    data = _read_json(path, then_torn)
    if data is None:
        return None
    try:
        _check_owner(path, data, expected, checkpoint=False)
    except _ForeignRun as foreign:
        assert expected is not None
        _set_aside_foreign(paths, foreign, expected, "running it afresh")
        return None
    return data


def finished_pruned(paths: RunPaths, expected: Identity | None) -> dict[int, float] | None:
    """The learning curve (epochs completed -> objective) of this run if a pruner stopped it.

    ``pruned.json`` is written once a pruner has stopped the run; a task killed before it
    could tell the study finds it here and ends the trial the same way, instead of training
    again. A torn or foreign file is set aside like any other.
    """
    data = _own_json(paths, paths.pruned, expected, "the run goes on from its checkpoint")
    if data is None:
        return None
    return {int(step): float(value) for step, value in data.get("curve", {}).items()}


def record_pruned(paths: RunPaths, expected: Identity | None, curve: Mapping[int, float]) -> None:
    """Mark the run as stopped by a pruner, then delete its checkpoints (a pruned run is never
    resumed or tested, so they would only take space), in that order: a kill in between
    leaves a marked run with checkpoints, never an unmarked run without them."""
    record = {"curve": {str(step): value for step, value in sorted(curve.items())}}
    write_json_atomic(paths.pruned, {**record, **identity_fields(expected)})
    shutil.rmtree(paths.checkpoints_dir, ignore_errors=True)


# What a resume needs from a checkpoint; a file without it is as unusable as a torn one.
_CHECKPOINT_KEYS = ("epoch", "global_step", "state_dict", "optimizer_states", "loops", "callbacks")


@dataclass(frozen=True)
class Plan:
    """How to continue a run whose ``result.json`` is absent.

    ``trained`` (``trained.json``, its ``best.ckpt`` checked): only evaluate. Else ``resume``
    (a checked ``last.ckpt`` or ``last-prev.ckpt``, ``resumed_from`` epochs done): continue.
    Neither: train from the start.
    """

    trained: dict[str, Any] | None = None
    resume: Path | None = None
    resumed_from: int | None = None


def plan_training(paths: RunPaths, expected: Identity | None) -> Plan:
    """Decide from the folder's files, setting aside (with a warning) those that cannot be used."""
    try:
        return _plan_own_files(paths, expected)
    except _ForeignRun as foreign:
        assert expected is not None
        _set_aside_foreign(paths, foreign, expected, "training afresh")
        return Plan()


def _plan_own_files(paths: RunPaths, expected: Identity | None) -> Plan:
    """:func:`plan_training`, but raising :class:`_ForeignRun` at the first file of another run.

    The check comes before a checkpoint is chosen or a torn checkpoint renamed, so a folder of
    another run is set aside (by the caller) as it was found, apart from a torn JSON file.
    """
    trained = _read_json(paths.trained, "resuming training from the last checkpoint")
    if trained is not None:
        _check_owner(paths.trained, trained, expected, checkpoint=False)
        best_problem = _best_problem(paths, expected)
        if best_problem is None:
            return Plan(trained=trained)
        _start_over(paths, best_problem)
        return Plan()
    resume: Path | None = None
    resumed_from: int | None = None
    torn: list[tuple[Path, str]] = []
    for path in (paths.last_checkpoint, paths.previous_last_checkpoint):
        if not path.exists():
            continue
        state, problem = _load_checkpoint(path)
        if state is None:
            torn.append((path, problem))
            continue
        _check_owner(path, state, expected, checkpoint=True)
        resume, resumed_from = path, int(state["epoch"]) + 1
        break
    # A resume continues towards the best checkpoint it recorded: without that file it could
    # neither be evaluated nor end as an uninterrupted run would.
    best_problem = _best_problem(paths, expected) if resume is not None else None
    then = f"resuming from {resume}" if resume and not best_problem else "training from the start"
    for path, problem in torn:
        aside = _set_torn(path)
        _warn(f"checkpoint {path} is unreadable ({problem}); moved to {aside.name}; {then}")
    if best_problem is not None:
        _start_over(paths, best_problem)
        return Plan()
    return Plan(resume=resume, resumed_from=resumed_from)


def _best_problem(paths: RunPaths, expected: Identity | None) -> str | None:
    """Why ``best.ckpt`` cannot be used (``"is missing"``, ``"is unreadable (...)"``), or None.

    Raises :class:`_ForeignRun` if it is readable but another run's.
    """
    if not paths.best_checkpoint.is_file():
        return "is missing"
    state, problem = _load_checkpoint(paths.best_checkpoint)
    if state is None:
        return f"is unreadable ({problem})"
    _check_owner(paths.best_checkpoint, state, expected, checkpoint=True)
    return None


def _start_over(paths: RunPaths, best_problem: str) -> None:
    """The best weights are lost: keep the run's files aside and train again from the start.

    Resuming from ``last.ckpt`` instead would restore a best score without its weights: unless a
    later epoch beat it, the run would end without any best checkpoint, and if one did, it would
    not be the run's best. Training again with the same seed reproduces the run (as closely as
    a resume would).
    """
    best = paths.best_checkpoint
    if best.is_file():
        _set_torn(best)
    aside = _set_aside(paths, SUPERSEDED_PREFIX)
    _warn(
        f"checkpoint {best} {best_problem}: the run's best weights are lost, so training from "
        f"the start; its previous files are kept in {aside}"
    )


def _load_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint's content, or ``None`` and why it cannot be used for a resume."""
    import torch  # here, not at the top: the claim path (identity_digest) stays torch-free

    try:
        # Our own, small checkpoint; it also holds plain Python callback state.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torn files fail in many ways: zip, pickle, EOF, OS
        return None, _describe(exc)
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not a checkpoint"
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    return state, ""


def _read_json(path: Path, then: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if absent or unreadable (then set aside, warned)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        aside = _set_torn(path)
        _warn(f"{path} is unreadable ({_describe(exc)}); moved to {aside.name}; {then}")
        return None
    return data


def _set_torn(path: Path) -> Path:
    """Rename an unusable file to ``<name>.torn`` (kept for inspection, never read again)."""
    aside = _free_name(path.with_name(path.name + TORN_SUFFIX))
    os.replace(path, aside)
    return aside


def _set_aside(paths: RunPaths, prefix: str) -> Path:
    """Move the files ``fit`` owns into ``run_dir/<prefix><UTC time>/``; the caller's stay."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = _free_name(paths.aside_dir(prefix, stamp))
    aside.mkdir(parents=True)
    for entry in paths.owned():
        if entry.exists():
            os.replace(entry, aside / entry.name)
    fsync_dir(paths.run_dir)
    return aside


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... if taken: setting aside never overwrites."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def _warn(message: str) -> None:
    warnings.warn(message, RunFolderWarning, stacklevel=3)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every OS/file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
