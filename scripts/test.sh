#!/usr/bin/env bash
# Run the whole test-suite (creates/refreshes .venv first). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -n "${LORAMGR_TEST_WORKERS:-2}" --durations=15 "$@"
