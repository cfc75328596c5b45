"""The storage during failures: unreachable at launch (an error before anything is written),
and a brief PostgreSQL outage in the middle of a trial (retried, the result is kept)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.cluster.worker import Claim, TrialTask, claim_trial
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning.retry import with_retries
from tunevlseg.tuning.storage import open_storage, parse_storage_url
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

TEXT = """\
name: {name}
output_dir: out
storage: {storage}
models: [{{name: clipseg, pretrained: ./tiny, synthetic: true}}]
learners: [coop]
datasets: [{{name: d, root: data, synthetic: true}}]
search: {{n_trials: 1}}
"""


def test_unreachable_storage_stops_the_launch_before_any_write(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(TEXT.format(name="down", storage="postgresql://tvls@127.0.0.1:9/none"))
    done = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(path), "--local"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "cannot open the study storage postgresql+psycopg2://tvls@127.0.0.1:9/none" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.yaml"]  # no data, model or output


def _pg(action: str) -> None:
    version = subprocess.run(
        ["bash", "-c", "ls /usr/lib/postgresql | sort -V | tail -1"], capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["pg_ctlcluster", version, "main", action, *(["-m", "fast"] if action == "stop" else [])], check=True)


@pytest.mark.slow
def test_brief_postgres_outage_during_a_trial_is_retried(tmp_path: Path, postgres_url: str) -> None:
    import uuid

    experiment = parse_experiment(
        TEXT.format(name=f"o{uuid.uuid4().hex[:8]}", storage=postgres_url), tmp_path / "o.yaml"
    )
    spec = expand(experiment).studies[0]
    url = parse_storage_url(postgres_url)
    storage = open_storage(url)
    ensure_studies(storage, [spec])
    enqueue_missing(storage, spec)
    claim = claim_trial(storage, TrialTask(url.url, spec.name, 0))
    assert isinstance(claim, Claim)
    _pg("stop")  # the database goes away while the trial "trains"
    restart = threading.Timer(4.0, _pg, args=("start",))
    restart.start()
    try:
        with_retries(lambda: claim.study.tell(claim.trial, 0.75), what="telling the result", first_delay=1.0)
    finally:
        restart.join()
    trial = optuna.load_study(study_name=spec.name, storage=open_storage(url)).trials[0]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.75)
