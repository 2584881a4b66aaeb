#!/usr/bin/env bash
# The test suite: set up .venv (idempotent), compile-check the CUDA sources
# where nvcc exists, then run pytest (CUDA tests skip without a GPU).
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh tests/ops -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
PY=${MMSSM_VENV:-.venv}/bin/python
if ls csrc/pytorch/*.cpp >/dev/null 2>&1; then
  bash tools/compile_check.sh
fi
exec "$PY" -m pytest -q -ra "${@:-tests}"
