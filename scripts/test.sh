#!/usr/bin/env bash
# Run the checks and the whole test-suite (creates/refreshes .venv first). Extra arguments go to pytest.
# Lint, format and types come first and fail the run on any finding (configured in pyproject.toml).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
echo "ruff check";  "$VENV/bin/ruff" check .
echo "ruff format"; "$VENV/bin/ruff" format --check .
echo "mypy";        "$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest -n "${LORAMGR_TEST_WORKERS:-2}" --durations=15 "$@"
