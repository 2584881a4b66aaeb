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

VMamba's cross scan with few states has its own kernels
(``mmssm::cross_scan_fwd/bwd``): with one state the plane kernels, one block
per (batch, channel) map of up to 4096 pixels (every VMamba v2 stage at 224²)
walking all four directions by block scans, and on larger maps one block per
band of whole rows or columns, the bands joined by a carry pass; otherwise
the tiled kernels, every row or column scanned by one thread and the lines
joined by a carry pass. Two more kernel families serve the 2D
scans: ``mmssm::wavefront_scan_fwd/bwd``
(Mamba2D's wavefront recurrence, one launch per pass over the whole map) and
``mmssm::v2m_corner_scan_fwd/bwd`` (one row or column pass of V2M's corner
scan, walking each corner's lines by indexing: with one state and no gate
the plane kernels, on whole maps or bands of whole rows, with the state
reset at each line's start; otherwise one thread per line). Around the
scans:
``mmssm::causal_conv1d_fwd/bwd`` (Vim's short convolution + SiLU) and
``mmssm::norm_fwd/bwd`` (LayerNorm / RMSNorm stored in the autocast dtype).

Traced calls (``torch.compile``) go through the registered ops; eager calls
run the same kernel functions without torch.library's per-call dispatch, and
with gradients through C++ autograd Functions of the same formulas
(``csrc/pytorch/autograd.cpp``), so the backward pass runs no Python
(:class:`_KernelOp`).

Inputs may be float32, float16, bfloat16 (states and sums in float32) or
float64 (everything in float64).
"""
import functools
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .causal_conv1d import ACTIVATIONS as CONV_ACTIVATIONS

# Kernel launch choices. The forward pass runs one thread per (sequence,
# chunk of positions) with every state in registers where dstate <=
# _THREAD_SCAN_MAX_STATES: a whole sequence per thread where there are at
# least _MIN_SEQUENCES_FOR_ONE_CHUNK sequences, else chunks of a multiple of
# _STATE_STRIDE positions sized for about _TARGET_FORWARD_THREADS threads
# (these chunks cost one more pass over the inputs). Larger states take the
# block forward kernel: one block per sequence with (threads, positions per
# thread) picked by length; the first entry whose length bound holds wins.
# The backward pass runs one thread per (sequence, chunk of positions) (its
# blocks sum shared B/C gradients over 32 channels a warp) in the mamba
# layout with dstate <= _THREAD_BACKWARD_MAX_STATES where that makes at
# least _MIN_THREADS_FOR_THREAD_BACKWARD threads: a whole sequence per
# thread where there are at least _TARGET_BACKWARD_THREADS sequences, else
# chunks of a multiple of _STATE_STRIDE positions sized for about that many
# threads (these chunks cost one more pass of the adjoint alone). A thread
# walks its positions one after the other, so the kernel needs many threads
# to fill the GPU. On the H100 (bf16 backward, N = 16) it beats the warp
# kernel from Vim-T 224² batch 64 (24576 sequences of 197 positions, 0.59
# against 0.99 ms) to Vim-S 1024² batch 8 (6144 sequences of 4097 in
# chunks of 512, 1.80 against 3.06 ms); chunks of 768 (37k threads) took
# 2.19 ms there, and of 256 (104k threads) 1.86. Else one warp per
# sequence (its blocks sum shared B/C gradients over 8 channels) where there
# are at least _MIN_SEQUENCES_PER_WARP_BACKWARD sequences, else one block per
# sequence, whose chunks must span a multiple of _STATE_STRIDE positions.
# csrc/common/selective_scan_params.h lists the compiled configurations.
_FORWARD_CONFIGS = ((128, 32, 4), (256, 64, 4), (512, 128, 4))
_BLOCK_BACKWARD_CONFIGS = ((256, 64, 4), (512, 128, 4))
_LONG_SEQUENCE_CONFIG = (128, 8)
_WARP_BACKWARD_CONFIG = (256, 8)
_MIN_SEQUENCES_PER_WARP_BACKWARD = 4096
_MIN_THREADS_FOR_THREAD_BACKWARD = 24576
_TARGET_BACKWARD_THREADS = 65536
_THREAD_BACKWARD_MAX_STATES = 16
_THREAD_SCAN_MAX_STATES = 64
_MIN_SEQUENCES_FOR_ONE_CHUNK = 32768
_TARGET_FORWARD_THREADS = 65536
_STATE_STRIDE = 256
_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CROSS_DIRECTIONS = 4


def _forward_config(length: int) -> tuple[int, int]:
    """Threads per block and positions per thread of the forward kernel."""
    for max_length, num_threads, num_items in _FORWARD_CONFIGS:
        if length <= max_length:
            return num_threads, num_items
    return _LONG_SEQUENCE_CONFIG


def _forward_chunk_length(num_sequences: int, length: int) -> int:
    """Positions per thread of the thread-per-chunk forward kernel."""
    if num_sequences >= _MIN_SEQUENCES_FOR_ONE_CHUNK:
        return length
    chunks = -(-_TARGET_FORWARD_THREADS // num_sequences)
    strides = -(-length // _STATE_STRIDE)
    return min(length, -(-strides // chunks) * _STATE_STRIDE)


def _backward_chunk_length(num_sequences: int, length: int) -> int:
    """Positions per thread of the thread-per-chunk backward kernel."""
    strides = -(-length // _STATE_STRIDE)
    chunks = max(1, -(-_TARGET_BACKWARD_THREADS // num_sequences))
    return -(-strides // chunks) * _STATE_STRIDE


def _backward_config(num_sequences: int, length: int, dstate: int,
                     num_dirs: int) -> tuple[int, int, str]:
    """Threads, positions per thread and the backward kernel.

    Args:
        num_sequences: Sequences of the launch (batch * num_dirs * dim).
        length: Positions per sequence.
        dstate: States per position.
        num_dirs: 1 (mamba layout) or 4 (cross layout).

    Returns:
        (threads per block, positions per thread, kernel), the kernel being
        ``'thread'`` (threads unused; positions: the chunk each thread
        walks), ``'warp'`` or ``'block'``.
    """
    if num_dirs == 1 and dstate <= _THREAD_BACKWARD_MAX_STATES:
        chunk_length = _backward_chunk_length(num_sequences, length)
        threads = num_sequences * -(-length // chunk_length)
        if threads >= _MIN_THREADS_FOR_THREAD_BACKWARD:
            return 0, chunk_length, 'thread'
    if num_sequences >= _MIN_SEQUENCES_PER_WARP_BACKWARD:
        return (*_WARP_BACKWARD_CONFIG, 'warp')
    for max_length, num_threads, num_items in _BLOCK_BACKWARD_CONFIGS:
        if length <= max_length:
            return num_threads, num_items, 'block'
    return (*_LONG_SEQUENCE_CONFIG, 'block')


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _KernelOp:
    """A kernel function registered as a ``torch.library`` custom op.

    ``torch.compile`` (and export, and any tracing with tensor subclasses)
    calls the registered op, one graph node with its fake implementation and
    autograd formula. Eager calls on plain tensors bypass torch.library's
    dispatch, which costs tens of microseconds of host time per call (more
    than many of these kernels run; a Vim forward pass makes about a hundred
    such calls): without gradients they call the function itself, with
    gradients the op's eager autograd function, which runs the same formula
    as a C++ autograd Function (``csrc/pytorch/autograd.cpp``), so that the
    backward pass enters no Python.

    Args:
        name: The op's qualified name, ``mmssm::<op>``.
        function: The kernel function; its annotations give the schema.
    """

    def __init__(self, name: str, function: Callable) -> None:
        self.name = name
        self.function = function
        self.op = torch.library.custom_op(name, mutates_args=())(function)
        self._eager_autograd: Optional[Callable] = None

    def register_fake(self, fake: Callable) -> Callable:
        """Registers the op's fake (meta) implementation."""
        self.op.register_fake(fake)
        return fake

    def register_autograd(self, backward: Callable, setup_context: Callable,
                          eager: Callable) -> None:
        """Registers the op's autograd formula.

        Args:
            backward: The formula's backward, for the registered op.
            setup_context: What the registered op saves for it.
            eager: Called with the op's arguments in eager mode with
                gradients; returns the function's outputs with the autograd
                graph of the same formula attached.
        """
        torch.library.register_autograd(
            self.name, backward, setup_context=setup_context)
        self._eager_autograd = eager

    def __call__(self, *args):
        if torch.compiler.is_compiling() or type(args[0]) is not Tensor:
            return self.op(*args)
        if self._eager_autograd is not None and torch.is_grad_enabled():
            return self._eager_autograd(*args)
        return self.function(*args)


def _compiled_autograd(name: str) -> Callable:
    """Calls ``mmssm._ext.<name>``, an op's C++ autograd Function (the
    extension is looked up at call time: it loads on first use)."""
    return lambda *args: getattr(_extension(), name)(*args)


def _kernel_op(name: str) -> Callable[[Callable], _KernelOp]:
    """Decorator registering a kernel function as a :class:`_KernelOp`."""
    return lambda function: _KernelOp(name, function)


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


def _scan_forward_launch(u: Tensor, delta: Tensor, A: Tensor, num_dirs: int,
                         reverse: bool) -> tuple[int, int, int]:
    """Threads per block, positions per thread and chunk length (0: the
    block kernel) of the forward kernel."""
    if reverse and num_dirs > 1:
        raise ValueError('reverse is only supported with num_dirs 1 (the '
                         "cross layout fixes each direction's order), got "
                         f'num_dirs {num_dirs}')
    num_threads, num_items = _forward_config(u.shape[-1])
    # The cross layout keeps the block kernel: its column-major directions
    # read a pixel per row, which the thread kernel's row tiles cannot
    # coalesce (8.6 ms against 1.4 ms at VMamba-T stage 1, 224², batch 64).
    chunk_length = (0 if num_dirs > 1 or A.shape[1] > _THREAD_SCAN_MAX_STATES
                    else _forward_chunk_length(
                        delta.shape[0] * delta.shape[1], u.shape[-1]))
    return num_threads, num_items, chunk_length


@_kernel_op('mmssm::selective_scan_fwd')
def _scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor], z: Optional[Tensor],
                  delta_bias: Optional[Tensor], delta_softplus: bool,
                  num_dirs: int, height: int, width: int,
                  reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel forward; returns (out, y before the z gate, chunk states)."""
    out, y_pregate, chunk_states = _extension().selective_scan_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_dirs, height,
        width, reverse, *_scan_forward_launch(u, delta, A, num_dirs, reverse))
    return out, y_pregate, chunk_states


def _scan_eager(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], z: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool,
                num_dirs: int, height: int, width: int,
                reverse: bool) -> list[Tensor]:
    """Eager autograd call of the scan, with both passes' launch choices."""
    return _extension().selective_scan_autograd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_dirs, height,
        width, reverse, *_scan_forward_launch(u, delta, A, num_dirs, reverse),
        *_backward_config(u.shape[0] * delta.shape[1], u.shape[-1],
                          A.shape[1], num_dirs))


@_scan_forward.register_fake
def _scan_forward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                       num_dirs, height, width, reverse):
    num_chunks = (u.shape[-1] + _STATE_STRIDE - 1) // _STATE_STRIDE
    accum = _accum_dtype(u.dtype)
    out = (u.new_empty(u.shape, dtype=accum)
           if num_dirs > 1 else torch.empty_like(u))
    y_pregate = torch.empty_like(u) if z is not None else u.new_empty(0)
    chunk_states = u.new_empty(
        (u.shape[0], num_dirs * u.shape[1], num_chunks, A.shape[1]),
        dtype=accum)
    return out, y_pregate, chunk_states


@_kernel_op('mmssm::selective_scan_bwd')
def _scan_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor], z: Optional[Tensor],
                   delta_bias: Optional[Tensor], dout: Tensor,
                   y_pregate: Optional[Tensor], chunk_states: Tensor,
                   delta_softplus: bool, num_dirs: int, height: int,
                   width: int, reverse: bool) -> list[Tensor]:
    """Kernel backward; returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    Weight gradients and gradients of constant B/C come in the accumulation
    dtype, as do du (for ``num_dirs > 1``) and the gradients of variable B/C.
    Absent optional inputs get empty gradients.
    """
    num_threads, num_items, kernel = _backward_config(
        u.shape[0] * delta.shape[1], u.shape[-1], A.shape[1], num_dirs)
    return list(_extension().selective_scan_backward(
        u, delta, A, B, C, D, z, delta_bias, dout, y_pregate, chunk_states,
        delta_softplus, num_dirs, height, width, reverse, num_threads,
        num_items, kernel))


@_scan_backward.register_fake
def _scan_backward_fake(u, delta, A, B, C, D, z, delta_bias, dout, y_pregate,
                        chunk_states, delta_softplus, num_dirs, height,
                        width, reverse):
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
     width, reverse) = inputs
    _, y_pregate, chunk_states = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y_pregate,
                          chunk_states)
    ctx.delta_softplus = delta_softplus
    ctx.num_dirs = num_dirs
    ctx.height = height
    ctx.width = width
    ctx.reverse = reverse
    ctx.mark_non_differentiable(y_pregate, chunk_states)


def _scan_autograd_backward(ctx, dout, _dy_pregate, _dchunk_states):
    (u, delta, A, B, C, D, z, delta_bias, y_pregate,
     chunk_states) = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = _scan_backward(
        u, delta, A, B, C, D, z, delta_bias,
        _dense(dout, u.dtype), y_pregate if z is not None else None,
        chunk_states, ctx.delta_softplus, ctx.num_dirs, ctx.height, ctx.width,
        ctx.reverse)
    return (_dense(du, u.dtype), ddelta, dA, _dense(dB, B.dtype),
            _dense(dC, C.dtype),
            dD if D is not None else None, dz if z is not None else None,
            ddelta_bias if delta_bias is not None else None, None, None, None,
            None, None)


_scan_forward.register_autograd(
    _scan_autograd_backward, _scan_setup_context, _scan_eager)


def _check_input(tensor: Tensor, name: str, ndim: int,
                 shape_text: str) -> None:
    if not isinstance(tensor, Tensor) or not tensor.is_cuda:
        raise ValueError(f'{name} must be a CUDA tensor for the compiled '
                         f'scan ops, got {type(tensor).__name__} on '
                         f'{getattr(tensor, "device", None)}')
    if tensor.dim() != ndim:
        raise ValueError(f'{name} must be {shape_text}, got shape '
                         f'{tuple(tensor.shape)}')
    if tensor.is_complex():
        raise ValueError(f'{name} must be real, got {tensor.dtype}')


def _dense(tensor: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``tensor.to(dtype).contiguous()``, skipping the calls that would
    return it unchanged (each costs microseconds of host time, and every op
    call converts a dozen arguments)."""
    if (dtype is None or tensor.dtype == dtype) and tensor.is_contiguous():
        return tensor
    return tensor.to(dtype or tensor.dtype).contiguous()


def _weight(tensor: Optional[Tensor], accum: torch.dtype,
            name: str) -> Optional[Tensor]:
    if tensor is None:
        return None
    if tensor.is_complex():
        raise ValueError(f'{name} must be real, got {tensor.dtype}')
    return _dense(tensor, accum)


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
    reverse: bool = False,
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
        reverse (bool): Run the recurrence from position L-1 down to 0 (the
            kernel reads the rows backwards; no flipped copies).

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
        return _dense(x, dtype)

    out, _, chunk_states = _scan_forward(
        _dense(u), _dense(delta, dtype), _weight(A, accum, 'A'),
        projection(B, 'B'), projection(C, 'C'), _weight(D, accum, 'D'),
        _dense(z, dtype) if z is not None else None,
        _weight(delta_bias, accum, 'delta_bias'), delta_softplus, 1, 1, 1,
        reverse)
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
    weights = (_weight(A, accum, 'A'), _weight(D, accum, 'D'),
               _weight(delta_bias, accum, 'delta_bias'))
    plane = _cross_uses_planes(height, width, num_states, dtype, u.device)
    if plane or _cross_uses_tiles(batch, dim, num_states):
        out, _, _ = _cross_forward(_dense(u),
                                   _dense(delta, dtype), weights[0],
                                   _dense(B, dtype),
                                   _dense(C, dtype), weights[1],
                                   weights[2], delta_softplus, plane)
        return _dense(out, dtype)
    length = height * width
    out, _, _ = _scan_forward(
        _dense(u.reshape(batch, dim, length)),
        _dense(delta.reshape(batch, _CROSS_DIRECTIONS * dim, length), dtype),
        weights[0],
        _dense(B.reshape(batch, _CROSS_DIRECTIONS, num_states, length),
               dtype),
        _dense(C.reshape(batch, _CROSS_DIRECTIONS, num_states, length),
               dtype), weights[1], None, weights[2], delta_softplus,
        _CROSS_DIRECTIONS, height, width, False)
    return _dense(out, dtype).reshape(batch, dim, height, width)


# VMamba's cross scan with one state on maps of up to
# _CROSS_PLANE_MAX_PIXELS pixels (kCrossPlaneMaxPixels) runs on the plane
# kernels (csrc/common/cuda/cross_plane_kernel.cuh): a block holds one
# (batch, channel) map in shared memory and walks the four directions by
# block scans, summing the outputs (and in backward du) before one store.
# H100, VMamba-T stage 1 224² batch 64, fp16, fwd / fwd+bwd ms: see
# docs/benchmarks.md, seventh and eighth sessions. Larger maps whose sides
# are at most _CROSS_PLANE_MAX_PIXELS take the same kernels in bands of whole
# rows and of whole columns (csrc/common/cuda/cross_band_kernel.cuh), joined
# by a carry pass: 1.2-1.7x the tiled kernels at VMamba's detection shapes
# (docs/benchmarks.md, tenth session). Other cases with few
# states run on the tiled line-scan kernels
# (csrc/common/cuda/cross_scan_kernel.cuh) where there are few sequences
# (batch * 4 * dim below _CROSS_TILED_MAX_SEQUENCES) of up to
# _CROSS_TILED_MAX_STATES states: every row or column is scanned on its own
# by one thread through shared-memory tiles and the lines are joined by a
# carry pass, so a few long walks (detection maps at batch 2) still give
# thousands of independent lines. Many sequences fill the GPU with the
# selective-scan kernels' cross layout (one sequence per block or warp),
# which measured faster there. H100, VMamba-T, fp16, fwd+bwd ms (tiled /
# cross layout): stage 1 1280x800 batch 2 (768 sequences) 3.35 / 5.16;
# 224² batch 64, stage 1 (24576) 4.55 / 3.93, stage 3 (98304) 2.05 / 1.55.
_CROSS_PLANE_MAX_PIXELS = 4096
_CROSS_TILED_MAX_STATES = 4
_CROSS_TILED_MAX_SEQUENCES = 8192
# Positions per chunk of the tiled kernels (kCrossChunk in
# csrc/common/cross_scan_params.h), which size the saved chunk states.
_CROSS_CHUNK = 16


# Shared maps of the plane kernels' backward pass, and steps of a walk per
# thread (PlaneMaps::kBackwardMaps, kCrossPlaneItems).
_CROSS_PLANE_BACKWARD_MAPS = 6
_CROSS_PLANE_ITEMS = 8


@functools.lru_cache(maxsize=None)
def _shared_memory_per_block(device: torch.device) -> int:
    """Bytes of shared memory a block may opt in to on ``device``."""
    properties = torch.cuda.get_device_properties(device)
    return properties.shared_memory_per_block_optin


def _plane_maps_fit(pixels: int, dtype: torch.dtype,
                    device: Optional[torch.device]) -> bool:
    """Whether the plane kernels' backward maps of a block walking
    ``pixels`` pixels fit the shared memory a block of ``device`` may use.

    A float32 map of 4096 pixels takes 101 KB, which the supported GPUs
    (sm_80, sm_90) allow, so without a device float32 maps are taken to
    fit; in float64 it takes twice that, more than an sm_80 GPU's 163 KB.
    """
    # Each map covers the steps of the block's threads (whole warps of
    # _CROSS_PLANE_ITEMS steps each), plus a padding slot per 32.
    steps = _CROSS_PLANE_ITEMS * 32
    cover = (pixels + steps - 1) // steps * steps
    element = 8 if dtype == torch.float64 else 4
    needed = _CROSS_PLANE_BACKWARD_MAPS * (cover + cover // 32 + 1) * element
    if device is None:
        return element == 4
    return needed <= _shared_memory_per_block(device)


def _cross_uses_planes(height: int,
                       width: int,
                       num_states: int,
                       dtype: torch.dtype = torch.float32,
                       device: Optional[torch.device] = None) -> bool:
    """Whether a cross scan runs on the plane kernels (see above); a band of
    a larger map holds up to _CROSS_PLANE_MAX_PIXELS pixels."""
    if num_states != 1 or max(height, width) > _CROSS_PLANE_MAX_PIXELS:
        return False
    return _plane_maps_fit(min(height * width, _CROSS_PLANE_MAX_PIXELS),
                           dtype, device)


def _cross_uses_tiles(batch: int, dim: int, num_states: int) -> bool:
    """Whether a cross scan runs on the tiled kernels (see above)."""
    return (num_states <= _CROSS_TILED_MAX_STATES and
            batch * _CROSS_DIRECTIONS * dim < _CROSS_TILED_MAX_SEQUENCES)


@_kernel_op('mmssm::cross_scan_fwd')
def _cross_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor], delta_bias: Optional[Tensor],
                   delta_softplus: bool,
                   plane: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Plane (``plane``) or tiled kernels' forward; returns (out, chunk
    states, line step sums), the last two empty for the plane kernels.

    ``out`` is in u's dtype from the plane kernels, which write it whole,
    and in the accumulation dtype (float32, or float64) from the tiled
    ones, which add the directions into it.
    """
    out, chunk_states, line_dt = _extension().cross_scan_forward(
        u, delta, A, B, C, D, delta_bias, delta_softplus, plane)
    return out, chunk_states, line_dt


def _cross_buffer_shapes(u: Tensor, A: Tensor,
                         plane: bool) -> tuple[tuple, tuple]:
    """Shapes of the chunk states and line step sums the forward saves: the
    plane kernels save none on a whole map, and on a map in bands the state
    entering each band (one chunk per line, no step sums)."""
    batch, dim, height, width = u.shape
    banded = plane and height * width > _CROSS_PLANE_MAX_PIXELS
    max_lines = max(height, width) if banded or not plane else 0
    max_chunks = 1 if banded else -(-max_lines // _CROSS_CHUNK)
    return ((batch, _CROSS_DIRECTIONS, dim, A.shape[1], max_chunks,
             max_lines), (batch, _CROSS_DIRECTIONS, dim,
                          0 if plane else max_lines))


@_cross_forward.register_fake
def _cross_forward_fake(u, delta, A, B, C, D, delta_bias, delta_softplus,
                        plane):
    accum = _accum_dtype(u.dtype)
    chunk_shape, line_shape = _cross_buffer_shapes(u, A, plane)
    return (u.new_empty(u.shape, dtype=u.dtype if plane else accum),
            u.new_empty(chunk_shape, dtype=accum),
            u.new_empty(line_shape, dtype=accum))


@_kernel_op('mmssm::cross_scan_bwd')
def _cross_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                    D: Optional[Tensor], delta_bias: Optional[Tensor],
                    dout: Tensor, chunk_states: Tensor, line_dt: Tensor,
                    delta_softplus: bool, plane: bool) -> list[Tensor]:
    """Plane or tiled kernels' backward; returns (du, ddelta, dA, dB, dC,
    dD, ddelta_bias), dB and dC in the accumulation dtype, du in it from
    the tiled kernels and in u's dtype from the plane kernels (as out);
    absent optional inputs get empty gradients."""
    return list(_extension().cross_scan_backward(
        u, delta, A, B, C, D, delta_bias, dout, chunk_states, line_dt,
        delta_softplus, plane))


@_cross_backward.register_fake
def _cross_backward_fake(u, delta, A, B, C, D, delta_bias, dout,
                         chunk_states, line_dt, delta_softplus, plane):
    accum = _accum_dtype(u.dtype)
    empty = u.new_empty(0, dtype=accum)
    return [
        u.new_empty(u.shape, dtype=u.dtype if plane else accum),
        torch.empty_like(delta),
        A.new_empty(A.shape),
        B.new_empty(B.shape, dtype=accum),
        C.new_empty(C.shape, dtype=accum),
        D.new_empty(D.shape) if D is not None else empty,
        (delta_bias.new_empty(delta_bias.shape)
         if delta_bias is not None else empty),
    ]


def _cross_setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, delta_bias, delta_softplus, plane = inputs
    _, chunk_states, line_dt = output
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, chunk_states,
                          line_dt)
    ctx.delta_softplus = delta_softplus
    ctx.plane = plane
    ctx.mark_non_differentiable(chunk_states, line_dt)


def _cross_autograd_backward(ctx, dout, _dchunk_states, _dline_dt):
    (u, delta, A, B, C, D, delta_bias, chunk_states,
     line_dt) = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, ddelta_bias = _cross_backward(
        u, delta, A, B, C, D, delta_bias,
        _dense(dout, u.dtype), chunk_states, line_dt,
        ctx.delta_softplus, ctx.plane)
    return (_dense(du, u.dtype), ddelta, dA, _dense(dB, B.dtype),
            _dense(dC, C.dtype),
            dD if D is not None else None,
            ddelta_bias if delta_bias is not None else None, None, None)


_cross_forward.register_autograd(
    _cross_autograd_backward, _cross_setup_context,
    _compiled_autograd('cross_scan_autograd'))


# Mamba2D's wavefront scan. A block owns a group of (channel, state) lanes of
# one batch element and one warp per column of a tile of 16 columns
# (kWavefrontNarrowTileWidth in csrc/common/wavefront_scan_params.h: its
# forward kernel runs four blocks per SM). With fewer such sequences (batch
# x channel groups) than twice the SMs (two backward blocks fit an SM), one
# block per sequence walking its tiles in turn leaves SMs idle; there each
# block walks one tile, and the tiles of a map run side by side a few rows
# apart (tiles in flight). Mamba2D-T stage 1 at 1280x800, batch 2 (64
# sequences of 20 tiles) took 5.94 ms forward + backward in flight on an
# H100, against 10.99 ms with 32-column tiles in turn (the previous rule for
# few sequences) and 15.26 ms with 16-column ones. With many sequences the
# two took the same time (stage 1 at 224x224, batch 64: 8.94 ms). The op
# also takes tiles of up to kWavefrontMaxTileWidth columns (whose forward
# kernel loads each step's inputs a step ahead).
_WAVEFRONT_TILE = 16
_WAVEFRONT_ORIGINS = ('tl', 'br')


def _lanes_per_channel(dstate: int) -> int:
    """Lanes of a channel: the state size rounded up to a power of two."""
    return 1 << (dstate - 1).bit_length()


def _wavefront_tiling(width: int, channels: int,
                      dstate: int) -> tuple[int, int, int]:
    """Channel groups, tile width and number of tiles of the wavefront scan."""
    groups = -(-channels // (32 // _lanes_per_channel(dstate)))
    tile = min(_WAVEFRONT_TILE, width)
    return groups, tile, -(-width // tile)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    """SMs of ``device``."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _wavefront_tiles_in_flight(sequences: int, num_tiles: int,
                               device: torch.device) -> bool:
    """Whether each tile of the wavefront scan gets its own block: more
    than one tile, and fewer sequences than twice ``device``'s SMs."""
    return num_tiles > 1 and sequences < 2 * _multiprocessors(device)


@_kernel_op('mmssm::wavefront_scan_fwd')
def _wavefront_forward(x: Tensor, delta_t: Tensor, delta_l: Tensor,
                       A_t: Tensor, A_l: Tensor, B_t: Tensor, B_l: Tensor,
                       C: Tensor, D: Optional[Tensor],
                       delta_bias_t: Optional[Tensor],
                       delta_bias_l: Optional[Tensor], delta_softplus: bool,
                       origin_br: bool, tile_width: int,
                       tiles_in_flight: bool) -> tuple[Tensor, Tensor]:
    """Kernel forward; returns (out, states of the tiles' last columns)."""
    out, boundary = _extension().wavefront_scan_forward(
        x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
        delta_bias_l, delta_softplus, origin_br, tile_width, tiles_in_flight)
    return out, boundary


@_wavefront_forward.register_fake
def _wavefront_forward_fake(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                            delta_bias_t, delta_bias_l, delta_softplus,
                            origin_br, tile_width, tiles_in_flight):
    batch, height, width, channels = x.shape
    groups, _, _ = _wavefront_tiling(width, channels, A_t.shape[1])
    num_tiles = -(-width // min(tile_width, width))
    boundary = x.new_empty((batch, groups, num_tiles - 1, height, 32),
                           dtype=_accum_dtype(x.dtype))
    return torch.empty_like(x), boundary


@_kernel_op('mmssm::wavefront_scan_bwd')
def _wavefront_backward(x: Tensor, delta_t: Tensor, delta_l: Tensor,
                        A_t: Tensor, A_l: Tensor, B_t: Tensor, B_l: Tensor,
                        C: Tensor, D: Optional[Tensor],
                        delta_bias_t: Optional[Tensor],
                        delta_bias_l: Optional[Tensor], dout: Tensor,
                        boundary: Tensor, delta_softplus: bool,
                        origin_br: bool, tile_width: int,
                        tiles_in_flight: bool) -> list[Tensor]:
    """Kernel backward; returns the gradients of x, delta_t, delta_l, A_t,
    A_l, B_t, B_l, C, D, delta_bias_t and delta_bias_l.

    Those of B_t, B_l and C come in the accumulation dtype; absent optional
    inputs get empty gradients.
    """
    return list(_extension().wavefront_scan_backward(
        x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
        delta_bias_l, dout, boundary, delta_softplus, origin_br, tile_width,
        tiles_in_flight))


@_wavefront_backward.register_fake
def _wavefront_backward_fake(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                             delta_bias_t, delta_bias_l, dout, boundary,
                             delta_softplus, origin_br, tile_width,
                             tiles_in_flight):
    accum = _accum_dtype(x.dtype)
    empty = x.new_empty(0, dtype=accum)

    def optional(weight):
        return weight.new_empty(weight.shape) if weight is not None else empty

    return [
        torch.empty_like(x),
        torch.empty_like(delta_t),
        torch.empty_like(delta_l),
        A_t.new_empty(A_t.shape),
        A_l.new_empty(A_l.shape),
        B_t.new_empty(B_t.shape, dtype=accum),
        B_l.new_empty(B_l.shape, dtype=accum),
        C.new_empty(C.shape, dtype=accum),
        optional(D),
        optional(delta_bias_t),
        optional(delta_bias_l),
    ]


def _wavefront_setup_context(ctx, inputs, output) -> None:
    (x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
     delta_bias_l, delta_softplus, origin_br, tile_width,
     tiles_in_flight) = inputs
    _, boundary = output
    ctx.save_for_backward(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                          delta_bias_t, delta_bias_l, boundary)
    ctx.delta_softplus = delta_softplus
    ctx.origin_br = origin_br
    ctx.tile_width = tile_width
    ctx.tiles_in_flight = tiles_in_flight
    ctx.mark_non_differentiable(boundary)


def _wavefront_autograd_backward(ctx, dout, _dboundary):
    (x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
     delta_bias_l, boundary) = ctx.saved_tensors
    (dx, ddelta_t, ddelta_l, dA_t, dA_l, dB_t, dB_l, dC, dD, ddelta_bias_t,
     ddelta_bias_l) = _wavefront_backward(
         x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
         delta_bias_l,
         _dense(dout, x.dtype), boundary, ctx.delta_softplus,
         ctx.origin_br, ctx.tile_width, ctx.tiles_in_flight)
    return (dx, ddelta_t, ddelta_l, dA_t, dA_l, _dense(dB_t, B_t.dtype),
            _dense(dB_l, B_l.dtype), _dense(dC, C.dtype),
            dD if D is not None else None,
            ddelta_bias_t if delta_bias_t is not None else None,
            ddelta_bias_l if delta_bias_l is not None else None, None, None,
            None, None)


_wavefront_forward.register_autograd(
    _wavefront_autograd_backward, _wavefront_setup_context,
    _compiled_autograd('wavefront_scan_autograd'))


def wavefront_scan_2d_cuda(x: Tensor,
                           delta_t: Tensor,
                           delta_l: Tensor,
                           A_t: Tensor,
                           A_l: Tensor,
                           B_t: Tensor,
                           B_l: Tensor,
                           C: Tensor,
                           D: Optional[Tensor] = None,
                           delta_bias_t: Optional[Tensor] = None,
                           delta_bias_l: Optional[Tensor] = None,
                           delta_softplus: bool = False,
                           origin: str = 'tl') -> Tensor:
    """Mamba2D's 2D scan with the compiled kernel.

    See mmssm.ops.wavefront_scan_2d for the recurrence; one launch walks the
    whole map (forward) and one the whole backward pass.

    Args:
        x (Tensor): Input, (B, H, W, E).
        delta_t (Tensor): Step sizes of the top path, (B, H, W, E).
        delta_l (Tensor): Step sizes of the left path, (B, H, W, E).
        A_t (Tensor): State matrix of the top path, (E, N), N <= 32.
        A_l (Tensor): State matrix of the left path, (E, N).
        B_t (Tensor): Input matrix of the top path, (B, H, W, N).
        B_l (Tensor): Input matrix of the left path, (B, H, W, N).
        C (Tensor): Output matrix, (B, H, W, N).
        D (Tensor, optional): Skip weight, (E,).
        delta_bias_t (Tensor, optional): Bias of delta_t, (E,).
        delta_bias_l (Tensor, optional): Bias of delta_l, (E,).
        delta_softplus (bool): Apply softplus to the biased step sizes.
        origin (str): 'tl' (top-left) or 'br' (bottom-right).

    Returns:
        Tensor: (B, H, W, E) in x's dtype (states and sums in float32, or
        float64 for float64 inputs).
    """
    if origin not in _WAVEFRONT_ORIGINS:
        raise ValueError(f'origin must be one of {_WAVEFRONT_ORIGINS}, got '
                         f'{origin!r}')
    _check_input(x, 'x', 4, '(B, H, W, E)')
    _check_input(A_t, 'A_t', 2, '(E, N)')
    dtype = _input_dtype(x)
    accum = _accum_dtype(dtype)
    groups, tile_width, num_tiles = _wavefront_tiling(x.shape[2], x.shape[3],
                                                      A_t.shape[1])
    tiles_in_flight = _wavefront_tiles_in_flight(x.shape[0] * groups,
                                                 num_tiles, x.device)
    out, _ = _wavefront_forward(
        _dense(x), _dense(delta_t, dtype),
        _dense(delta_l, dtype), _weight(A_t, accum, 'A_t'),
        _weight(A_l, accum, 'A_l'), _dense(B_t, dtype),
        _dense(B_l, dtype), _dense(C, dtype),
        _weight(D, accum, 'D'), _weight(delta_bias_t, accum, 'delta_bias_t'),
        _weight(delta_bias_l, accum, 'delta_bias_l'), delta_softplus,
        origin == 'br', tile_width, tiles_in_flight)
    return out


# V2M's corner scan with one state and no gate runs on the plane kernels
# (csrc/common/cuda/v2m_plane_kernel.cuh) on maps of up to
# _CROSS_PLANE_MAX_PIXELS pixels: the cross scan's block scans over a whole
# map, with the state reset at every line's start. The row pass on larger
# maps (detection sizes) takes them in bands of whole rows, which need no
# carry as the lines are independent. They save nothing for the backward
# pass. Other passes run on the thread-per-line kernels: one thread walks
# one (channel, line) pair with all its states, and the forward pass saves
# the states every _V2M_CHUNK positions as (batch, K, chunks - 1, N, D,
# lines) (csrc/common/v2m_scan_params.h).
_V2M_CHUNK = 16
_V2M_CORNERS = ('tl', 'tr', 'bl', 'br')
_V2M_AXES = ('row', 'col')


def _v2m_uses_planes(height: int, width: int, axis_col: bool,
                     num_states: int, gated: bool, dtype: torch.dtype,
                     device: Optional[torch.device]) -> bool:
    """Whether a V2M pass runs on the plane kernels (see above); mirrors
    v2m_uses_planes in csrc/common/cuda/v2m_plane_kernel.cuh."""
    pixels = height * width
    fits = pixels <= _CROSS_PLANE_MAX_PIXELS or (
        not axis_col and width <= _CROSS_PLANE_MAX_PIXELS)
    return (num_states == 1 and not gated and fits
            and _plane_maps_fit(min(pixels, _CROSS_PLANE_MAX_PIXELS), dtype,
                                device))


def _backwards_mask(corners: tuple[str, ...], axis: str) -> int:
    """Bit k set where corner k walks its lines against the index.

    A corner on the right walks rows right to left; one at the bottom walks
    columns bottom to top (mmssm.ops.v2m_scan's module docstring).
    """
    mask = 0
    for k, corner in enumerate(corners):
        if corner not in _V2M_CORNERS:
            raise ValueError(f'corners entry {corner!r} is not one of '
                             f'{_V2M_CORNERS}')
        side = corner[1] == 'r' if axis == 'row' else corner[0] == 'b'
        mask |= int(side) << k
    return mask


@_kernel_op('mmssm::v2m_corner_scan_fwd')
def _v2m_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Optional[Tensor], z: Optional[Tensor],
                 delta_bias: Optional[Tensor], delta_softplus: bool,
                 axis_col: bool, backwards_mask: int,
                 merge_corners: bool) -> tuple[Tensor, Tensor]:
    """Kernel forward; returns (out, chunk states).

    out is (batch, K, D, H, W) in u's dtype, or with merge_corners the sum
    over the corners, (batch, D, H, W) in the accumulation dtype.
    """
    out, chunk_states = _extension().v2m_corner_scan_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, axis_col,
        backwards_mask, merge_corners)
    return out, chunk_states


@_v2m_forward.register_fake
def _v2m_forward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                      axis_col, backwards_mask, merge_corners):
    batch, corners, dim, height, width = delta.shape
    lines, length = (width, height) if axis_col else (height, width)
    saved_chunks = (0 if _v2m_uses_planes(height, width, axis_col,
                                          A.shape[1], z is not None, u.dtype,
                                          u.device)
                    else -(-length // _V2M_CHUNK) - 1)
    accum = _accum_dtype(u.dtype)
    chunk_states = u.new_empty(
        (batch, corners, saved_chunks, A.shape[1], dim, lines), dtype=accum)
    if merge_corners:
        return delta.new_empty((batch, dim, height, width),
                               dtype=accum), chunk_states
    return torch.empty_like(delta), chunk_states


@_kernel_op('mmssm::v2m_corner_scan_bwd')
def _v2m_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor], z: Optional[Tensor],
                  delta_bias: Optional[Tensor], dout: Tensor,
                  chunk_states: Tensor, delta_softplus: bool, axis_col: bool,
                  backwards_mask: int, merge_corners: bool) -> list[Tensor]:
    """Kernel backward; returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    dout is shaped and typed like the forward's out. dz, dB and dC come in
    the accumulation dtype, and so does du except from the plane kernels
    (u's dtype); absent optional inputs get empty gradients.
    """
    return list(_extension().v2m_corner_scan_backward(
        u, delta, A, B, C, D, z, delta_bias, dout, chunk_states,
        delta_softplus, axis_col, backwards_mask, merge_corners))


@_v2m_backward.register_fake
def _v2m_backward_fake(u, delta, A, B, C, D, z, delta_bias, dout,
                       chunk_states, delta_softplus, axis_col,
                       backwards_mask, merge_corners):
    accum = _accum_dtype(u.dtype)
    empty = u.new_empty(0, dtype=accum)
    # The plane kernels write du in u's dtype.
    height, width = delta.shape[-2:]
    planes = _v2m_uses_planes(height, width, axis_col, A.shape[1],
                              z is not None, u.dtype, u.device)
    return [
        u.new_empty(u.shape, dtype=u.dtype if planes else accum),
        torch.empty_like(delta),
        A.new_empty(A.shape),
        B.new_empty(B.shape, dtype=accum),
        C.new_empty(C.shape, dtype=accum),
        D.new_empty(D.shape) if D is not None else empty,
        z.new_empty(z.shape, dtype=accum) if z is not None else empty,
        (delta_bias.new_empty(delta_bias.shape)
         if delta_bias is not None else empty),
    ]


def _v2m_setup_context(ctx, inputs, output) -> None:
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, axis_col,
     backwards_mask, merge_corners) = inputs
    _, chunk_states = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_states)
    ctx.delta_softplus = delta_softplus
    ctx.axis_col = axis_col
    ctx.backwards_mask = backwards_mask
    ctx.merge_corners = merge_corners
    ctx.mark_non_differentiable(chunk_states)


def _v2m_autograd_backward(ctx, dout, _dchunk_states):
    u, delta, A, B, C, D, z, delta_bias, chunk_states = ctx.saved_tensors
    out_dtype = _accum_dtype(u.dtype) if ctx.merge_corners else u.dtype
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = _v2m_backward(
        u, delta, A, B, C, D, z, delta_bias, _dense(dout, out_dtype),
        chunk_states, ctx.delta_softplus, ctx.axis_col, ctx.backwards_mask,
        ctx.merge_corners)
    return (_dense(du, u.dtype), ddelta, dA, _dense(dB, B.dtype),
            _dense(dC, C.dtype),
            dD if D is not None else None,
            _dense(dz, z.dtype) if z is not None else None,
            ddelta_bias if delta_bias is not None else None, None, None, None,
            None)


_v2m_forward.register_autograd(
    _v2m_autograd_backward, _v2m_setup_context,
    _compiled_autograd('v2m_corner_scan_autograd'))


def v2m_corner_scan_cuda(u: Tensor,
                         delta: Tensor,
                         A: Tensor,
                         B: Tensor,
                         C: Tensor,
                         D: Optional[Tensor] = None,
                         z: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None,
                         delta_softplus: bool = False,
                         axis: str = 'row',
                         corners: Sequence[str] = _V2M_CORNERS,
                         merge_corners: bool = False) -> Tensor:
    """One pass of V2M's corner scan with the compiled kernel.

    See mmssm.ops.v2m_corner_scan (its module docstring gives the math):
    every tensor is read and written in the spatial layout, the walk
    direction of each corner is pure indexing.

    Args:
        u (Tensor): Input, (batch, K, D, H, W) or (batch, D, H, W) shared by
            the corners.
        delta (Tensor): Step sizes before bias/softplus, (batch, K, D, H, W).
        A (Tensor): State matrices, (K * D, N), N <= 64.
        B (Tensor): Input matrices, (batch, K, N, H, W) or constant (K * D, N).
        C (Tensor): Output matrices, shaped like B's options.
        D (Tensor, optional): Skip weights, (K * D,).
        z (Tensor, optional): Gate, shaped like u; the output is multiplied
            by silu(z).
        delta_bias (Tensor, optional): Added to delta, (K * D,).
        delta_softplus (bool): Apply softplus to delta + delta_bias.
        axis (str): 'row' or 'col'.
        corners (Sequence[str]): Corner names from ('tl', 'tr', 'bl', 'br').
        merge_corners (bool): Return the sum over the corners, which the
            kernel accumulates in place of the per-corner outputs.

    Returns:
        Tensor: (batch, K, D, H, W) in u's dtype (states and sums in float32,
        or float64 for float64 inputs); with merge_corners (batch, D, H, W)
        in float32 (float64 for float64 inputs).
    """
    if axis not in _V2M_AXES:
        raise ValueError(f"axis must be 'row' or 'col', got {axis!r}")
    if isinstance(corners, str):
        raise ValueError('corners must be a sequence of corner names, got the '
                         f'string {corners!r}')
    _check_input(u, 'u', 5 if u.dim() == 5 else 4,
                 '(batch, K, D, H, W) or (batch, D, H, W)')
    _check_input(A, 'A', 2, '(K * D, N)')
    dtype = _input_dtype(u)
    accum = _accum_dtype(dtype)

    def matrix(x: Tensor, name: str) -> Tensor:
        if x.dim() == 2:
            return _weight(x, accum, name)
        return _dense(x, dtype)

    out, _ = _v2m_forward(
        _dense(u), _dense(delta, dtype), _weight(A, accum, 'A'),
        matrix(B, 'B'), matrix(C, 'C'), _weight(D, accum, 'D'),
        _dense(z, dtype) if z is not None else None,
        _weight(delta_bias, accum, 'delta_bias'), delta_softplus,
        axis == 'col', _backwards_mask(tuple(corners), axis), merge_corners)
    return out


# Causal depthwise conv1d (+ SiLU), Vim's and Mamba's short convolution: one
# kernel computes out = act(bias + taps * x) in float32 (float64 for float64
# inputs) from x in its own dtype and float32 weights; the backward kernel
# recomputes SiLU's derivative from x and returns dx in x's dtype and the
# weight and bias gradients in the accumulation dtype.


@_kernel_op('mmssm::causal_conv1d_fwd')
def _conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                  reverse: bool, silu: bool) -> Tensor:
    """Kernel forward; weight is (E, K) and bias (E,) in the accum dtype."""
    return _extension().causal_conv1d_forward(x, weight, bias, reverse, silu)


@_conv_forward.register_fake
def _conv_forward_fake(x, weight, bias, reverse, silu):
    return torch.empty_like(x)


@_kernel_op('mmssm::causal_conv1d_bwd')
def _conv_backward(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                   dout: Tensor, reverse: bool, silu: bool) -> list[Tensor]:
    """Kernel backward; returns (dx, dweight, dbias), dbias empty without a
    bias."""
    return list(_extension().causal_conv1d_backward(x, weight, bias, dout,
                                                    reverse, silu))


@_conv_backward.register_fake
def _conv_backward_fake(x, weight, bias, dout, reverse, silu):
    return [
        torch.empty_like(x),
        weight.new_empty(weight.shape),
        bias.new_empty(bias.shape)
        if bias is not None else weight.new_empty(0),
    ]


def _conv_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, reverse, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.reverse = reverse
    ctx.silu = silu


def _conv_autograd_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = _conv_backward(x, weight, bias,
                                        _dense(dout, x.dtype),
                                        ctx.reverse, ctx.silu)
    return dx, dweight, dbias if bias is not None else None, None, None


_conv_forward.register_autograd(
    _conv_autograd_backward, _conv_setup_context,
    _compiled_autograd('causal_conv1d_autograd'))


def causal_conv1d_cuda(x: Tensor,
                       weight: Tensor,
                       bias: Optional[Tensor] = None,
                       reverse: bool = False,
                       activation: Optional[str] = None) -> Tensor:
    """Causal depthwise conv1d (+ SiLU) with the compiled kernel.

    See mmssm.ops.causal_conv1d. A custom op is not autocast-aware, so the
    autocast policy of ``F.conv1d`` is applied here: under CUDA autocast a
    non-float64 x is cast to the autocast dtype, which is the output dtype.
    The weights stay in float32 (float64 for float64 inputs), at least as
    precise as the autocast-cast weights of ``F.conv1d``.

    Args:
        x (Tensor): Input, (B, E, L); any strides.
        weight (Tensor): Taps, (E, 1, K), 1 <= K <= 8.
        bias (Tensor, optional): (E,).
        reverse (bool): Anti-causal: position t sees t .. t + K - 1.
        activation (str, optional): None or 'silu'.

    Returns:
        Tensor: (B, E, L) in x's dtype (or the autocast dtype).
    """
    if activation not in CONV_ACTIVATIONS:
        raise ValueError(f'activation must be one of {CONV_ACTIVATIONS}, '
                         f'got {activation!r}')
    _check_input(x, 'x', 3, '(B, E, L)')
    _check_input(weight, 'weight', 3, '(E, 1, K)')
    dtype = x.dtype
    if torch.is_autocast_enabled('cuda') and dtype != torch.float64:
        dtype = torch.get_autocast_dtype('cuda')
    if dtype not in _INPUT_DTYPES:
        raise ValueError('x must be float32, float16, bfloat16 or float64 '
                         f'for the compiled causal conv1d, got {dtype}')
    accum = _accum_dtype(dtype)
    channels, _, kernel = weight.shape
    return _conv_forward(
        _dense(x, dtype),
        _weight(weight.reshape(channels, kernel), accum, 'weight'),
        _weight(bias, accum, 'bias'), reverse, activation == 'silu')


# LayerNorm / RMSNorm over channels: the kernels compute in float32 (float64
# for float64 inputs) from x in its own dtype and store the output in x's
# dtype or, for a float32 x, in float16/bfloat16; the backward kernel returns
# dx in x's dtype and the weight and bias gradients in the accumulation
# dtype.


@_kernel_op('mmssm::norm_fwd')
def _norm_forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  eps: float, rms: bool, channels_first: bool,
                  out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel forward; returns (out, mean, rstd), mean empty for RMSNorm.

    x is (rows, C), or (B, C, positions) with channels_first; out is
    (rows, C) either way."""
    return tuple(_extension().norm_forward(x, weight, bias, eps, rms,
                                           channels_first, out_dtype))


def _norm_rows(x: Tensor, channels_first: bool) -> int:
    return x.shape[0] * x.shape[2] if channels_first else x.shape[0]


@_norm_forward.register_fake
def _norm_forward_fake(x, weight, bias, eps, rms, channels_first, out_dtype):
    rows = _norm_rows(x, channels_first)
    accum = _accum_dtype(x.dtype)
    return (x.new_empty((rows, x.shape[1]), dtype=out_dtype),
            x.new_empty((0 if rms else rows, ), dtype=accum),
            x.new_empty((rows, ), dtype=accum))


@_kernel_op('mmssm::norm_bwd')
def _norm_backward(dout: Tensor, x: Tensor, weight: Optional[Tensor],
                   bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                   rms: bool, channels_first: bool) -> list[Tensor]:
    """Kernel backward; returns dx and the weight and bias gradients as
    the rows of one (2, C) tensor (zero where weight or bias is None)."""
    return list(_extension().norm_backward(dout, x, weight, bias, mean, rstd,
                                           rms, channels_first))


@_norm_backward.register_fake
def _norm_backward_fake(dout, x, weight, bias, mean, rstd, rms,
                        channels_first):
    return [
        torch.empty_like(x),
        x.new_empty((2, x.shape[1]), dtype=_accum_dtype(x.dtype))
    ]


def _norm_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _eps, rms, channels_first, _out_dtype = inputs
    out, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.rms = rms
    ctx.channels_first = channels_first
    ctx.out_dtype = out.dtype


def _norm_autograd_backward(ctx, dout, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dweight_dbias = _norm_backward(
        _dense(dout, ctx.out_dtype), x, weight, bias, mean, rstd,
        ctx.rms, ctx.channels_first)
    return (dx, dweight_dbias[0] if weight is not None else None,
            dweight_dbias[1] if bias is not None else None, None, None, None,
            None)


_norm_forward.register_autograd(
    _norm_autograd_backward, _norm_setup_context,
    _compiled_autograd('norm_autograd'))


def _norm_cuda(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float, out_dtype: Optional[torch.dtype],
               channels_first: bool, rms: bool) -> Tensor:
    """LayerNorm or RMSNorm with the compiled kernels; see mmssm.ops.norm."""
    if not x.is_cuda:
        raise ValueError(f'x must be a CUDA tensor, got {x.device}')
    if x.dtype not in _INPUT_DTYPES:
        raise ValueError('x must be float32, float16, bfloat16 or float64 '
                         f'for the compiled norms, got {x.dtype}')
    out_dtype = out_dtype or x.dtype
    if out_dtype not in _INPUT_DTYPES:
        raise ValueError('out_dtype must be float32, float16, bfloat16 or '
                         f'float64 for the compiled norms, got {out_dtype}')
    # The kernels store x's dtype, or a half type from float32; other pairs
    # compute from x converted to the dtype they compute in anyway.
    if out_dtype != x.dtype and x.dtype != torch.float32:
        x = x.to(torch.float64 if out_dtype == torch.float64 else
                 torch.float32)
    accum = _accum_dtype(x.dtype)
    if channels_first:
        if x.dim() < 2:
            raise ValueError('a channels-first x must be (B, C, *spatial), '
                             f'got shape {tuple(x.shape)}')
        batch, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
        flat = _dense(x.reshape(batch, channels, -1))
        out_shape = (batch, *spatial, channels)
    else:
        channels = x.shape[-1]
        flat = _dense(x.reshape(-1, channels))
        out_shape = (*x.shape[:-1], channels)
    out, _, _ = _norm_forward(flat, _weight(weight, accum, 'weight'),
                              _weight(bias, accum, 'bias'), float(eps), rms,
                              channels_first, out_dtype)
    return out.view(out_shape)


def layer_norm_cuda(x: Tensor,
                    weight: Optional[Tensor] = None,
                    bias: Optional[Tensor] = None,
                    eps: float = 1e-5,
                    out_dtype: Optional[torch.dtype] = None,
                    channels_first: bool = False) -> Tensor:
    """LayerNorm over channels with the compiled kernels.

    See mmssm.ops.layer_norm. Channel-last rows take at most 2048 channels.

    Args:
        x (Tensor): (..., C), or (B, C, *spatial) with channels_first.
        weight (Tensor, optional): (C,).
        bias (Tensor, optional): (C,).
        eps (float): Added to the variance.
        out_dtype (torch.dtype, optional): Output dtype; None for x's.
        channels_first (bool): Normalise dim 1, return channel-last.

    Returns:
        Tensor: (..., C) or (B, *spatial, C) in out_dtype.
    """
    return _norm_cuda(x, weight, bias, eps, out_dtype, channels_first, False)


def rms_norm_cuda(x: Tensor,
                  weight: Optional[Tensor] = None,
                  eps: float = 1e-5,
                  out_dtype: Optional[torch.dtype] = None,
                  channels_first: bool = False) -> Tensor:
    """RMSNorm over channels with the compiled kernels.

    See mmssm.ops.rms_norm. Channel-last rows take at most 2048 channels.

    Args:
        x (Tensor): (..., C), or (B, C, *spatial) with channels_first.
        weight (Tensor, optional): (C,).
        eps (float): Added to the mean square.
        out_dtype (torch.dtype, optional): Output dtype; None for x's.
        channels_first (bool): Normalise dim 1, return channel-last.

    Returns:
        Tensor: (..., C) or (B, *spatial, C) in out_dtype.
    """
    return _norm_cuda(x, weight, None, eps, out_dtype, channels_first, True)
