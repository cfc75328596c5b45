"""A task claims its trial without importing torch.

Claiming (read, WAITING -> RUNNING, the claim stamp, sampling, the identity digest) only talks
to the storage. Thousands of tasks, status readers and the storage benchmarks
(``benchmarks/storage_scale.py`` runs 256 such processes on 24 GiB) must not pay torch's import
time and memory for it; a module-level ``import torch`` on the claim path once did exactly that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLAIM = """
import sys
from pathlib import Path

from tunevlseg.cluster.worker import Claim, TrialTask, claim_trial
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning.pruning import EpochReporter
from tunevlseg.tuning.storage import open_storage, parse_storage_url
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

work = Path(sys.argv[1])
url = f"journal://{work}/sweep.journal"
text = (
    f"name: imports\\noutput_dir: out\\nstorage: {url}\\nmodels: [clipseg]\\nlearners: [coop]\\n"
    "datasets: [{name: d, root: d}]\\nsearch: {n_trials: 1, pruner: asha}\\n"
)
spec = expand(parse_experiment(text, work / "e.yaml")).studies[0]
storage = open_storage(parse_storage_url(url))
ensure_studies(storage, [spec])
enqueue_missing(storage, spec)
claim = claim_trial(storage, TrialTask(url, spec.name, 0))
assert isinstance(claim, Claim), claim
EpochReporter(claim.trial, "val_dice").report(1, 0.5)
claim.study.tell(claim.trial, 0.5)
print("torch" in sys.modules)
"""


def test_claiming_and_reporting_a_trial_does_not_import_torch(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLAIM, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False", "the claim path imported torch"
