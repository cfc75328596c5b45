"""A trial's user attributes, written as a few bundles and read back as flat keys.

Every ``set_user_attr`` is one line in a journal file (and one row write in an RDB), replayed by
every process that opens the storage. A worker used to write some twenty attributes per trial;
it now writes a handful: the claim (owner, folder, lineage: one line, so a kill can never leave
an owner stamped without its SLURM array index), the identity digest, and the result. Readers
use :func:`trial_attrs`, which unpacks the bundles into the flat keys they have always read
(``tvls.host``, ``test_dice``, ...), so journals written before the bundles read the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

CLAIM_ATTR = "tvls.claim"
"""Owner (host, pid, SLURM job/array/restart ids), lineage, folder and first start time."""
RESULT_ATTR = "tvls.result"
"""The trial's outcome: test/validation scores, epochs, parameter counts, timings."""
BUNDLES = (CLAIM_ATTR, RESULT_ATTR)


def flat_attrs(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``user_attrs`` with each bundle's keys in place of the bundle."""
    flat = {key: value for key, value in user_attrs.items() if key not in BUNDLES}
    for bundle in BUNDLES:
        values = user_attrs.get(bundle)
        if isinstance(values, Mapping):
            flat.update(values)
    return flat


def trial_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's user attributes as flat keys (see the module notes)."""
    return flat_attrs(trial.user_attrs)
