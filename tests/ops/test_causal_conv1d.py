"""Tests of the causal depthwise conv1d op (mmssm/ops/causal_conv1d.py) and
its compiled kernel (mmssm/ops/cuda_ops.py,
csrc/common/cuda/causal_conv1d_kernel.cuh).

Both are compared in float64 with an independent reference: a zero-padded
``F.conv1d`` of the (for ``reverse``, flipped) sequence, flipped back.
"""
from typing import Dict, Optional, Union

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssm.ops import backend, causal_conv1d, compiled_ops_available, cuda_ops
from mmssm.ops.causal_conv1d import _causal_conv1d_pytorch
from cuda_testing import (ALL_DTYPES, TOLERANCES, assert_close,
                          assert_compiled_matches_eager,
                          assert_sanitizer_clean, errors_against_reference,
                          needs_sanitizer, relative_error, sample)


def conv_reference(x: Tensor,
                   weight: Tensor,
                   bias: Optional[Tensor] = None,
                   reverse: bool = False,
                   activation: Optional[str] = None) -> Tensor:
    """Left-padded grouped conv of the sequence (reversed for ``reverse``)."""
    sequence = x.flip(-1) if reverse else x
    out = F.conv1d(F.pad(sequence, (weight.shape[-1] - 1, 0)), weight, bias,
                   groups=weight.shape[0])
    out = out.flip(-1) if reverse else out
    return F.silu(out) if activation == 'silu' else out


def conv_inputs(batch: int, channels: int, length: int, kernel: int,
                with_bias: bool, device: str = 'cpu') -> Dict[str, Tensor]:
    """Fresh float32 x, weight and (or None) bias."""
    return {
        'x': torch.randn(batch, channels, length, device=device),
        'weight': torch.randn(channels, 1, kernel, device=device) * 0.5,
        'bias': torch.randn(channels, device=device) if with_bias else None,
    }


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('kernel', [2, 3, 4, 7])
@pytest.mark.parametrize('length', [1, 2, 3, 5, 197])
@pytest.mark.parametrize('with_bias,activation', [(False, None),
                                                  (True, 'silu'),
                                                  (True, None),
                                                  (False, 'silu')])
def test_matches_reference_with_gradients(reverse, kernel, length, with_bias,
                                          activation):
    inputs = {
        name: value.double().requires_grad_() if value is not None else None
        for name, value in conv_inputs(2, 3, length, kernel,
                                       with_bias).items()
    }
    out = causal_conv1d(**inputs, reverse=reverse, activation=activation)
    expected = conv_reference(**inputs, reverse=reverse,
                              activation=activation)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    tensors = [v for v in inputs.values() if v is not None]
    grads = torch.autograd.grad(out, tensors, grad_out)
    expected_grads = torch.autograd.grad(expected, tensors, grad_out)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize('reverse', [False, True])
def test_gradcheck(reverse):
    inputs = tuple(
        value.double().requires_grad_()
        for value in conv_inputs(2, 3, 6, 3, True).values())
    assert torch.autograd.gradcheck(
        lambda x, w, b: causal_conv1d(x, w, b, reverse, 'silu'), inputs)


@pytest.mark.parametrize('reverse,touched', [
    (False, [False, True, True, True, True] + [False] * 4),
    (True, [False] * 4 + [True] * 4 + [False]),
])
def test_position_four_sees_only_its_window(reverse, touched):
    x = torch.randn(2, 5, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 1, 4, dtype=torch.float64)
    out = causal_conv1d(x, weight, reverse=reverse, activation='silu')
    out[:, :, 4].sum().backward()
    assert (x.grad.abs().sum(dim=(0, 1)) != 0).tolist() == touched


def test_float32_strided_input_matches_reference():
    # A transposed view, as the Vim mixer passes it.
    x = torch.randn(3, 13, 6).transpose(1, 2)
    weight, bias = torch.randn(6, 1, 4), torch.randn(6)
    for reverse in (False, True):
        out = causal_conv1d(x, weight, bias, reverse, 'silu')
        expected = conv_reference(x.double(), weight.double(), bias.double(),
                                  reverse, 'silu')
        assert out.dtype == torch.float32
        assert relative_error(out, expected) < 1e-6


@pytest.mark.parametrize('args,message', [
    ((torch.randn(2, 4, 9), torch.randn(5, 1, 4)),
     r'x must have shape \(B, 5, L\) to match weight \(5, 1, 4\), '
     r'got \(2, 4, 9\)'),
    ((torch.randn(2, 5), torch.randn(5, 1, 4)), r'x must have shape'),
    ((torch.randn(2, 5, 9), torch.randn(5, 4)),
     r'weight must have shape \(E, 1, K\), got \(5, 4\)'),
    ((torch.randn(2, 5, 9), torch.randn(5, 1, 9)),
     r'kernel size K in \[1, 8\], got K=9'),
    ((torch.randn(2, 5, 9), torch.randn(5, 1, 4), torch.randn(4)),
     r'bias must have shape \(5,\), got \(4,\)'),
    ((torch.randn(2, 5, 0), torch.randn(5, 1, 4)), 'x must be non-empty'),
    ((torch.ones(2, 5, 9, dtype=torch.int64), torch.randn(5, 1, 4)),
     'x must be a floating-point tensor'),
])
def test_bad_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        causal_conv1d(*args)


def test_bad_activation_raises():
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 1, 2),
                      activation='gelu')


def test_compiled_op_refuses_cpu_input_and_bad_activation():
    x, weight = torch.randn(1, 2, 3), torch.randn(2, 1, 2)
    with pytest.raises(ValueError, match='x must be a CUDA tensor'):
        cuda_ops.causal_conv1d_cuda(x, weight)
    with pytest.raises(ValueError, match='activation must be one of'):
        cuda_ops.causal_conv1d_cuda(x, weight, activation='relu')


def _is_weight(name: str, _value: Tensor) -> bool:
    return name in ('weight', 'bias')


def _cuda_errors(batch: int,
                 channels: int,
                 length: int,
                 kernel: int,
                 dtype: torch.dtype,
                 reverse: bool,
                 activation: Optional[str] = 'silu',
                 with_bias: bool = True,
                 contiguous: bool = True) -> Dict[str, Union[float, str]]:
    """Errors of the compiled op against the float64 reference (see
    cuda_testing.errors_against_reference) on fresh GPU samples."""
    inputs = {
        'x': sample((batch, channels, length), contiguous=contiguous),
        'weight': sample((channels, 1, kernel), 0.5),
        'bias': sample((channels, )) if with_bias else None,
    }
    return errors_against_reference(inputs, cuda_ops.causal_conv1d_cuda,
                                    conv_reference, dtype, _is_weight,
                                    reverse=reverse, activation=activation)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('batch,channels,length,kernel', [
    (3, 7, 197, 4),  # odd E and L
    (1, 5, 4097, 4),  # B = 1, long rows over many chunks
    (4, 9, 1, 4),  # L < K: rows of one position
    (2, 3, 3, 7),  # L < K
    (2, 33, 197, 2),
    (2, 6, 61, 8),
    # The backward's warps walk rows in chunks of 32 in blocks of 8 batch
    # elements: K = 1 (no taps from other lanes) over whole chunks and
    # three batch groups, the last one partial; a chunk and one position.
    (19, 3, 64, 1),
    (9, 4, 33, 5),
])
def test_cuda_matches_reference(dtype, reverse, batch, channels, length,
                                kernel):
    errors = _cuda_errors(batch, channels, length, kernel, dtype, reverse)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('with_bias,activation', [(False, None),
                                                  (True, None),
                                                  (False, 'silu')])
def test_cuda_options_and_strided_input(reverse, with_bias, activation):
    for dtype in (torch.float32, torch.bfloat16):
        errors = _cuda_errors(2, 5, 37, 3, dtype, reverse, activation,
                              with_bias, contiguous=False)
        assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('reverse', [False, True])
def test_cuda_misaligned_input(dtype, reverse):
    # A contiguous x one element past a 16-byte boundary: the kernels must
    # not assume aligned rows.
    batch, channels, length = 2, 5, 301
    storage = torch.randn(batch * channels * length + 1, device='cuda')
    x = storage.to(dtype)[1:].view(batch, channels, length)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    weight = torch.randn(channels, 1, 4, device='cuda')
    bias = torch.randn(channels, device='cuda')
    out = cuda_ops.causal_conv1d_cuda(x, weight, bias, reverse, 'silu')
    expected = conv_reference(x.double(), weight.double(), bias.double(),
                              reverse, 'silu')
    assert relative_error(out, expected) <= TOLERANCES[dtype]


@pytest.mark.cuda
def test_cuda_public_op_dispatches_to_kernel():
    assert compiled_ops_available()
    assert backend('causal_conv1d') == 'cuda'
    inputs = conv_inputs(2, 3, 11, 4, True, 'cuda')
    torch.testing.assert_close(
        causal_conv1d(**inputs, reverse=True, activation='silu'),
        cuda_ops.causal_conv1d_cuda(**inputs, reverse=True,
                                    activation='silu'),
        rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_autocast_computes_in_the_autocast_dtype():
    inputs = {
        name: value.requires_grad_()
        for name, value in conv_inputs(2, 6, 50, 4, True, 'cuda').items()
    }
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = cuda_ops.causal_conv1d_cuda(**inputs, activation='silu')
        pytorch_out = _causal_conv1d_pytorch(**inputs, activation='silu')
    assert out.dtype == pytorch_out.dtype == torch.bfloat16
    # Both see x rounded to bfloat16; the kernel keeps float32 weights.
    rounded = {k: v.detach().double() for k, v in inputs.items()}
    rounded['x'] = rounded['x'].bfloat16().double()
    expected = conv_reference(**rounded, activation='silu')
    assert relative_error(out, expected) < 1e-2
    assert relative_error(out, pytorch_out) < 2e-2
    out.float().sum().backward()
    assert inputs['x'].grad.dtype == torch.float32
    assert inputs['weight'].grad.dtype == torch.float32
    assert inputs['bias'].grad.dtype == torch.float32


@pytest.mark.cuda
def test_cuda_passes_opcheck():
    inputs = conv_inputs(2, 3, 20, 4, True, 'cuda')
    args = (inputs['x'], inputs['weight'][:, 0].contiguous(), inputs['bias'],
            True, True)
    torch.library.opcheck(torch.ops.mmssm.causal_conv1d_fwd.default, args)


@pytest.mark.cuda
def test_cuda_torch_compile_full_graph():

    class TinyConv(nn.Module):

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 4, groups=4)

        def forward(self, x: Tensor) -> Tensor:
            return causal_conv1d(x, self.conv.weight, self.conv.bias, True,
                                 'silu')

    module = TinyConv().cuda()
    x = torch.randn(2, 4, 9, device='cuda', requires_grad=True)
    assert_compiled_matches_eager(module, x, module.conv.weight)


@pytest.mark.cuda
@needs_sanitizer
@pytest.mark.parametrize('tool', ['memcheck', 'racecheck', 'synccheck'])
def test_cuda_sanitizer_clean(tool):
    # Warps over rows of 1 position, of 197 (a partial last chunk) and of
    # 1100 (many chunks, misaligned); blocks of 9 batch elements (the second
    # block's warps mostly idle, then the block's sums in shared memory);
    # both directions, every dtype, K 1, 4 and 8.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'shapes = ((9, 5, 1, 4), (2, 7, 197, 8), (1, 3, 1100, 1))\n'
        'for dt in (torch.float32, torch.bfloat16, torch.float16,\n'
        '           torch.float64):\n'
        '    wdt = torch.float64 if dt == torch.float64 else torch.float32\n'
        '    for b, e, l, k in shapes:\n'
        '        for rev in (False, True):\n'
        '            n = b * e * l\n'
        '            x = torch.randn(n + 1, device="cuda", dtype=dt)\n'
        '            x = (x[1:] if l == 1100 else x[:n]).view(b, e, l)\n'
        '            w = torch.randn(e, 1, k, device="cuda", dtype=wdt)\n'
        '            bias = torch.randn(e, device="cuda", dtype=wdt)\n'
        '            for t in (x, w, bias):\n'
        '                t.requires_grad_()\n'
        '            cuda_ops.causal_conv1d_cuda(x, w, bias, rev,\n'
        '                "silu").sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)
