#!/usr/bin/env bash
# Create or update the project environment (.venv) with the pinned stack.
# Idempotent: a second run with unchanged requirements returns at once.
#   PYTHON=python3.11   interpreter for a new environment
#   MMSSM_VENV=.venv    where the environment lives
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MMSSM_VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
WHEELS=../shared/wheels

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_env] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"
stamp="$VENV/.mmssm-stack"
want=$(cat requirements/*.txt setup.py tools/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c 'import mmssm, mmcv.ops, mmdet, mmseg, mmpretrain' 2>/dev/null; then
  echo "[setup_env] $VENV is up to date"
  exit 0
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install -r requirements/build.txt
pip_install -r requirements/torch.txt

# mmcv 2.1.0 with its compiled ops: a cached wheel when ../shared/wheels has one,
# else a source build (torch 2.14's headers need C++20; mmcv hard-codes C++17).
if ! "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
  if ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "[setup_env] installing mmcv 2.1.0 from $WHEELS"
    pip_install --no-cache-dir --no-build-isolation --find-links "$WHEELS" mmcv==2.1.0
  else
    echo "[setup_env] building mmcv 2.1.0 with ops from source (about 12 min on 2 cores)"
    src=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$src" mmcv==2.1.0
    tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    sed -i 's/-std=c++17/-std=c++20/g' "$src"/mmcv-2.1.0/setup.py
    (cd "$src/mmcv-2.1.0" && MMCV_WITH_OPS=1 CFLAGS="-O3 -DNDEBUG -fwrapv -g0" \
      "$PY" -m pip install -q --no-cache-dir --no-build-isolation .)
    rm -rf "$src"
  fi
fi
pip_install --find-links "$WHEELS" -r requirements/downstream.txt -r requirements/runtime.txt -r requirements/tests.txt
pip_install --no-build-isolation -e .
"$PY" -c 'import mmssm, mmcv.ops, mmdet, mmseg, mmpretrain'
echo "$want" > "$stamp"
echo "[setup_env] ready: $VENV ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
