#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install tunevlseg into it.
# torch is installed first from the pinned CPU wheel: a plain `torch` requirement would pull a
# multi-GB CUDA build. Re-running is cheap: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TVLS_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TVLS_TORCH_SPEC:-torch==2.13.0}
EXTRAS=${1:-test}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tunevlseg needs Python >= 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.tvls-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
