# Sourced by scripts/demo.sh and scripts/test.sh, the README's two commands: everything a fresh machine
# needs, installed only when missing.
#   1. Debian packages: PostgreSQL (the registry tests start throwaway clusters), CMake, clang (ASan,
#      UBSan, libFuzzer), cJSON, pkg-config and valgrind for runtime-c/. apt-get when root; otherwise
#      the one command to run is printed and the script stops with exit 2.
#   2. .venv from the project's own files (pyproject.toml, the [dev] extra: torch==2.13.0 CPU, the
#      export and PostgreSQL extras, and onnxruntime-qnn where its wheel exists). Redone only when
#      pyproject.toml changed (a stamp holds its hash). AIMET (aimet-onnx, pinned below) with --no-deps where
#      its wheel exists (x86_64 Linux, glibc >= 2.34): its declared onnx2torch dependency pulls a torchvision
#      that breaks beside torch 2.13.0; the packages it needs at run time are the [aimet] extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

need=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /usr/include/cjson/cJSON.h ] || need+=(libcjson-dev)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "loramgr set-up: missing Debian packages; run this once, then the same command again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    exit 2
  fi
  echo "loramgr set-up: installing Debian packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.loramgr-install-stamp"
AIMET_ONNX="aimet-onnx==2.42.0"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)-${LORAMGR_EXTRAS:-dev}-$AIMET_ONNX"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "loramgr set-up: installing Python packages into .venv"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 \
    | grep -v -e "^WARNING: Location" -e "is ignored: it is neither" || true
  # torch is pinned to the CPU wheel that lies on these machines (torch==2.13.0 in pyproject.toml).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[${LORAMGR_EXTRAS:-dev}]" 2>&1 \
    | grep -v -e "^WARNING: Location" -e "is ignored: it is neither" || true
  if [[ "${LORAMGR_EXTRAS:-dev}" == *dev* || "${LORAMGR_EXTRAS:-dev}" == *aimet* ]] && [ "$(uname -m)" = x86_64 ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$AIMET_ONNX" 2>&1 \
      | grep -v -e "^WARNING: Location" -e "is ignored: it is neither" || true
  fi
  "$VENV/bin/python" -c "import loramgr"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
