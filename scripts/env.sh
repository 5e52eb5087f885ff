# Sourced by scripts/demo.sh and scripts/test.sh: create or refresh .venv from the project's own
# files. The install is redone only when pyproject.toml changed (a stamp holds its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.loramgr-install-stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)-${LORAMGR_EXTRAS:-dev}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  # torch is pinned to the CPU wheel that lies on these machines (torch==2.13.0 in pyproject.toml).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[${LORAMGR_EXTRAS:-dev}]" 2>&1 \
    | grep -v -e "^WARNING: Location" -e "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import loramgr" 
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
