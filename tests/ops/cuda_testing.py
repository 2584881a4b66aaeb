"""Helpers shared by the tests of the compiled scan kernels
(tests/ops/test_cuda_*.py): error measure, tolerances, GPU samples and the
compute-sanitizer runner."""
import os
import shutil
import subprocess
import sys
from typing import Sequence

import pytest
import torch
from torch import Tensor

# Largest relative error ‖actual − expected‖ / ‖expected‖ per input dtype.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 1e-2,
}
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# What each compute-sanitizer tool prints for a clean run.
SANITIZER_CLEAN = {
    'memcheck': 'ERROR SUMMARY: 0 errors',
    'racecheck': 'RACECHECK SUMMARY: 0 hazards',
    'synccheck': 'ERROR SUMMARY: 0 errors',
}

needs_sanitizer = pytest.mark.skipif(
    shutil.which('compute-sanitizer') is None,
    reason='compute-sanitizer is not on PATH')


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """Relative error in float64; inf where ``actual`` is not finite."""
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float('inf')
    return ((actual - expected).norm() /
            expected.norm().clamp_min(1e-30)).item()


def sample(shape: Sequence[int], scale: float = 1.0, shift: float = 0.0,
           contiguous: bool = True) -> Tensor:
    """Fresh normal samples on the GPU; else a transposed (strided) view."""
    if contiguous:
        return torch.randn(*shape, device='cuda') * scale + shift
    swapped = list(shape)
    swapped[-1], swapped[-2] = swapped[-2], swapped[-1]
    return (torch.randn(*swapped, device='cuda') * scale +
            shift).transpose(-1, -2)


def assert_sanitizer_clean(tool: str, script: str) -> None:
    """Runs ``script`` in a fresh Python under ``compute-sanitizer --tool``
    and asserts that the tool exits cleanly and prints its clean summary.

    Args:
        tool: A key of :data:`SANITIZER_CLEAN`.
        script: Python source that launches the kernels to check.
    """
    result = subprocess.run(
        ['compute-sanitizer', '--tool', tool, '--error-exitcode', '3',
         sys.executable, '-c', script],
        capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert SANITIZER_CLEAN[tool] in result.stdout, result.stdout[-4000:]
