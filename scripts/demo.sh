#!/usr/bin/env bash
# Quickstart 1: the local demo sweep (synthetic data, tiny CLIPSeg and CRIS, CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
# On first use this creates .venv and installs CPU PyTorch and tunevlseg, one "setup:" line
# per step before each (quiet) pip run; afterwards it checks a stamp and says nothing.
bash scripts/setup-venv.sh test
exec .venv/bin/tvls-launch experiments/demo.yaml --local "$@"
