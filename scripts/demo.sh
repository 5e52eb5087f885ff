#!/usr/bin/env bash
# The main job end to end on the embedded SQLite default (creates/refreshes .venv first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m loramgr.testing.demo "$@"
