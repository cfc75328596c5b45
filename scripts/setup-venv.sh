#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install tunevlseg into it.
# torch is installed first from the pinned CPU wheel: a plain `torch` requirement would pull a
# multi-GB CUDA build. Re-running is cheap: a stamp records what was installed. Each step says
# what it installs (on stderr) before pip, which runs quietly, starts.
# Every other package is held at the version in scripts/constraints.txt (a tested set): a fresh
# clone then gets the environment CI and the golden run (tests/golden) were checked in, instead
# of whatever was released since (opencv 5.0.0.93 -> 5.1.0.95 alone moved the golden values).
# TVLS_CONSTRAINTS=none installs the newest releases instead (to try an upgrade).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TVLS_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TVLS_TORCH_SPEC:-torch==2.13.0}
EXTRAS=${1:-test}

say() { echo "setup: $*" >&2; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tunevlseg needs Python >= 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV (first use; the steps below take a few minutes)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.tvls-installed"
CONSTRAINTS=${TVLS_CONSTRAINTS:-scripts/constraints.txt}
pins=()
[ "$CONSTRAINTS" != none ] && pins=(--constraint "$CONSTRAINTS")
want="$(cat pyproject.toml "${pins[@]:1}" | sha256sum | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "upgrading pip in $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  say "installing PyTorch, CPU build ($TORCH_SPEC; a large download)"
  "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
  say "installing tunevlseg and its dependencies (editable, extras [$EXTRAS]; versions: ${CONSTRAINTS})"
  "$VENV/bin/python" -m pip install --quiet "${pins[@]}" -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
  say "done: $VENV is ready"
fi
