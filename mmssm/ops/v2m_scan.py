"""V2M's 2D scan as two single-axis passes of a four-corner selective scan.

V2M (``../shared/papers/v2m.txt``, section 3.2) splits the 2D state equation
of Roesser's model (eqs. 6-8) into two 1D selective scans: a horizontal scan
along every row (eq. 9, parameters ``(A_1, B_1)``), whose outputs become the
inputs ``x'`` of a vertical scan along every column (eqs. 11-12, parameters
``(A_2, I)``). Section 3.3 (eqs. 13-15) runs this from the four corners of the
grid and sums the four results at their original pixel positions. The
released code (``../shared/papers/README.md``) runs the two scans as two Mamba
selective scans with per-position projections, a depthwise causal conv1d and
a SiLU between them: scan 1 with input-dependent ``B`` and a constant all-ones
``C``, scan 2 with a constant all-ones ``B`` and input-dependent ``C``; both
outputs are gated by ``silu(z)``. Because the released mixer computes
projections and convolutions between the two scans, this module provides ONE
pass, :func:`v2m_corner_scan`, that the mixer calls twice (``axis='row'``,
then ``axis='col'``).

Exact math of one pass. Inputs are in spatial layout: ``u``, ``delta``, ``z``
are ``(batch, K, D, H, W)`` (``u`` and ``z`` may also be ``(batch, D, H, W)``,
shared by the ``K`` corners), ``corners`` names the ``K`` corners, and the
corner parameters are stacked along channels: ``A`` ``(K*D, N)``, ``D``,
``delta_bias`` ``(K*D,)``. Corner ``k`` uses channels ``k*D .. (k+1)*D - 1``
of them. ``B``/``C`` are ``(batch, K, N, H, W)`` (per corner and pixel) or
``(K*D, N)`` (constant). For corner ``k`` the pass walks every line of the
chosen axis starting from that corner's side:

* ``axis='row'``: every row ``i``; columns left to right for ``'tl'``/``'bl'``,
  right to left for ``'tr'``/``'br'``.
* ``axis='col'``: every column ``j``; rows top to bottom for ``'tl'``/``'tr'``,
  bottom to top for ``'bl'``/``'br'``.

With ``p`` the previous pixel of that walk (none at the line start, ``h = 0``):

    dt(i, j)   = delta + delta_bias          (softplus of it if delta_softplus)
    h(i, j)    = exp(dt(i, j) * A) * h(p) + dt(i, j) * B(i, j) * u(i, j)
    y(i, j)    = sum_n C(i, j)[n] * h(i, j)[n] + D * u(i, j)
    y(i, j)   *= silu(z(i, j))                               (if z is given)

for every channel ``d`` and state ``n`` (``h`` is ``(N,)`` per channel). The
result ``y`` of corner ``k`` is returned at the pixel it belongs to, as
``(batch, K, D, H, W)``: no rotated, flipped or transposed copy is ever handed
to or returned by the op. With ``merge_corners=True`` the op returns the sum
over the corners instead, ``(batch, D, H, W)`` in the accumulation dtype
(float32, float64 for float64 inputs), as V2M's eq. 15 merges the corners
after the column pass: the compiled kernel adds each corner's outputs into
that map, so the ``K`` per-corner maps are never written, and the gradient of
the sum reaches every corner without a broadcast copy. A row pass followed by a column pass from the same
corner makes ``y(i, j)`` depend on exactly the quadrant of pixels between
that corner and ``(i, j)`` (``'tl'``: rows ``<= i`` and columns ``<= j``;
``'br'``: rows ``>= i`` and columns ``>= j``; and so on).

The PyTorch path puts every corner's lines into walk order with one gather
per tensor and advances all corners, lines, channels and batch items together
in one loop over the positions of a line (the grid side, e.g. 14), vectorised
over everything else; a compiled kernel (``v2m_corner_scan_cuda``, through
:mod:`mmssm.ops.dispatch`) reads the spatial layout directly.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import run_op

CORNERS = ('tl', 'tr', 'bl', 'br')
AXES = ('row', 'col')

__all__ = ['v2m_corner_scan', 'v2m_corner_scan_reference', 'CORNERS']


def _walks_backwards(corner: str, axis: str) -> bool:
    """Whether ``corner``'s walk along ``axis`` runs against the index."""
    # A corner on the right walks rows right-to-left; one at the bottom
    # walks columns bottom-to-top.
    return corner[1] == 'r' if axis == 'row' else corner[0] == 'b'


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor], z: Optional[Tensor],
                  delta_bias: Optional[Tensor], axis: str,
                  corners: Sequence[str]) -> Tuple[int, int, int, int, int]:
    """Validate the inputs of a corner-scan pass.

    Returns:
        ``(batch, K, D, H, W)`` sizes.

    Raises:
        ValueError: Naming the first argument with a wrong shape or value.
        TypeError: If a tensor is not floating point.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be 'row' or 'col', got {axis!r}")
    if isinstance(corners, str) or len(corners) == 0:
        raise ValueError('corners must be a non-empty sequence of names from '
                         f'{CORNERS}, got {corners!r}')
    for corner in corners:
        if corner not in CORNERS:
            raise ValueError(f'corners entry {corner!r} is not one of '
                             f'{CORNERS}')
    num_corners = len(corners)
    if delta.dim() != 5 or delta.shape[1] != num_corners:
        raise ValueError('delta must be (batch, K, D, H, W) with K = '
                         f'len(corners) = {num_corners}, got '
                         f'{tuple(delta.shape)}')
    batch, _, dim, height, width = delta.shape
    per_corner = (batch, num_corners, dim, height, width)
    shared = (batch, dim, height, width)
    for name, tensor in (('u', u), ('z', z)):
        if tensor is not None and tuple(tensor.shape) not in (per_corner,
                                                               shared):
            raise ValueError(f'{name} must be {per_corner} (per corner) or '
                             f'{shared} (shared by the corners), got '
                             f'{tuple(tensor.shape)}')
    if A.dim() != 2 or A.shape[0] != num_corners * dim:
        raise ValueError(f'A must be (K*D, N) = ({num_corners * dim}, N), got '
                         f'{tuple(A.shape)}')
    state = A.shape[1]
    for name, tensor in (('B', B), ('C', C)):
        if tuple(tensor.shape) not in ((batch, num_corners, state, height,
                                        width), (num_corners * dim, state)):
            raise ValueError(
                f'{name} must be {(batch, num_corners, state, height, width)} '
                f'(per pixel) or {(num_corners * dim, state)} (constant), got '
                f'{tuple(tensor.shape)}')
    for name, tensor in (('D', D), ('delta_bias', delta_bias)):
        if tensor is not None and tuple(tensor.shape) != (num_corners * dim, ):
            raise ValueError(f'{name} must be ({num_corners * dim},) = (K*D,),'
                             f' got {tuple(tensor.shape)}')
    for name, tensor in (('u', u), ('delta', delta), ('A', A), ('B', B),
                         ('C', C), ('D', D), ('z', z), ('delta_bias',
                                                        delta_bias)):
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f'{name} must be a floating-point tensor, got '
                            f'{tensor.dtype}')
        if tensor is not None and tensor.device != delta.device:
            raise ValueError(f'{name} is on {tensor.device} but delta is on '
                             f'{delta.device}')
    return batch, num_corners, dim, height, width


def _walk(x: Tensor, axis: str, corners: Tuple[str, ...]) -> Tensor:
    """Reorder ``x`` (batch, K, C, H, W) along ``axis`` into walk order.

    Corner ``k``'s line positions are reversed where it walks backwards.
    Reversal is its own inverse, so the same call maps walk order back.
    """
    dim = -1 if axis == 'row' else -2
    length = x.shape[dim]
    step = torch.arange(length, device=x.device)
    order = torch.stack([
        length - 1 - step if _walks_backwards(corner, axis) else step
        for corner in corners
    ])
    shape = [1, len(corners), 1, 1, 1]
    shape[dim] = length
    return x.gather(dim, order.view(shape).expand(x.shape))


def _lines_first(x: Tensor, axis: str) -> Tensor:
    """(batch, K, C, H, W) -> (length, batch, K, C, lines), contiguous."""
    return x.movedim(-1 if axis == 'row' else -2, 0).contiguous()


def _v2m_corner_scan_pytorch(u: Tensor,
                             delta: Tensor,
                             A: Tensor,
                             B: Tensor,
                             C: Tensor,
                             D: Optional[Tensor] = None,
                             z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False,
                             axis: str = 'row',
                             corners: Tuple[str, ...] = CORNERS,
                             merge_corners: bool = False) -> Tensor:
    """PyTorch path of :func:`v2m_corner_scan` (inputs already checked).

    Every corner's lines are put in walk order (one gather per tensor), then
    one loop over the ``length`` positions of a line (the grid side: 14 for
    a 224^2 input with 16-pixel patches) advances the states of all corners,
    lines, channels and batch items at once. For lines this short a
    sequential recurrence beats a log-depth parallel scan on the CPU.
    """
    batch, num_corners, dim, height, width = delta.shape
    state = A.shape[1]
    with torch.autocast(device_type=u.device.type, enabled=False):
        dtype = torch.promote_types(u.dtype, torch.float32)
        u_full = u.to(dtype)
        if u_full.dim() == 4:
            u_full = u_full.unsqueeze(1).expand(delta.shape)
        dt = delta.to(dtype)
        if delta_bias is not None:
            dt = dt + delta_bias.to(dtype).view(num_corners, dim, 1, 1)
        if delta_softplus:
            dt = F.softplus(dt)
        decay_rate = A.to(dtype).view(1, num_corners, dim, 1, state)
        walked_dt = _lines_first(_walk(dt, axis, corners), axis)
        walked_drive = _lines_first(_walk(dt * u_full, axis, corners), axis)

        def per_step(matrix: Tensor) -> Tensor:
            """B or C as (length, batch, K, 1, lines, N) or (1, K, D, 1, N)."""
            if matrix.dim() == 2:
                return matrix.to(dtype).view(1, num_corners, dim, 1, state)
            walked = _lines_first(_walk(matrix.to(dtype), axis, corners),
                                  axis)
            return walked.transpose(-1, -2).unsqueeze(3)

        input_matrix, output_matrix = per_step(B), per_step(C)
        h = torch.zeros(batch, num_corners, dim, height * width //
                        walked_dt.shape[0], state, dtype=dtype,
                        device=u.device)
        outputs = []
        for step in range(walked_dt.shape[0]):
            b_t = input_matrix[step] if B.dim() == 5 else input_matrix
            c_t = output_matrix[step] if C.dim() == 5 else output_matrix
            h = torch.exp(walked_dt[step].unsqueeze(-1) * decay_rate) * h + (
                walked_drive[step].unsqueeze(-1) * b_t)
            outputs.append((h * c_t).sum(-1))
        y = torch.stack(outputs)
        y = y.movedim(0, -1 if axis == 'row' else -2)
        y = _walk(y, axis, corners)
        if D is not None:
            y = y + D.to(dtype).view(num_corners, dim, 1, 1) * u_full
        if z is not None:
            gate = z.to(dtype)
            y = y * F.silu(gate if gate.dim() == 5 else gate.unsqueeze(1))
    return y.sum(dim=1) if merge_corners else y.to(u.dtype)


def v2m_corner_scan(u: Tensor,
                    delta: Tensor,
                    A: Tensor,
                    B: Tensor,
                    C: Tensor,
                    D: Optional[Tensor] = None,
                    z: Optional[Tensor] = None,
                    delta_bias: Optional[Tensor] = None,
                    delta_softplus: bool = False,
                    axis: str = 'row',
                    corners: Sequence[str] = CORNERS,
                    merge_corners: bool = False) -> Tensor:
    """One pass (rows or columns) of V2M's 2D scan from each named corner.

    See the module docstring for the exact math.

    Args:
        u: Scan input, ``(batch, K, D, H, W)`` or ``(batch, D, H, W)`` (shared
            by all corners); ``K = len(corners)``.
        delta: Time steps before bias/softplus, ``(batch, K, D, H, W)``.
        A: State matrices of the corners stacked, ``(K*D, N)`` (negative).
        B: Input matrices, ``(batch, K, N, H, W)`` or constant ``(K*D, N)``.
        C: Output matrices, ``(batch, K, N, H, W)`` or constant ``(K*D, N)``.
        D: Optional skip weights, ``(K*D,)``.
        z: Optional gate, same shapes as ``u``; the output is multiplied by
            ``silu(z)``.
        delta_bias: Optional bias added to ``delta``, ``(K*D,)``.
        delta_softplus: Apply softplus to ``delta + delta_bias``.
        axis: ``'row'`` scans every row, ``'col'`` every column.
        corners: Names from ``('tl', 'tr', 'bl', 'br')``; corner ``k`` starts
            each line at its own side.
        merge_corners: Return the sum of the corners' outputs instead of
            each corner's.

    Returns:
        ``(batch, K, D, H, W)``: corner ``k``'s output at every pixel, in
        ``u``'s dtype (computed in float32, or float64 for float64 input).
        With ``merge_corners``: their sum ``(batch, D, H, W)`` in float32
        (float64 for float64 input).
    """
    corners = tuple(corners)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, axis, corners)
    return run_op('v2m_corner_scan', _v2m_corner_scan_pytorch, u, delta, A,
                  B, C, D, z, delta_bias, delta_softplus, axis, corners,
                  merge_corners)


def v2m_corner_scan_reference(u: Tensor,
                              delta: Tensor,
                              A: Tensor,
                              B: Tensor,
                              C: Tensor,
                              D: Optional[Tensor] = None,
                              z: Optional[Tensor] = None,
                              delta_bias: Optional[Tensor] = None,
                              delta_softplus: bool = False,
                              axis: str = 'row',
                              corners: Sequence[str] = CORNERS,
                              merge_corners: bool = False) -> Tensor:
    """Naive loop implementation of :func:`v2m_corner_scan` (for tests).

    Walks every corner's lines pixel by pixel in spatial layout, without any
    reordering, so it shares no code path with the production op. Same
    arguments and return value as :func:`v2m_corner_scan`.
    """
    corners = tuple(corners)
    batch, num_corners, dim, height, width = _check_inputs(
        u, delta, A, B, C, D, z, delta_bias, axis, corners)
    out_dtype = u.dtype
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    if u.dim() == 4:
        u = u.unsqueeze(1).expand(-1, num_corners, -1, -1, -1)
    u = u.to(compute_dtype)
    dt = delta.to(compute_dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute_dtype).view(num_corners, dim, 1, 1)
    if delta_softplus:
        dt = F.softplus(dt)
    state = A.shape[1]
    A = A.to(compute_dtype).view(num_corners, dim, state)
    skip = None if D is None else D.to(compute_dtype).view(
        num_corners, dim, 1)

    def line_pixels(x: Tensor, position: int) -> Tensor:
        """The pixels at one walk position of every line, lines last."""
        return x[..., position] if axis == 'row' else x[..., position, :]

    def state_matrix(x: Tensor, k: int, position: int) -> Tensor:
        """B or C of corner k at one walk position, (.., D or 1, lines, N)."""
        if x.dim() == 2:
            return x.to(compute_dtype).view(num_corners, dim,
                                            state)[k][None, :, None, :]
        pixels = line_pixels(x[:, k].to(compute_dtype), position)
        return pixels.transpose(1, 2).unsqueeze(1)

    length = width if axis == 'row' else height
    outputs = []
    for k, corner in enumerate(corners):
        backwards = _walks_backwards(corner, axis)
        h = torch.zeros(batch, dim, height * width // length, state,
                        dtype=compute_dtype, device=u.device)
        y_k = [None] * length
        for step in range(length):
            position = length - 1 - step if backwards else step
            u_t = line_pixels(u[:, k], position)  # (batch, D, lines)
            dt_t = line_pixels(dt[:, k], position)
            decay = torch.exp(dt_t.unsqueeze(-1) * A[k][None, :, None, :])
            h = decay * h + (dt_t * u_t).unsqueeze(-1) * state_matrix(
                B, k, position)
            y_t = (h * state_matrix(C, k, position)).sum(-1)
            if skip is not None:
                y_t = y_t + skip[k] * u_t
            y_k[position] = y_t
        stacked = torch.stack(y_k, dim=-1)
        outputs.append(stacked if axis == 'row' else stacked.transpose(-1, -2))
    y = torch.stack(outputs, dim=1)
    if z is not None:
        z = z if z.dim() == 5 else z.unsqueeze(1)
        y = y * F.silu(z.to(compute_dtype))
    if merge_corners:
        merged = y[:, 0]
        for k in range(1, num_corners):
            merged = merged + y[:, k]
        return merged
    return y.to(out_dtype)
