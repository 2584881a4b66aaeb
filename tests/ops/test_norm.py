"""Tests of the LayerNorm / RMSNorm op (mmssm/ops/norm.py), its compiled
kernels (mmssm/ops/cuda_ops.py, csrc/common/cuda/norm_kernel.cuh) and the
LayerNorm module (mmssm/models/layers/norm.py).

Everything is compared in float64 with an independent reference that spells
out the statistics (no ``F.layer_norm`` / ``F.rms_norm``).
"""
from typing import Dict, Optional, Sequence, Union

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssm.models.layers.norm import LayerNorm, autocast_dtype
from mmssm.models.layers.plain import PlainResidualBlock, RMSNorm
from mmssm.ops import (backend, compiled_ops_available, cuda_ops, layer_norm,
                       rms_norm)
from cuda_testing import (ALL_DTYPES, TOLERANCES, assert_close,
                          assert_compiled_matches_eager,
                          assert_sanitizer_clean, errors_against_reference,
                          needs_sanitizer, relative_error, sample)


def norm_reference(x: Tensor,
                   weight: Optional[Tensor] = None,
                   bias: Optional[Tensor] = None,
                   eps: float = 1e-5,
                   channels_first: bool = False,
                   rms: bool = False) -> Tensor:
    """The norm written out: biased variance (or mean square) over channels,
    the result channel-last."""
    if channels_first:
        x = x.movedim(1, -1)
    centred = x if rms else x - x.mean(-1, keepdim=True)
    out = centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) +
                               eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def run_norm(rms: bool, **kwargs) -> Tensor:
    """The public op (LayerNorm or RMSNorm, which takes no bias)."""
    if rms:
        assert kwargs.pop('bias') is None
        return rms_norm(**kwargs)
    return layer_norm(**kwargs)


def norm_inputs(shape: Sequence[int],
                channels: int,
                with_weight: bool = True,
                with_bias: bool = True,
                device: str = 'cpu') -> Dict[str, Optional[Tensor]]:
    """Fresh x with a non-zero mean, weight and bias (or None)."""
    return {
        'x': torch.randn(*shape, device=device) * 2 + 0.5,
        'weight':
        (torch.randn(channels, device=device) if with_weight else None),
        'bias': torch.randn(channels, device=device) if with_bias else None,
    }


@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize('shape,channels_first', [
    ((2, 7, 96), False),
    ((5, 3), False),
    ((2, 13, 5, 7), True),
    ((1, 4, 1), True),
    ((3, 6, 2, 3, 5), True),
])
@pytest.mark.parametrize('with_weight,with_bias', [(True, True), (True, False),
                                                   (False, False)])
def test_pytorch_path_matches_reference_with_gradients(rms, shape,
                                                       channels_first,
                                                       with_weight, with_bias):
    channels = shape[1] if channels_first else shape[-1]
    inputs = norm_inputs(shape, channels, with_weight, with_bias and not rms)
    ref = {
        k: v.double().requires_grad_() if v is not None else None
        for k, v in inputs.items()
    }
    mine = {
        k: v.double().requires_grad_() if v is not None else None
        for k, v in inputs.items()
    }
    out = run_norm(rms, **mine, eps=1e-4, channels_first=channels_first)
    expected = norm_reference(**ref,
                              eps=1e-4,
                              channels_first=channels_first,
                              rms=rms)
    assert out.shape == expected.shape
    assert relative_error(out, expected) < 1e-12
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    for name, value in mine.items():
        if value is None:
            continue
        assert relative_error(value.grad, ref[name].grad) < 1e-12, name


@pytest.mark.parametrize('out_dtype', [None, torch.bfloat16, torch.float64])
def test_pytorch_path_output_dtype(out_dtype):
    inputs = norm_inputs((4, 9), 9)
    out = layer_norm(**inputs, out_dtype=out_dtype)
    assert out.dtype == (out_dtype or torch.float32)
    expected = norm_reference(**{k: v.double() for k, v in inputs.items()})
    tolerance = 1e-2 if out_dtype == torch.bfloat16 else 1e-6
    assert relative_error(out, expected) < tolerance


def test_pytorch_path_computes_half_inputs_in_float32():
    # A float16 mean square of these values would overflow.
    x = torch.full((2, 8), 300.0).half()
    x[:, 0] = 200.0
    out = rms_norm(x, eps=0.0)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert relative_error(out, norm_reference(x.double(), rms=True)) < 1e-3


def test_gradcheck():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: layer_norm(*a, channels_first=True), (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda *a: rms_norm(*a, channels_first=True), (x, weight))


@pytest.mark.parametrize('kwargs,message', [
    (dict(x=torch.zeros(2, 3, dtype=torch.int64)), 'floating-point'),
    (dict(x=torch.zeros(0, 3)), 'non-empty'),
    (dict(x=torch.zeros(4), channels_first=True), 'channels-first'),
    (dict(x=torch.zeros(2, 3), weight=torch.ones(2)), r'weight must have '
     r'shape \(3,\)'),
    (dict(x=torch.zeros(2, 3, 4), bias=torch.ones(4),
          channels_first=True), r'bias must have shape \(3,\)'),
    (dict(x=torch.zeros(2, 3), eps=-1.0), 'eps must be non-negative'),
    (dict(x=torch.zeros(2, 3), out_dtype=torch.int32), 'out_dtype'),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_norm(**kwargs)


def test_compiled_op_refuses_cpu_input():
    with pytest.raises(ValueError, match='x must be a CUDA tensor'):
        cuda_ops.layer_norm_cuda(torch.randn(2, 3))


def test_module_keeps_nn_layer_norm_state_and_outputs():
    module = LayerNorm(6)
    reference = nn.LayerNorm(6)
    assert module.state_dict().keys() == reference.state_dict().keys()
    module.weight.data.normal_()
    module.bias.data.normal_()
    reference.load_state_dict(module.state_dict())
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(module(x), reference(x))
    first = LayerNorm(6, channels_first=True)
    first.load_state_dict(module.state_dict())
    torch.testing.assert_close(first(x.permute(0, 2, 1)), reference(x))


def test_module_output_takes_the_autocast_dtype():
    module = LayerNorm(6)
    x = torch.randn(3, 6)
    assert autocast_dtype(x) is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_dtype(x) == torch.bfloat16
        assert autocast_dtype(x.double()) is None
        out = module(x)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, module(x)) < 1e-2


def test_residual_block_feeds_its_mixer_the_autocast_dtype():
    seen = []

    class Probe(nn.Module):

        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.dtype)
            return x

    block = PlainResidualBlock(8, Probe())
    residual = torch.randn(2, 3, 8)
    block(residual)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(residual)
    assert seen == [torch.float32, torch.bfloat16]
    assert out.dtype == torch.float32  # the residual stream stays float32
    assert isinstance(block.norm, RMSNorm)


# --- compiled kernels (CUDA) -------------------------------------------------


def _is_weight(name: str, _value: Tensor) -> bool:
    return name in ('weight', 'bias')


def _cuda_errors(shape: Sequence[int],
                 dtype: torch.dtype,
                 rms: bool,
                 channels_first: bool = False,
                 with_weight: bool = True,
                 with_bias: bool = True,
                 contiguous: bool = True) -> Dict[str, Union[float, str]]:
    """Errors of the compiled op against the float64 reference (see
    cuda_testing.errors_against_reference) on fresh GPU samples."""
    channels = shape[1] if channels_first else shape[-1]
    inputs = {
        'x': sample(shape, 2.0, 0.5, contiguous=contiguous),
        'weight': sample((channels, )) if with_weight else None,
    }
    if not rms:
        inputs['bias'] = sample((channels, )) if with_bias else None
    compiled = cuda_ops.rms_norm_cuda if rms else cuda_ops.layer_norm_cuda

    def reference(**kwargs):
        return norm_reference(**kwargs, rms=rms)

    return errors_against_reference(inputs,
                                    compiled,
                                    reference,
                                    dtype,
                                    _is_weight,
                                    eps=1e-5,
                                    channels_first=channels_first)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize(
    'shape',
    [
        (2, 7, 96),  # VMamba-T stage 1 rows
        (3, 5),  # few channels (two would make dx ill-conditioned)
        (5, 127),
        (4, 384),  # Vim-S
        (3, 513),  # 32 channels a lane
        (2, 1100),  # 64 channels a lane
        (1, 2048),
        (9000, 40),  # more rows than the backward grid's warps
    ])
def test_cuda_rows_match_reference(dtype, rms, shape):
    assert_close(_cuda_errors(shape, dtype, rms), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize(
    'shape',
    [
        (2, 96, 7, 9),  # a partial tile of positions
        (1, 5, 1, 1),
        (3, 33, 5, 13),  # channels past a 32-channel chunk
        (2, 200, 61),
        (2, 8, 40001),  # more tiles than the backward grid
    ])
def test_cuda_channels_first_matches_reference(dtype, rms, shape):
    assert_close(_cuda_errors(shape, dtype, rms, channels_first=True), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize('channels_first', [False, True])
@pytest.mark.parametrize('with_weight,with_bias',
                         [(False, False), (True, False), (False, True)])
def test_cuda_options_and_strided_input(rms, channels_first, with_weight,
                                        with_bias):
    if rms and with_bias:
        pytest.skip('RMSNorm has no bias')
    shape = (3, 37, 11) if channels_first else (29, 37)
    for dtype in (torch.float32, torch.bfloat16):
        errors = _cuda_errors(shape,
                              dtype,
                              rms,
                              channels_first,
                              with_weight,
                              with_bias,
                              contiguous=False)
        assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('out_dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize('channels_first,shape', [(False, (3, 50, 96)),
                                                  (True, (2, 96, 9, 11))])
def test_cuda_float32_input_half_output(out_dtype, rms, channels_first, shape):
    channels = shape[1] if channels_first else shape[-1]
    inputs = norm_inputs(shape, channels, True, not rms, 'cuda')
    if rms:
        inputs.pop('bias')
    mine = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    ref = {k: v.double().requires_grad_() for k, v in inputs.items()}
    compiled = cuda_ops.rms_norm_cuda if rms else cuda_ops.layer_norm_cuda
    out = compiled(**mine, out_dtype=out_dtype, channels_first=channels_first)
    expected = norm_reference(**ref, channels_first=channels_first, rms=rms)
    assert out.dtype == out_dtype and out.shape == expected.shape
    assert relative_error(out, expected) <= TOLERANCES[out_dtype]
    grad = torch.randn_like(expected).to(out_dtype)
    out.backward(grad)
    expected.backward(grad.double())
    for name, value in mine.items():
        assert value.grad.dtype == torch.float32
        assert relative_error(value.grad, ref[name].grad) <= 1e-5, name


@pytest.mark.cuda
def test_cuda_public_ops_dispatch_to_kernels():
    assert compiled_ops_available()
    assert backend('layer_norm') == backend('rms_norm') == 'cuda'
    inputs = norm_inputs((2, 6, 5, 3), 6, device='cuda')
    torch.testing.assert_close(layer_norm(**inputs, channels_first=True),
                               cuda_ops.layer_norm_cuda(**inputs,
                                                        channels_first=True),
                               rtol=0,
                               atol=0)
    x, weight = inputs['x'], inputs['weight']
    torch.testing.assert_close(rms_norm(x.movedim(1, -1), weight),
                               cuda_ops.rms_norm_cuda(x.movedim(1, -1),
                                                      weight),
                               rtol=0,
                               atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize('channels_first', [False, True])
def test_cuda_module_under_autocast_matches_float32_norm(channels_first):
    module = LayerNorm(24, channels_first=channels_first).cuda()
    nn.init.normal_(module.weight)
    nn.init.normal_(module.bias)
    x = torch.randn(2, 24, 6, 7, device='cuda', requires_grad=True)
    x_in = x if channels_first else x.permute(0, 2, 3, 1)
    with torch.autocast('cuda', dtype=torch.float16):
        out = module(x_in)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (24, ), module.weight,
                            module.bias)
    assert out.dtype == torch.float16
    assert relative_error(out, expected) < 5e-3
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32
    assert module.weight.grad.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize('channels_first', [False, True])
def test_cuda_passes_opcheck(rms, channels_first):
    shape = (2, 6, 10) if channels_first else (7, 6)
    x = torch.randn(*shape, device='cuda')
    weight = torch.randn(6, device='cuda')
    bias = None if rms else torch.randn(6, device='cuda')
    args = (x, weight, bias, 1e-5, rms, channels_first, torch.bfloat16)
    torch.library.opcheck(torch.ops.mmssm.norm_fwd.default, args)


@pytest.mark.cuda
def test_cuda_torch_compile_full_graph():

    class TinyNorms(nn.Module):

        def __init__(self):
            super().__init__()
            self.first = LayerNorm(4, channels_first=True)
            self.rms = RMSNorm(4)

        def forward(self, x: Tensor) -> Tensor:
            return self.rms(self.first(x), torch.float32)

    module = TinyNorms().cuda()
    x = torch.randn(2, 4, 3, 5, device='cuda', requires_grad=True)
    assert_compiled_matches_eager(module, x, module.first.weight)


@pytest.mark.cuda
@needs_sanitizer
@pytest.mark.parametrize('tool', ['memcheck', 'racecheck', 'synccheck'])
def test_cuda_sanitizer_clean(tool):
    # Every kernel: channel-last rows of 4, 16, 32 and 64 channels a lane,
    # channels-first maps with partial tiles and chunks; float32 to bfloat16
    # and float64.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'cases = (((37, 96), False), ((5, 300), False), ((3, 700), False),\n'
        '         ((2, 1500), False), ((2, 40, 7, 5), True))\n'
        'for dt, out in ((torch.float32, torch.bfloat16),\n'
        '                (torch.float64, None)):\n'
        '    for shape, first in cases:\n'
        '        c = shape[1] if first else shape[-1]\n'
        '        x = torch.randn(*shape, device="cuda", dtype=dt)\n'
        '        w = torch.randn(c, device="cuda", dtype=dt)\n'
        '        b = torch.randn(c, device="cuda", dtype=dt)\n'
        '        for t in (x, w, b):\n'
        '            t.requires_grad_()\n'
        '        cuda_ops.layer_norm_cuda(x, w, b, 1e-5, out,\n'
        '            first).float().sum().backward()\n'
        '        cuda_ops.rms_norm_cuda(x, w, 1e-5, out,\n'
        '            first).float().sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)
