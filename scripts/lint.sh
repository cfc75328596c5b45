#!/usr/bin/env bash
# The static checks, configured in pyproject.toml: ruff's lint rules, ruff's formatting (checked,
# never applied here) and mypy over the tunevlseg package. .ci/run runs this before the tests.
# All three run even when one fails, so one run lists every problem; the exit status is 1 if any
# failed. To fix: `.venv/bin/ruff format` and `.venv/bin/ruff check --fix`, then by hand.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test || exit 1

failed=()
step() {
  local name=$1; shift
  echo "lint: $name" >&2
  "$@" || failed+=("$name")
}
step "ruff check" .venv/bin/ruff check
step "ruff format --check" .venv/bin/ruff format --check --output-format concise
step "mypy" .venv/bin/mypy
if [ ${#failed[@]} -gt 0 ]; then
  echo "lint: failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: ok" >&2
