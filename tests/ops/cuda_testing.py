"""Helpers shared by the tests of the compiled scan kernels
(tests/ops/test_cuda_*.py): the comparison with a float64 reference, its
error measure and tolerances, GPU samples and the compute-sanitizer runner."""
import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, Optional, Sequence, Union

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


def skip_unless_errors_can_format_numbers() -> None:
    """Skips a test of the extension's C++ argument checks where their
    messages cannot be built: an extension linked with its own static copy
    of libstdc++ (no libstdc++ among its shared libraries; the GPU
    machine's g++ links one in) crashes formatting a number into one."""
    from mmssm import _ext
    ldd = shutil.which('ldd')
    if ldd is None:
        return
    libraries = subprocess.run([ldd, _ext.__file__], capture_output=True,
                               text=True).stdout
    if 'libstdc++' not in libraries:
        pytest.skip('mmssm._ext carries a static libstdc++ (its toolchain '
                    'links one in), whose number formatting in C++ error '
                    'messages crashes the process')


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """Relative error in float64; inf where ``actual`` is not finite."""
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float('inf')
    return ((actual - expected).norm() /
            expected.norm().clamp_min(1e-30)).item()


def weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """Weights stay float32 next to half-precision activations."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def worst_element(actual: Tensor, expected: Tensor) -> str:
    """Index and values of the largest absolute difference, for messages."""
    difference = (actual.double() - expected.double()).abs()
    difference = torch.nan_to_num(difference, nan=float('inf'))
    index = tuple(
        int(i) for i in torch.unravel_index(difference.argmax(),
                                            difference.shape))
    return (f'{index}: {actual[index].item():.6g} vs '
            f'{expected[index].item():.6g}')


def errors_against_reference(
        inputs: Dict[str, Optional[Tensor]], compiled: Callable[..., Tensor],
        reference: Callable[..., Tensor], dtype: torch.dtype,
        is_weight: Callable[[str, Tensor], bool],
        out_dtype: Optional[torch.dtype] = None,
        **kwargs) -> Dict[str, Union[float, str]]:
    """Relative errors of the output and of every input gradient, and where
    the worst element of a tensor over the tolerance lies.

    Each float32 sample is cast to ``dtype`` (those ``is_weight(name,
    value)`` picks to :func:`weight_dtype`) for the compiled op, and the same
    values to float64 for the reference; both get the same output gradient
    (rounded to the compiled op's output dtype).
    An input the reference leaves without a gradient (unused by a map, e.g.
    the top path of a single row) is expected to get zeros from the kernel.

    Args:
        inputs: Keyword inputs of both ops (None for an absent one).
        compiled: The compiled op.
        reference: The float64 reference op.
        dtype: Activation dtype of the compiled op.
        is_weight: Whether an input keeps the weight dtype.
        out_dtype: The compiled op's output dtype; None: ``dtype``.
        **kwargs: Further arguments of both ops.

    Returns:
        ``'out'`` and ``'d<input>'`` relative errors, and ``'worst <key>'``
        messages for those over :data:`TOLERANCES`.
    """
    mine, ref = {}, {}
    for name, value in inputs.items():
        if value is None:
            mine[name] = ref[name] = None
            continue
        cast = weight_dtype(dtype) if is_weight(name, value) else dtype
        mine[name] = value.detach().to(cast).requires_grad_()
        ref[name] = value.detach().to(cast).double().requires_grad_()
    out = compiled(**mine, **kwargs)
    expected = reference(**ref, **kwargs)
    assert out.dtype == (out_dtype or dtype)
    assert out.shape == expected.shape
    # Both get the output gradient as rounded to the output's dtype: the
    # kernel cannot see more of it, and a sum over many products (dD) would
    # otherwise carry that rounding, amplified by cancellation, into the
    # comparison.
    grad_out = torch.randn_like(expected).to(out.dtype)
    out.backward(grad_out)
    expected.backward(grad_out.double())
    compared = {'out': (out, expected)}
    for name, value in mine.items():
        if value is not None:
            assert value.grad is not None and value.grad.dtype == value.dtype
            expected_grad = ref[name].grad
            if expected_grad is None:
                expected_grad = torch.zeros_like(ref[name])
            compared['d' + name] = (value.grad, expected_grad)
    errors = {}
    for key, (actual, wanted) in compared.items():
        errors[key] = relative_error(actual, wanted)
        if not errors[key] <= TOLERANCES[dtype]:
            errors['worst ' + key] = worst_element(actual, wanted)
    return errors


def over_tolerance(errors: Dict[str, Union[float, str]],
                   dtype: torch.dtype) -> Dict[str, Union[float, str]]:
    """The entries of :func:`errors_against_reference` that fail ``dtype``'s
    tolerance, with their worst-element messages."""
    return {
        k: v
        for k, v in errors.items()
        if isinstance(v, str) or not v <= TOLERANCES[dtype]
    }


def assert_close(errors: Dict[str, Union[float, str]],
                 dtype: torch.dtype) -> None:
    """Every error of :func:`errors_against_reference` within tolerance."""
    bad = over_tolerance(errors, dtype)
    assert not bad, f'{dtype}: relative errors over {TOLERANCES[dtype]}: ' \
        f'{bad} (all: {errors})'


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


def assert_compiled_matches_eager(module: torch.nn.Module, x: Tensor,
                                  parameter: Tensor) -> None:
    """``torch.compile(fullgraph=True)`` of ``module`` (so: no graph break)
    gives the eager loss ``sum(module(x)^2)`` and the same gradients of x
    and of ``parameter``.

    Args:
        module: The module, on the GPU.
        x: Its input, requiring gradients.
        parameter: One of its parameters.
    """
    compiled = torch.compile(module, fullgraph=True, backend='aot_eager')
    loss = (compiled(x)**2).sum()
    loss.backward()
    grads = [x.grad.clone(), parameter.grad.clone()]
    x.grad = None
    module.zero_grad()
    eager = (module(x)**2).sum()
    eager.backward()
    assert relative_error(loss, eager) < 1e-6
    assert relative_error(grads[0], x.grad) < 1e-6
    assert relative_error(grads[1], parameter.grad) < 1e-6
