#!/usr/bin/env bash
# Quickstart 1: the local demo sweep (synthetic data, tiny CLIPSeg and CRIS, CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test
exec .venv/bin/tvls-launch experiments/demo.yaml --local "$@"
