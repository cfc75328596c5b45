"""The sweep's manifest: what each launch planned and submitted, kept in the output folder.

It lets a later launch or ``tvls-status`` map SLURM array tasks back to (study, trial) without
asking anything of the login node's memory: nothing keeps running after ``tvls-launch`` returns.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunevlseg.cluster.slurm import task_key


@dataclass
class Manifest:
    experiment: str
    experiment_sha256: str
    sweep: str
    storage: str
    plan_sha256: str
    studies: int
    trials: int
    launches: list[dict[str, Any]] = field(default_factory=list)

    def record_launch(
        self,
        mode: str,
        arrays: list[tuple[str, list[tuple[str, int]]]],
        collector_job_id: str | None = None,
        local_tasks: list[tuple[str, int]] | None = None,
        proxy_job_id: str | None = None,
    ) -> None:
        """``proxy_job_id``: the storage proxy job the launch's tasks use (started or reused)."""
        self.launches.append(
            {
                "at": time.time(),
                "mode": mode,
                "plan_sha256": self.plan_sha256,
                "arrays": [
                    {"job_id": job_id, "tasks": [list(t) for t in tasks]}
                    for job_id, tasks in arrays
                ],
                "collector_job_id": collector_job_id,
                "local_tasks": [list(t) for t in local_tasks or []],
                **({"proxy_job_id": proxy_job_id} if proxy_job_id else {}),
            }
        )

    def proxy_job_ids(self) -> list[str]:
        """The storage proxy jobs of the launches, oldest first, each once."""
        ids: list[str] = []
        for launch in self.launches:
            job_id = launch.get("proxy_job_id")
            if job_id and str(job_id) not in ids:
                ids.append(str(job_id))
        return ids

    def array_job_ids(self) -> list[str]:
        return [a["job_id"] for launch in self.launches for a in launch["arrays"]]

    def task_index(self) -> dict[str, tuple[str, int]]:
        """``"<job>_<index>"`` -> (study, trial number) for every array task ever submitted."""
        index: dict[str, tuple[str, int]] = {}
        for launch in self.launches:
            for array in launch["arrays"]:
                for position, (study, number) in enumerate(array["tasks"]):
                    index[task_key(array["job_id"], position)] = (study, int(number))
        return index

    @property
    def last_collector_job_id(self) -> str | None:
        for launch in reversed(self.launches):
            if launch.get("collector_job_id"):
                return str(launch["collector_job_id"])
        return None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_manifest(path: Path) -> Manifest | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Manifest(**{k: data[k] for k in Manifest.__dataclass_fields__ if k in data})


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Atomic: a temporary file in the same folder, then a rename. Callers hold the sweep's
    launch lock (:mod:`tunevlseg.cluster.lock`) from reading the manifest to writing it, so no
    launch's entry is lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as file:
        file.write(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        file.flush()
        os.fsync(file.fileno())  # renamed only once its bytes are on disk
    os.replace(tmp, path)
