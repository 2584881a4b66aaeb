"""Tests of mmssm/ops/v2m_scan.py: V2M's four-corner row/column scan."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmssm.ops import v2m_corner_scan
from mmssm.ops.v2m_scan import CORNERS, v2m_corner_scan_reference


def _random_inputs(batch, corners, dim, state, height, width, *,
                   shared_u=False, const_b=False, const_c=False,
                   dtype=torch.float64):
    """Fresh random arguments of one corner-scan pass (all require grad)."""
    k = len(corners)
    spatial = (batch, dim, height, width)
    per_corner = (batch, k, dim, height, width)
    u = torch.randn(spatial if shared_u else per_corner, dtype=dtype)
    args = dict(
        u=u,
        delta=torch.randn(per_corner, dtype=dtype),
        A=-torch.rand(k * dim, state, dtype=dtype) * 2 - 0.1,
        B=(torch.randn(k * dim, state, dtype=dtype) if const_b else
           torch.randn(batch, k, state, height, width, dtype=dtype)),
        C=(torch.randn(k * dim, state, dtype=dtype) if const_c else
           torch.randn(batch, k, state, height, width, dtype=dtype)),
        D=torch.randn(k * dim, dtype=dtype),
        z=torch.randn(u.shape, dtype=dtype),
        delta_bias=torch.randn(k * dim, dtype=dtype),
    )
    for tensor in args.values():
        tensor.requires_grad_(True)
    return args


def _outputs_and_grads(op, args, grad_out=None, **kwargs):
    y = op(**args, **kwargs)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    names = [name for name, t in args.items() if t is not None]
    grads = torch.autograd.grad(y, [args[n] for n in names], grad_out)
    return y, dict(zip(names, grads)), grad_out


@pytest.mark.parametrize('axis', ['row', 'col'])
@pytest.mark.parametrize('height,width', [(3, 5), (5, 2), (1, 4), (4, 1),
                                          (1, 1)])
@pytest.mark.parametrize('variant', ['per_corner', 'shared_u_const_c',
                                     'const_b', 'no_optionals'])
def test_matches_reference_float64(axis, height, width, variant):
    corners = CORNERS if variant != 'const_b' else ('br', 'tl', 'bl')
    args = _random_inputs(2, corners, 3, 4, height, width,
                          shared_u=variant == 'shared_u_const_c',
                          const_b=variant == 'const_b',
                          const_c=variant == 'shared_u_const_c')
    softplus = variant != 'no_optionals'
    if variant == 'no_optionals':
        args.update(D=None, z=None, delta_bias=None)
        args['delta'] = torch.rand_like(args['delta']).requires_grad_(True)
    y, grads, grad_out = _outputs_and_grads(
        v2m_corner_scan, args, axis=axis, corners=corners,
        delta_softplus=softplus)
    y_ref, grads_ref, _ = _outputs_and_grads(
        v2m_corner_scan_reference, args, grad_out, axis=axis,
        corners=corners, delta_softplus=softplus)
    assert y.shape == (2, len(corners), 3, height, width)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert set(grads) == set(grads_ref)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-10,
                                   atol=1e-10, msg=f'gradient of {name}')


def test_hand_computed_single_row_from_the_right():
    """1x3 grid, one channel, one state: the 'tr' row walk is j = 2, 1, 0."""
    u = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 1, 1, 1, 3)
    delta = torch.tensor([0.5, 1.0, 2.0],
                         dtype=torch.float64).view(1, 1, 1, 1, 3)
    a, b, c, d = -1.0, 2.0, 3.0, 0.5
    y = v2m_corner_scan(
        u, delta, torch.tensor([[a]], dtype=torch.float64),
        torch.tensor([[b]], dtype=torch.float64),
        torch.tensor([[c]], dtype=torch.float64),
        D=torch.tensor([d], dtype=torch.float64), axis='row',
        corners=('tr', ))
    h2 = 2.0 * b * 3.0  # rightmost pixel starts the walk
    h1 = math.exp(1.0 * a) * h2 + 1.0 * b * 2.0
    h0 = math.exp(0.5 * a) * h1 + 0.5 * b * 1.0
    expected = torch.tensor([c * h0 + d * 1.0, c * h1 + d * 2.0,
                             c * h2 + d * 3.0], dtype=torch.float64)
    torch.testing.assert_close(y.view(3), expected, rtol=1e-12, atol=1e-12)


def test_hand_computed_single_column_from_the_bottom_with_gate():
    """3x1 grid: the 'bl' column walk is i = 2, 1, 0; output times silu(z)."""
    u = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64).view(1, 1, 3, 1)
    delta = torch.full((1, 1, 1, 3, 1), 0.3, dtype=torch.float64)
    z = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64).view(1, 1, 3, 1)
    a = -2.0
    y = v2m_corner_scan(
        u, delta, torch.tensor([[a]], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64), z=z, axis='col',
        corners=('bl', ))
    decay = math.exp(0.3 * a)
    h2 = 0.3 * 2.0
    h1 = decay * h2 + 0.3 * -1.0
    h0 = decay * h1 + 0.3 * 1.0
    gate = F.silu(z.view(3))
    expected = torch.tensor([h0, h1, h2], dtype=torch.float64) * gate
    torch.testing.assert_close(y.view(3), expected, rtol=1e-12, atol=1e-12)


# The pixels (rows, cols) each corner's row+column scan may depend on.
_QUADRANTS = {
    'tl': lambda i, j: (slice(0, i + 1), slice(0, j + 1)),
    'tr': lambda i, j: (slice(0, i + 1), slice(j, None)),
    'bl': lambda i, j: (slice(i, None), slice(0, j + 1)),
    'br': lambda i, j: (slice(i, None), slice(j, None)),
}


def test_row_then_column_pass_depends_on_exactly_the_corner_quadrant():
    height, width, dim, state = 4, 6, 2, 3
    corners = CORNERS
    k = len(corners)
    image = torch.randn(1, dim, height, width, dtype=torch.float64,
                        requires_grad=True)

    def pass_args():
        # Positive B/C/Δ make every dependency strictly positive, so a zero
        # gradient means "no dependency" and nothing else.
        return dict(
            delta=torch.rand(1, k, dim, height, width,
                             dtype=torch.float64) + 0.1,
            A=-torch.rand(k * dim, state, dtype=torch.float64) - 0.1,
            B=torch.rand(1, k, state, height, width,
                         dtype=torch.float64) + 0.1,
            C=torch.rand(k * dim, state, dtype=torch.float64) + 0.1)

    rows = v2m_corner_scan(image, axis='row', corners=corners, **pass_args())
    out = v2m_corner_scan(rows, axis='col', corners=corners, **pass_args())
    for corner_index, corner in enumerate(corners):
        for i, j in [(0, 0), (1, 4), (3, 2), (3, 5), (2, 0)]:
            grad, = torch.autograd.grad(out[0, corner_index, 0, i, j], image,
                                        retain_graph=True)
            depends = grad[0].abs().sum(0) > 0
            expected = torch.zeros(height, width, dtype=torch.bool)
            expected[_QUADRANTS[corner](i, j)] = True
            assert torch.equal(depends, expected), (corner, i, j, depends)


@pytest.mark.parametrize('op', [v2m_corner_scan, v2m_corner_scan_reference])
@pytest.mark.parametrize('axis,corners', [('col', CORNERS),
                                          ('row', ('br', 'tl', 'br'))])
def test_merged_corners_are_the_sum_of_the_corners(op, axis, corners):
    # The merged output and its gradients against the per-corner output
    # summed over the corners, with a random gradient of the sum.
    args = _random_inputs(2, corners, 3, 2, 4, 6, shared_u=axis == 'row')
    merged, grads, grad_out = _outputs_and_grads(
        op, args, axis=axis, corners=corners, delta_softplus=True,
        merge_corners=True)
    per_corner = op(**args, axis=axis, corners=corners, delta_softplus=True)
    assert merged.shape == (2, 3, 4, 6)
    torch.testing.assert_close(merged, per_corner.sum(dim=1), rtol=1e-12,
                               atol=1e-12)
    _, grads_summed, _ = _outputs_and_grads(
        op, args, grad_out.unsqueeze(1).expand_as(per_corner), axis=axis,
        corners=corners, delta_softplus=True)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_summed[name],
                                   rtol=1e-12, atol=1e-12,
                                   msg=f'gradient of {name}')


def test_merged_corners_are_float32_for_half_inputs():
    # The corners add up in float32, whichever the inputs' dtype: against
    # the float64 reference on the same bfloat16 values, only float32
    # rounding remains.
    args = _random_inputs(1, CORNERS, 2, 1, 3, 5, dtype=torch.float32)
    half = {k: v.detach().to(torch.bfloat16) for k, v in args.items()}
    for name in ('A', 'D', 'delta_bias'):
        half[name] = half[name].float()
    wanted = v2m_corner_scan_reference(
        **{k: v.double() for k, v in half.items()}, axis='col',
        merge_corners=True)
    merged = v2m_corner_scan(**half, axis='col', merge_corners=True)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged.double(), wanted, rtol=1e-5, atol=1e-5)


def test_float32_matches_float64_reference():
    args = _random_inputs(2, CORNERS, 4, 3, 5, 7, dtype=torch.float64)
    y_ref = v2m_corner_scan_reference(**args, axis='col', delta_softplus=True)
    args32 = {k: v.detach().float() for k, v in args.items()}
    y = v2m_corner_scan(**args32, axis='col', delta_softplus=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_finite_with_grads():
    args = _random_inputs(1, ('tl', 'br'), 4, 2, 3, 5, dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = v2m_corner_scan(**args, axis='row', corners=('tl', 'br'),
                            delta_softplus=True)
    grads = torch.autograd.grad(y.float().sum(), list(args.values()))
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('change,message', [
    (dict(axis='diag'), 'axis'),
    (dict(corners=('tl', 'up')), 'corners'),
    (dict(corners='tl'), 'corners'),
    (dict(corners=('tl', )), 'delta'),
    (dict(A=torch.zeros(5, 2)), 'A'),
    (dict(B=torch.zeros(1, 4, 2, 3, 3)), 'B'),
    (dict(C=torch.zeros(7, 2)), 'C'),
    (dict(u=torch.zeros(1, 4, 2, 3)), 'u'),
    (dict(D=torch.zeros(2)), 'D'),
    (dict(delta_bias=torch.zeros(4, 2)), 'delta_bias'),
    (dict(z=torch.zeros(1, 4, 2, 4, 3)), 'z'),
])
def test_bad_arguments_raise_clear_errors(change, message):
    args = dict(u=torch.zeros(1, 4, 2, 3, 4), delta=torch.zeros(1, 4, 2, 3, 4),
                A=-torch.ones(8, 2), B=torch.zeros(1, 4, 2, 3, 4),
                C=torch.ones(8, 2), D=None, z=None, delta_bias=None,
                axis='row', corners=CORNERS)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        v2m_corner_scan(**args)
