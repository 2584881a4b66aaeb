"""Compiled CUDA scan ops of mmssm (the ``mmssm._ext`` extension).

The kernels live in ``csrc/``; this module registers them as ``torch.library``
custom ops (``mmssm::selective_scan_fwd`` and ``mmssm::selective_scan_bwd``,
with fake implementations and an autograd formula), so that ``torch.compile``
traces them without graph breaks, and exposes them with the signatures of the
public ops in :mod:`mmssm.ops`, which dispatch here for CUDA tensors.

One kernel family serves both public ops: it scans ``num_dirs * dim``
sequences per batch element, either in the mamba layout (``num_dirs == 1``)
or as VMamba's four cross-scan directions of a 2D map (``num_dirs == 4``),
reading every direction's inputs at their pixels and adding the four outputs
into one map, so no (B, 4, D, H*W) copy is made.

Inputs may be float32, float16, bfloat16 (states and sums in float32) or
float64 (everything in float64).
"""
from typing import Optional, Union

import torch
from torch import Tensor

# Kernel launch choices. The forward pass runs one block per sequence with
# (threads, positions per thread) picked by length; the first entry whose
# length bound holds wins. The backward pass runs one warp per sequence (its
# blocks sum shared B/C gradients over 8 channels) where there are at least
# _MIN_SEQUENCES_PER_WARP_BACKWARD sequences to fill the GPU, else one block
# per sequence, whose chunks must span a multiple of _STATE_STRIDE positions.
# csrc/common/selective_scan_params.h lists the compiled configurations.
_FORWARD_CONFIGS = ((128, 32, 4), (256, 64, 4), (512, 128, 4))
_BLOCK_BACKWARD_CONFIGS = ((256, 64, 4), (512, 128, 4))
_LONG_SEQUENCE_CONFIG = (128, 8)
_WARP_BACKWARD_CONFIG = (256, 8)
_MIN_SEQUENCES_PER_WARP_BACKWARD = 4096
_STATE_STRIDE = 256
_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CROSS_DIRECTIONS = 4


def _forward_config(length: int) -> tuple[int, int]:
    """Threads per block and positions per thread of the forward kernel."""
    for max_length, num_threads, num_items in _FORWARD_CONFIGS:
        if length <= max_length:
            return num_threads, num_items
    return _LONG_SEQUENCE_CONFIG


def _backward_config(num_sequences: int,
                     length: int) -> tuple[int, int, bool]:
    """Threads, positions per thread and whether one warp scans a sequence."""
    if num_sequences >= _MIN_SEQUENCES_PER_WARP_BACKWARD:
        return (*_WARP_BACKWARD_CONFIG, True)
    for max_length, num_threads, num_items in _BLOCK_BACKWARD_CONFIGS:
        if length <= max_length:
            return num_threads, num_items, False
    return (*_LONG_SEQUENCE_CONFIG, False)


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _extension():
    """The compiled extension, or a RuntimeError saying how to build it."""
    try:
        from mmssm import _ext
    except ImportError as err:
        raise RuntimeError(
            'mmssm._ext (the compiled CUDA scan ops) is not built; reinstall '
            'mmssm on a machine with CUDA (`pip install -e . '
            '--no-build-isolation`, or FORCE_CUDA=1), or set '
            'MMSSM_FORCE_PYTORCH_OPS=1 to use the PyTorch path') from err
    return _ext


@torch.library.custom_op('mmssm::selective_scan_fwd', mutates_args=())
def _scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor], z: Optional[Tensor],
                  delta_bias: Optional[Tensor], delta_softplus: bool,
                  num_dirs: int, height: int,
                  width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel forward; returns (out, y before the z gate, chunk states)."""
    num_threads, num_items = _forward_config(u.shape[-1])
    out, y_pregate, chunk_states = _extension().selective_scan_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_dirs, height,
        width, num_threads, num_items)
    return out, y_pregate, chunk_states


@_scan_forward.register_fake
def _scan_forward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                       num_dirs, height, width):
    num_chunks = (u.shape[-1] + _STATE_STRIDE - 1) // _STATE_STRIDE
    accum = _accum_dtype(u.dtype)
    out = (u.new_empty(u.shape, dtype=accum)
           if num_dirs > 1 else torch.empty_like(u))
    y_pregate = torch.empty_like(u) if z is not None else u.new_empty(0)
    chunk_states = u.new_empty(
        (u.shape[0], num_dirs * u.shape[1], num_chunks, A.shape[1]),
        dtype=accum)
    return out, y_pregate, chunk_states


@torch.library.custom_op('mmssm::selective_scan_bwd', mutates_args=())
def _scan_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor], z: Optional[Tensor],
                   delta_bias: Optional[Tensor], dout: Tensor,
                   y_pregate: Optional[Tensor], chunk_states: Tensor,
                   delta_softplus: bool, num_dirs: int, height: int,
                   width: int) -> list[Tensor]:
    """Kernel backward; returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    Weight gradients and gradients of constant B/C come in the accumulation
    dtype, as do du (for ``num_dirs > 1``) and the gradients of variable B/C.
    Absent optional inputs get empty gradients.
    """
    num_threads, num_items, warp_per_sequence = _backward_config(
        u.shape[0] * delta.shape[1], u.shape[-1])
    return list(_extension().selective_scan_backward(
        u, delta, A, B, C, D, z, delta_bias, dout, y_pregate, chunk_states,
        delta_softplus, num_dirs, height, width, num_threads, num_items,
        warp_per_sequence))


@_scan_backward.register_fake
def _scan_backward_fake(u, delta, A, B, C, D, z, delta_bias, dout, y_pregate,
                        chunk_states, delta_softplus, num_dirs, height,
                        width):
    accum = _accum_dtype(u.dtype)
    du = (u.new_empty(u.shape, dtype=accum)
          if num_dirs > 1 else torch.empty_like(u))
    empty = u.new_empty(0, dtype=accum)
    return [
        du,
        torch.empty_like(delta),
        A.new_empty(A.shape),
        B.new_empty(B.shape, dtype=accum),
        C.new_empty(C.shape, dtype=accum),
        D.new_empty(D.shape) if D is not None else empty,
        torch.empty_like(z) if z is not None else u.new_empty(0),
        (delta_bias.new_empty(delta_bias.shape)
         if delta_bias is not None else empty),
    ]


def _scan_setup_context(ctx, inputs, output) -> None:
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_dirs, height,
     width) = inputs
    _, y_pregate, chunk_states = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y_pregate,
                          chunk_states)
    ctx.delta_softplus = delta_softplus
    ctx.num_dirs = num_dirs
    ctx.height = height
    ctx.width = width
    ctx.mark_non_differentiable(y_pregate, chunk_states)


def _scan_autograd_backward(ctx, dout, _dy_pregate, _dchunk_states):
    (u, delta, A, B, C, D, z, delta_bias, y_pregate,
     chunk_states) = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = _scan_backward(
        u, delta, A, B, C, D, z, delta_bias,
        dout.to(u.dtype).contiguous(), y_pregate if z is not None else None,
        chunk_states, ctx.delta_softplus, ctx.num_dirs, ctx.height, ctx.width)
    return (du.to(u.dtype), ddelta, dA, dB.to(B.dtype), dC.to(C.dtype),
            dD if D is not None else None, dz if z is not None else None,
            ddelta_bias if delta_bias is not None else None, None, None, None,
            None)


torch.library.register_autograd(
    'mmssm::selective_scan_fwd',
    _scan_autograd_backward,
    setup_context=_scan_setup_context)


def _check_input(tensor: Tensor, name: str, ndim: int, shape_text: str) -> None:
    if not isinstance(tensor, Tensor) or not tensor.is_cuda:
        raise ValueError(f'{name} must be a CUDA tensor for the compiled '
                         f'scan ops, got {type(tensor).__name__} on '
                         f'{getattr(tensor, "device", None)}')
    if tensor.dim() != ndim:
        raise ValueError(f'{name} must be {shape_text}, got shape '
                         f'{tuple(tensor.shape)}')
    if tensor.is_complex():
        raise ValueError(f'{name} must be real, got {tensor.dtype}')


def _weight(tensor: Optional[Tensor], accum: torch.dtype,
            name: str) -> Optional[Tensor]:
    if tensor is None:
        return None
    if tensor.is_complex():
        raise ValueError(f'{name} must be real, got {tensor.dtype}')
    return tensor.to(accum).contiguous()


def _input_dtype(u: Tensor) -> torch.dtype:
    if u.dtype not in _INPUT_DTYPES:
        raise ValueError('u must be float32, float16, bfloat16 or float64 '
                         f'for the compiled scan ops, got {u.dtype}')
    return u.dtype


def selective_scan_cuda(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Selective scan with the compiled kernel (see mmssm.ops.selective_scan).

    Args:
        u (Tensor): Input, (batch, dim, L).
        delta (Tensor): Step sizes before bias/softplus, (batch, dim, L).
        A (Tensor): Real state matrix diagonal, (dim, N).
        B (Tensor): Input projection: (batch, N, L), grouped
            (batch, G, N, L) with channel d in group d // (dim // G), or
            constant (dim, N).
        C (Tensor): Output projection, shaped like B.
        D (Tensor, optional): Skip connection weight, (dim,).
        z (Tensor, optional): Gate, (batch, dim, L); the output is
            multiplied by silu(z).
        delta_bias (Tensor, optional): Added to delta, (dim,).
        delta_softplus (bool): Apply softplus to delta + delta_bias.
        return_last_state (bool): Also return the final state.

    Returns:
        Tensor | tuple[Tensor, Tensor]: y (batch, dim, L) in u's dtype, and
        with return_last_state the last state (batch, dim, N) in float32
        (float64 for float64 inputs); the state carries no gradient.
    """
    _check_input(u, 'u', 3, '(batch, dim, L)')
    _check_input(A, 'A', 2, '(dim, N)')
    dtype = _input_dtype(u)
    accum = _accum_dtype(dtype)

    def projection(x: Tensor, name: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() not in (2, 3, 4):
            raise ValueError(f'{name} must be (batch, N, L), (batch, G, N, L) '
                             f'or (dim, N), got shape '
                             f'{tuple(getattr(x, "shape", ()))}')
        if x.dim() == 2:
            return _weight(x, accum, name)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return x.to(dtype).contiguous()

    out, _, chunk_states = _scan_forward(
        u.contiguous(), delta.to(dtype).contiguous(), _weight(A, accum, 'A'),
        projection(B, 'B'), projection(C, 'C'), _weight(D, accum, 'D'),
        z.to(dtype).contiguous() if z is not None else None,
        _weight(delta_bias, accum, 'delta_bias'), delta_softplus, 1, 1, 1)
    if return_last_state:
        return out, chunk_states[:, :, -1]
    return out


def cross_selective_scan_cuda(u: Tensor,
                              delta: Tensor,
                              A: Tensor,
                              B: Tensor,
                              C: Tensor,
                              D: Optional[Tensor] = None,
                              delta_bias: Optional[Tensor] = None,
                              delta_softplus: bool = False) -> Tensor:
    """VMamba's fused four-direction scan with the compiled kernel.

    See mmssm.ops.cross_selective_scan: direction k scans the pixels in
    cross_scan's k-th order and the four outputs are summed per pixel.

    Args:
        u (Tensor): Input map shared by the directions, (B, D, H, W).
        delta (Tensor): Step sizes at their pixels, (B, 4, D, H, W).
        A (Tensor): Real state matrix diagonals, (4 * D, N).
        B (Tensor): Input projections at their pixels, (B, 4, N, H, W).
        C (Tensor): Output projections at their pixels, (B, 4, N, H, W).
        D (Tensor, optional): Skip weights, (4 * D,).
        delta_bias (Tensor, optional): Added to delta, (4 * D,).
        delta_softplus (bool): Apply softplus to delta + delta_bias.

    Returns:
        Tensor: (B, D, H, W) in u's dtype (summed in float32, or float64 for
        float64 inputs).
    """
    _check_input(u, 'u', 4, '(B, D, H, W)')
    _check_input(A, 'A', 2, '(4 * D, N)')
    dtype = _input_dtype(u)
    accum = _accum_dtype(dtype)
    batch, dim, height, width = u.shape
    num_states = A.shape[1]
    expected = {
        'delta': (delta, (batch, _CROSS_DIRECTIONS, dim, height, width)),
        'B': (B, (batch, _CROSS_DIRECTIONS, num_states, height, width)),
        'C': (C, (batch, _CROSS_DIRECTIONS, num_states, height, width)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f'{name} must have shape {shape} for u of shape '
                             f'{tuple(u.shape)} and A of shape '
                             f'{tuple(A.shape)}, got {tuple(tensor.shape)}')
    length = height * width
    out, _, _ = _scan_forward(
        u.reshape(batch, dim, length).contiguous(),
        delta.to(dtype).reshape(batch, _CROSS_DIRECTIONS * dim,
                                length).contiguous(),
        _weight(A, accum, 'A'),
        B.to(dtype).reshape(batch, _CROSS_DIRECTIONS, num_states,
                            length).contiguous(),
        C.to(dtype).reshape(batch, _CROSS_DIRECTIONS, num_states,
                            length).contiguous(),
        _weight(D, accum, 'D'), None, _weight(delta_bias, accum, 'delta_bias'),
        delta_softplus, _CROSS_DIRECTIONS, height, width)
    return out.to(dtype).reshape(batch, dim, height, width)
