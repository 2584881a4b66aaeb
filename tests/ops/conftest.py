"""Puts this folder on ``sys.path`` for ``cuda_testing``, the helpers the CUDA
kernel tests share (pytest runs with ``--import-mode=importlib``, which adds
no test folder)."""
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
