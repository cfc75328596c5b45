#!/usr/bin/env bash
# Quickstart 2: the test suite. Tests that need SLURM or PostgreSQL skip when those daemons
# are absent, unless TVLS_REQUIRE_SERVICES=1 (as in CI, where .ci/run starts them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test
exec .venv/bin/python -m pytest "$@"
