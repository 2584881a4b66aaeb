#!/usr/bin/env bash
# Compile mmssm's CUDA sources for one architecture without a GPU, so that a
# broken kernel source fails here. The built library stays in build/ (it is not
# placed in the package). Skipped, with a message, where nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MMSSM_VENV:-.venv}/bin/python
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "[compile_check] no nvcc under $CUDA_HOME: CUDA sources not compiled"
  exit 0
fi
echo "[compile_check] compiling csrc/ for TORCH_CUDA_ARCH_LIST=${ARCH_LIST:-9.0} with $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
start=$(date +%s)
mkdir -p build/compile_check
log=build/compile_check/build.log
if ! CUDA_HOME=$CUDA_HOME FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" setup.py -q build_ext --build-temp build/compile_check/tmp --build-lib build/compile_check/lib \
    > "$log" 2>&1; then
  grep -E "error|Error" "$log" | head -40
  tail -40 "$log"
  echo "[compile_check] FAILED: the CUDA sources do not compile (full log: $log)"
  exit 1
fi
echo "[compile_check] built $(ls build/compile_check/lib/mmssm/_ext*.so) in $(( $(date +%s) - start )) s"
