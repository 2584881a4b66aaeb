"""Puts this folder on ``sys.path`` for ``cuda_testing`` and
``cuda_emulation``, the helpers the CUDA kernel tests share (pytest runs with
``--import-mode=importlib``, which adds no test folder), and builds the
emulated cross-scan and selective-scan kernels once per session."""
import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture(scope='session')
def emulated_cross_library(tmp_path_factory):
    """The cross scan's kernels built for the CUDA emulator."""
    from cuda_emulation import build_emulated_library
    return build_emulated_library('cross_scan_driver.cpp',
                                  tmp_path_factory.mktemp('emulator'))


@pytest.fixture(scope='session')
def emulated_scan_library(tmp_path_factory):
    """The selective scan's kernels built for the CUDA emulator."""
    from cuda_emulation import build_emulated_library
    return build_emulated_library('selective_scan_driver.cpp',
                                  tmp_path_factory.mktemp('emulator'))
