"""mmssm's CUDA kernel sources built for the CPU with tests/ops/emulator/
(one std::thread per CUDA thread), so that tests check the kernels' logic
against the references on machines without a GPU.

The kernel headers of csrc/common/cuda are copied with two rewrites that C++
cannot express through macros: a dynamic shared-memory declaration
(``extern __shared__ ... name[];``) becomes a pointer to the emulator's
buffer, and a launch ``kernel<<<grid, block, bytes, stream>>>(args);``
becomes ``cuda_emulator::launch(kernel, grid, block, bytes, args);``.
"""
import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest
import torch
from torch import Tensor

from mmssm.ops import cuda_ops

REPO = Path(__file__).resolve().parents[2]
KERNELS = REPO / 'csrc' / 'common'
LAUNCHERS = REPO / 'csrc' / 'pytorch' / 'cuda'
EMULATOR = Path(__file__).resolve().parent / 'emulator'
# c10's Half and BFloat16, which a launcher names (the kernels run on float
# and double only).
TORCH_INCLUDE = Path(torch.__file__).resolve().parent / 'include'

_DYNAMIC_SHARED = re.compile(
    r'extern __shared__ (?:__align__\(\d+\) )?unsigned char (\w+)\[\];')
# A launch statement: the kernel (a name with template arguments), the
# launch configuration and the arguments.
_LAUNCH = re.compile(
    r'(\b[A-Za-z_][\w:]*(?:<[^;{}]*?>)?)\s*<<<(.*?)>>>\((.*?)\);', re.S)


def _top_level_parts(text: str) -> list:
    """``text`` split at the commas outside parentheses, brackets and
    braces."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in '([{':
            depth += 1
        elif char in ')]}':
            depth -= 1
        elif char == ',' and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    return parts + [text[start:].strip()]


def emulated_source(text: str) -> str:
    """A kernel header rewritten for the emulator."""
    text = _DYNAMIC_SHARED.sub(
        r'unsigned char *\1 = cuda_emulator::dynamic_shared();', text)

    def launch(match: re.Match) -> str:
        kernel, config, args = (part.strip() for part in match.groups())
        grid, threads, shared_bytes, _stream = _top_level_parts(config)
        return (f'cuda_emulator::launch({kernel}, {grid}, {threads}, '
                f'{shared_bytes}, {args});')

    return '#include "cuda_emulator.h"\n' + _LAUNCH.sub(launch, text)


#: Edit for build_emulated_library: the plane kernels' band budget (cross
#: scan bands, V2M row bands) at 256 pixels instead of 4096, so that small
#: maps take many bands.
SMALL_PLANE_BUDGET = {
    'constexpr int kCrossPlaneMaxPixels = 4096;':
    'constexpr int kCrossPlaneMaxPixels = 256;'
}


def build_emulated_library(driver: str, build_dir: Path,
                           edits: Optional[Dict[str, str]] = None
                           ) -> ctypes.CDLL:
    """Compiles tests/ops/emulator/``driver`` against the rewritten kernel
    and launcher headers into ``build_dir`` and loads it; skips the test
    without g++.

    Args:
        driver: File name of the driver in tests/ops/emulator.
        build_dir: Where the headers and the library go.
        edits: Text of the headers that occurs once, and what replaces it
            (e.g. smaller blocks, or a deliberate bug).
    """
    compiler = shutil.which('g++')
    if compiler is None:
        pytest.skip('the CUDA emulator needs g++ (C++20)')
    source_dir = build_dir / 'kernels'
    source_dir.mkdir(parents=True, exist_ok=True)
    sources = {
        path.name: path.read_text()
        for path in [
            *KERNELS.glob('*.h'), *(KERNELS / 'cuda').glob('*.cuh'),
            *LAUNCHERS.glob('*.cuh')
        ]
    }
    for old, new in (edits or {}).items():
        found = [name for name, text in sources.items() if old in text]
        assert len(found) == 1 and sources[found[0]].count(old) == 1, (
            f'{old!r} must occur once in the headers, found in {found}')
        sources[found[0]] = sources[found[0]].replace(old, new)
    digest = hashlib.sha256()
    for name, text in sorted(sources.items()):
        if name.endswith('.cuh'):
            text = emulated_source(text)
        (source_dir / name).write_text(text)
        digest.update(text.encode())
    library = build_dir / f'{Path(driver).stem}_{digest.hexdigest()[:12]}.so'
    if not library.exists():
        command = [
            compiler, '-std=c++20', '-O1', '-fPIC', '-shared', '-pthread',
            f'-I{EMULATOR / "stubs"}', f'-I{EMULATOR}', f'-I{source_dir}',
            f'-I{TORCH_INCLUDE}',
            str(EMULATOR / driver), '-o', str(library)
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, (
            f'the emulated kernels do not compile:\n{" ".join(command)}\n'
            f'{result.stderr[-4000:]}')
    return ctypes.CDLL(str(library))


def _pointer(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


class EmulatedCrossPlaneScan(torch.autograd.Function):
    """mmssm.ops.cross_selective_scan with one state through the emulated
    plane kernels (in bands on maps over the library's band budget): float32
    or float64 inputs (weights in the accumulation dtype), every
    gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, shared_memory: int, u: Tensor,
                delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], delta_bias: Optional[Tensor],
                delta_softplus: bool) -> Tensor:
        inputs = _contiguous(u, delta, A, B, C, D, delta_bias)
        out = torch.empty_like(inputs[0])
        # The states entering the bands, as make_cross_params sizes them;
        # unused on a whole map.
        batch, dim, height, width = u.shape
        entering = torch.zeros(batch, 4, dim, 1, 1, max(height, width),
                               dtype=A.dtype)
        _run(library, shared_memory, False, delta_softplus,
             inputs + [out, entering])
        ctx.save_for_backward(*inputs[:5], entering)
        ctx.optional = inputs[5:]
        ctx.library, ctx.shared_memory = library, shared_memory
        ctx.delta_softplus = delta_softplus
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        u, delta, A, B, C, entering = ctx.saved_tensors
        D, delta_bias = ctx.optional
        # du is written whole, in u's dtype.
        grads = _gradient_buffers((u, delta, A, B, C, D, delta_bias), A.dtype,
                                  (0, 1))
        tensors = [u, delta, A, B, C, D, delta_bias, None, entering,
                   dout.contiguous()] + grads
        _run(ctx.library, ctx.shared_memory, True, ctx.delta_softplus,
             tensors)
        return (None, None, *grads, None)


def _contiguous(*tensors: Optional[Tensor]) -> list:
    """The tensors detached and contiguous, None kept."""
    return [None if t is None else t.detach().contiguous() for t in tensors]


def _gradient_buffers(inputs: Sequence[Optional[Tensor]], accum: torch.dtype,
                      own_dtype: Sequence[int]) -> list:
    """Zeroed gradients of ``inputs``, as the C++ entry points give them:
    those at ``own_dtype`` in their input's dtype, the others in the
    accumulation dtype; none for an absent input."""
    return [
        None if t is None else
        torch.zeros(t.shape, dtype=t.dtype if i in own_dtype else accum)
        for i, t in enumerate(inputs)
    ]


def _call(function, arguments: Sequence[int],
          tensors: Sequence[Optional[Tensor]]) -> None:
    """Calls an entry point of an emulator driver with its integer
    arguments, the pointers of ``tensors`` (null for None) and an error
    buffer; raises its error message."""
    pointers = (ctypes.c_void_p * len(tensors))(
        *[_pointer(t) for t in tensors])
    error = ctypes.create_string_buffer(1024)
    if function(*arguments, pointers, error, len(error)) != 0:
        raise RuntimeError(error.value.decode())


def _run(library: ctypes.CDLL, shared_memory: int, backward: bool,
         delta_softplus: bool, tensors: Sequence[Optional[Tensor]]) -> None:
    u = tensors[0]
    _call(library.emulated_cross_plane,
          (int(u.dtype == torch.float64), int(backward), *u.shape,
           int(delta_softplus), shared_memory), tensors)


class EmulatedCrossTiledScan(torch.autograd.Function):
    """mmssm.ops.cross_selective_scan with up to 4 states through the
    emulated tiled kernels: float32 or float64 inputs (weights in the
    accumulation dtype, out in it too), every gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, u: Tensor, delta: Tensor,
                A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
        inputs = _contiguous(u, delta, A, B, C, D, delta_bias)
        batch, dim, height, width = u.shape
        dstate = A.shape[1]
        lines = max(height, width)
        chunks = -(-lines // cuda_ops._CROSS_CHUNK)
        # The directions add into out; the buffers the backward pass reads.
        out = torch.zeros(u.shape, dtype=A.dtype)
        chunk_states = torch.zeros(batch, 4, dim, dstate, chunks, lines,
                                   dtype=A.dtype)
        line_dt = torch.zeros(batch, 4, dim, lines, dtype=A.dtype)
        _run_tiled(library, False, delta_softplus,
                   inputs + [out, chunk_states, line_dt])
        ctx.save_for_backward(*inputs[:5], chunk_states, line_dt)
        ctx.optional = inputs[5:]
        ctx.library, ctx.delta_softplus = library, delta_softplus
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        u, delta, A, B, C, chunk_states, line_dt = ctx.saved_tensors
        D, delta_bias = ctx.optional
        # The directions add into du, in the accumulation dtype.
        grads = _gradient_buffers((u, delta, A, B, C, D, delta_bias), A.dtype,
                                  (1, ))
        tensors = [u, delta, A, B, C, D, delta_bias, None, chunk_states,
                   line_dt, dout.contiguous()] + grads
        _run_tiled(ctx.library, True, ctx.delta_softplus, tensors)
        return (None, *grads, None)


def _run_tiled(library: ctypes.CDLL, backward: bool, delta_softplus: bool,
               tensors: Sequence[Optional[Tensor]]) -> None:
    u, A = tensors[0], tensors[2]
    _call(library.emulated_cross_tiled,
          (int(u.dtype == torch.float64), int(backward), *u.shape,
           A.shape[1], int(delta_softplus)), tensors)


class _V2MCall(ctypes.Structure):
    """The driver's V2MCall: the shape and options of one pass."""
    _fields_ = [(name, ctypes.c_int) for name in (
        'batch', 'corners', 'dim', 'height', 'width', 'dstate', 'shared_u',
        'var_B', 'var_C', 'shared_z', 'axis_col', 'delta_softplus',
        'merge_corners', 'plane')] + [('backwards_mask', ctypes.c_int64)]


class EmulatedV2MCornerScan(torch.autograd.Function):
    """One pass of mmssm.ops.v2m_corner_scan through the emulated kernels,
    arguments as cuda_ops.v2m_corner_scan_cuda after its checks: float32 or
    float64 inputs, weights (and constant B/C) in the accumulation dtype;
    ``plane`` runs the plane kernels, else the thread-per-line ones."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, u: Tensor, delta: Tensor,
                A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], delta_bias: Optional[Tensor],
                delta_softplus: bool, axis_col: bool, backwards_mask: int,
                merge_corners: bool, plane: bool = False) -> Tensor:
        inputs = _contiguous(u, delta, A, B, C, D, z, delta_bias)
        batch, corners, dim, height, width = delta.shape
        call = _V2MCall(batch, corners, dim, height, width, A.shape[1],
                        u.dim() == 4, B.dim() == 5, C.dim() == 5,
                        z is not None and z.dim() == 4, axis_col,
                        delta_softplus, merge_corners, plane, backwards_mask)
        lines = width if axis_col else height
        chunks = -(-(height if axis_col else width) // cuda_ops._V2M_CHUNK)
        accum = A.dtype
        out = (torch.zeros(batch, dim, height, width, dtype=accum)
               if merge_corners else torch.zeros_like(inputs[1]))
        chunk_states = torch.zeros(batch, corners, chunks - 1, A.shape[1],
                                   dim, lines, dtype=accum)
        _call(library.emulated_v2m_corner_scan,
              (int(accum == torch.float64), 0, ctypes.byref(call)),
              inputs + [out, chunk_states])
        ctx.save_for_backward(*inputs[:5], chunk_states)
        ctx.optional = inputs[5:]
        ctx.library, ctx.call = library, call
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        u, delta, A, B, C, chunk_states = ctx.saved_tensors
        D, z, delta_bias = ctx.optional
        accum = A.dtype
        # du and dz in the accumulation dtype (shared ones collect
        # corners), except du from the plane kernels.
        grads = _gradient_buffers((u, delta, A, B, C, D, z, delta_bias),
                                  accum, (0, 1) if ctx.call.plane else (1, ))
        _call(ctx.library.emulated_v2m_corner_scan,
              (int(accum == torch.float64), 1, ctypes.byref(ctx.call)),
              [u, delta, A, B, C, D, z, delta_bias, None, chunk_states,
               dout.contiguous()] + grads)
        return (None, *grads, None, None, None, None, None)


class _WavefrontCall(ctypes.Structure):
    """The driver's WavefrontCall: the shape and options of a call."""
    _fields_ = [(name, ctypes.c_int) for name in (
        'batch', 'height', 'width', 'channels', 'dstate', 'tile_width',
        'delta_softplus', 'origin_br', 'tiles_in_flight', 'num_slots')]


class EmulatedWavefrontScan(torch.autograd.Function):
    """mmssm.ops.wavefront_scan_2d through the emulated kernels, tiles of
    ``tile_width`` columns, one block per sequence (``num_slots`` None) or
    one per tile with ``num_slots`` backward scratch slots (tiles in
    flight): float32 or float64 inputs, weights in the accumulation dtype,
    every gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, tile_width: int,
                num_slots: Optional[int], x: Tensor,
                delta_t: Tensor, delta_l: Tensor, A_t: Tensor, A_l: Tensor,
                B_t: Tensor, B_l: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias_t: Optional[Tensor],
                delta_bias_l: Optional[Tensor], delta_softplus: bool,
                origin_br: bool) -> Tensor:
        inputs = _contiguous(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                             delta_bias_t, delta_bias_l)
        batch, height, width, channels = x.shape
        dstate = A_t.shape[1]
        call = _WavefrontCall(batch, height, width, channels, dstate,
                              tile_width, delta_softplus, origin_br,
                              num_slots is not None, num_slots or 0)
        groups = -(-channels // (32 // cuda_ops._lanes_per_channel(dstate)))
        tiles = -(-width // min(tile_width, width))
        out = torch.zeros_like(inputs[0])
        boundary = torch.zeros(batch, groups, tiles - 1, height, 32,
                               dtype=A_t.dtype)
        _call(library.emulated_wavefront_scan,
              (int(A_t.dtype == torch.float64), 0, ctypes.byref(call)),
              inputs + [out, boundary])
        ctx.save_for_backward(*inputs[:8], boundary)
        ctx.optional = inputs[8:]
        ctx.library, ctx.call = library, call
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        *tensors, boundary = ctx.saved_tensors
        inputs = tensors + ctx.optional
        accum = inputs[3].dtype
        grads = _gradient_buffers(inputs, accum, (0, 1, 2))
        _call(ctx.library.emulated_wavefront_scan,
              (int(accum == torch.float64), 1, ctypes.byref(ctx.call)),
              inputs + [None, boundary, dout.contiguous()] + grads)
        return (None, None, None, *grads, None, None)


class _ScanCall(ctypes.Structure):
    """The driver's ScanCall: shape, options and launch choices."""
    _fields_ = [(name, ctypes.c_int) for name in (
        'batch', 'dim', 'num_dirs', 'length', 'dstate', 'height', 'width',
        'groups_B', 'groups_C', 'delta_softplus', 'reverse', 'num_threads',
        'num_items', 'chunk_length', 'backward_kernel')]


# The backward kernels as the driver numbers them.
_SCAN_BACKWARD_KERNELS = ('thread', 'warp', 'block')


class EmulatedSelectiveScan(torch.autograd.Function):
    """mmssm.ops.selective_scan (mamba layout) through the emulated kernels
    the launch choices pick: ``forward`` = (threads, positions per thread,
    chunk length; 0 for the block kernel), ``backward`` = (kernel,
    threads, positions per thread). Float32 or float64 inputs, weights and
    constant B/C in the accumulation dtype, every gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, forward: tuple, backward: tuple,
                u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], z: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool,
                reverse: bool) -> Tensor:
        inputs = _contiguous(u, delta, A, B, C, D, z, delta_bias)
        batch, dim, length = u.shape
        dstate = A.shape[1]
        shape = (batch, dim, 1, length, dstate, 1, 1,
                 B.shape[1] if B.dim() == 4 else 0,
                 C.shape[1] if C.dim() == 4 else 0, delta_softplus, reverse)
        kernel, threads, items = backward
        ctx.backward_call = _ScanCall(
            *shape, threads, items, 0, _SCAN_BACKWARD_KERNELS.index(kernel))
        call = _ScanCall(*shape, *forward, 0)
        out = torch.zeros_like(inputs[0])
        y_pregate = None if z is None else torch.zeros_like(inputs[0])
        chunk_states = torch.zeros(batch, dim,
                                   -(-length // cuda_ops._STATE_STRIDE),
                                   dstate, dtype=A.dtype)
        _call(library.emulated_selective_scan,
              (int(A.dtype == torch.float64), 0, ctypes.byref(call)),
              inputs + [out, y_pregate, chunk_states])
        ctx.save_for_backward(*inputs[:5], chunk_states)
        ctx.optional = inputs[5:] + [y_pregate]
        ctx.library = library
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        u, delta, A, B, C, chunk_states = ctx.saved_tensors
        D, z, delta_bias, y_pregate = ctx.optional
        accum = A.dtype
        grads = _gradient_buffers((u, delta, A, B, C, D, z, delta_bias),
                                  accum, (0, 1, 6))
        _call(ctx.library.emulated_selective_scan,
              (int(accum == torch.float64), 1,
               ctypes.byref(ctx.backward_call)),
              [u, delta, A, B, C, D, z, delta_bias, None, y_pregate,
               chunk_states, dout.contiguous()] + grads)
        return (None, None, None, *grads, None, None)


class EmulatedCrossLayoutScan(torch.autograd.Function):
    """mmssm.ops.cross_selective_scan through the emulated selective-scan
    kernels in their cross layout (num_dirs 4: each direction's inputs read
    at its pixels, its outputs added into one map), as cuda_ops takes it for
    many sequences or more than 4 states. The op's own arguments, with
    ``forward`` = (threads, positions per thread) of the block kernel and
    ``backward`` = (kernel: 'warp' or 'block', threads, positions per
    thread); float32 or float64, every gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, forward: tuple, backward: tuple,
                u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], delta_bias: Optional[Tensor],
                delta_softplus: bool) -> Tensor:
        batch, dim, height, width = u.shape
        length, dstate = height * width, A.shape[1]
        directions = 4
        inputs = _contiguous(
            u.reshape(batch, dim, length),
            delta.reshape(batch, directions * dim, length), A,
            B.reshape(batch, directions, dstate, length),
            C.reshape(batch, directions, dstate, length), D, None, delta_bias)
        # One group of B and of C per direction.
        shape = (batch, dim, directions, length, dstate, height, width, 1, 1,
                 delta_softplus, False)
        kernel, threads, items = backward
        ctx.backward_call = _ScanCall(
            *shape, threads, items, 0, _SCAN_BACKWARD_KERNELS.index(kernel))
        call = _ScanCall(*shape, *forward, 0, 0)
        # The directions add into out, in the accumulation dtype.
        out = torch.zeros(inputs[0].shape, dtype=A.dtype)
        chunk_states = torch.zeros(batch, directions * dim,
                                   -(-length // cuda_ops._STATE_STRIDE),
                                   dstate, dtype=A.dtype)
        _call(library.emulated_selective_scan,
              (int(A.dtype == torch.float64), 0, ctypes.byref(call)),
              inputs + [out, None, chunk_states])
        ctx.save_for_backward(*inputs[:5], chunk_states)
        ctx.optional = (inputs[5], inputs[7])
        ctx.shapes = (u.shape, delta.shape, B.shape, C.shape)
        ctx.library = library
        return out.view(u.shape)

    @staticmethod
    def backward(ctx, dout: Tensor):
        u, delta, A, B, C, chunk_states = ctx.saved_tensors
        D, delta_bias = ctx.optional
        accum = A.dtype
        # du collects the four directions, in the accumulation dtype.
        grads = _gradient_buffers((u, delta, A, B, C, D, None, delta_bias),
                                  accum, (1, ))
        _call(ctx.library.emulated_selective_scan,
              (int(accum == torch.float64), 1,
               ctypes.byref(ctx.backward_call)),
              [u, delta, A, B, C, D, None, delta_bias, None, None,
               chunk_states, dout.reshape(u.shape).contiguous()] + grads)
        du, ddelta, dA, dB, dC, dD, _, ddelta_bias = grads
        u_shape, delta_shape, B_shape, C_shape = ctx.shapes
        return (None, None, None, du.view(u_shape), ddelta.view(delta_shape),
                dA, dB.view(B_shape), dC.view(C_shape), dD, ddelta_bias,
                None)


class _ConvCall(ctypes.Structure):
    """The causal conv1d driver's ConvCall."""
    _fields_ = [(name, ctypes.c_int) for name in (
        'batch', 'channels', 'length', 'kernel', 'reverse', 'silu')]


class EmulatedCausalConv1d(torch.autograd.Function):
    """mmssm.ops.causal_conv1d through the emulated kernels: x (B, E, L),
    weight (E, 1, K) and bias (E) or None, float32 or float64 (weight and
    bias in the accumulation dtype), every gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, x: Tensor, weight: Tensor,
                bias: Optional[Tensor], reverse: bool, silu: bool) -> Tensor:
        batch, channels, length = x.shape
        kernel = weight.shape[-1]
        inputs = _contiguous(x, weight.reshape(channels, kernel), bias)
        ctx.call = _ConvCall(batch, channels, length, kernel, reverse, silu)
        out = torch.empty_like(inputs[0])
        _call(library.emulated_causal_conv1d,
              (int(x.dtype == torch.float64), 0, ctypes.byref(ctx.call)),
              inputs + [out])
        ctx.save_for_backward(*inputs[:2])
        ctx.bias = inputs[2]
        ctx.library, ctx.weight_shape = library, weight.shape
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, weight = ctx.saved_tensors
        dx, dweight, dbias = _gradient_buffers((x, weight, ctx.bias),
                                               weight.dtype, (0, ))
        _call(ctx.library.emulated_causal_conv1d,
              (int(x.dtype == torch.float64), 1, ctypes.byref(ctx.call)),
              [x, weight, ctx.bias, None, dout.contiguous(), dx, dweight,
               dbias])
        return (None, dx, dweight.view(ctx.weight_shape), dbias, None, None)


class _NormCall(ctypes.Structure):
    """The norm driver's NormCall."""
    _fields_ = [('rows', ctypes.c_longlong), ('positions', ctypes.c_longlong),
                ('channels', ctypes.c_int), ('channels_first', ctypes.c_int),
                ('rms', ctypes.c_int), ('grid', ctypes.c_int),
                ('eps', ctypes.c_double)]


class EmulatedNorm(torch.autograd.Function):
    """mmssm.ops.layer_norm / rms_norm through the emulated kernels: x
    channel-last (..., C) or channels-first (B, C, ...), the output
    channel-last in x's dtype (float32 or float64), weight and bias in the
    accumulation dtype or None, the backward pass on ``grid`` blocks; every
    gradient."""

    @staticmethod
    def forward(ctx, library: ctypes.CDLL, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float, rms: bool,
                channels_first: bool, grid: int) -> Tensor:
        if channels_first:
            channels = x.shape[1]
            out_shape = (x.shape[0], *x.shape[2:], channels)
        else:
            channels, out_shape = x.shape[-1], x.shape
        rows = x.numel() // channels
        positions = rows // x.shape[0] if channels_first else 0
        ctx.call = _NormCall(rows, positions, channels, channels_first, rms,
                             grid, eps)
        inputs = _contiguous(x, weight, bias)
        out = torch.empty(rows, channels, dtype=x.dtype)
        mean = None if rms else torch.empty(rows, dtype=x.dtype)
        rstd = torch.empty(rows, dtype=x.dtype)
        _call(library.emulated_norm,
              (int(x.dtype == torch.float64), 0, ctypes.byref(ctx.call)),
              inputs + [out, mean, rstd])
        ctx.save_for_backward(*inputs[:1], rstd)
        ctx.optional = (inputs[1], inputs[2], mean)
        ctx.library = library
        return out.view(out_shape)

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, rstd = ctx.saved_tensors
        weight, bias, mean = ctx.optional
        dx, dweight, dbias = _gradient_buffers((x, weight, bias), x.dtype,
                                               (0, ))
        _call(ctx.library.emulated_norm,
              (int(x.dtype == torch.float64), 1, ctypes.byref(ctx.call)),
              [x, weight, bias, None, mean, rstd,
               dout.reshape(-1, ctx.call.channels).contiguous(), dx, dweight,
               dbias])
        return (None, dx, dweight, dbias, None, None, None, None)
