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
to or returned by the op. A row pass followed by a column pass from the same
corner makes ``y(i, j)`` depend on exactly the quadrant of pixels between
that corner and ``(i, j)`` (``'tl'``: rows ``<= i`` and columns ``<= j``;
``'br'``: rows ``>= i`` and columns ``>= j``; and so on).

The PyTorch path reorders each pass into ``mmssm.ops.selective_scan``'s
``(batch, channels, length)`` layout (lines into the batch, the ``K`` corners
into the channels, each corner's walk order along the positions by a
``gather`` with a small ``(K, H*W)`` index, grouped ``B``/``C`` with one group
per corner) and maps the result back with the inverse order. Those reorders
are the only copies; a compiled kernel (``v2m_corner_scan_cuda``) reads the
spatial layout directly.
"""
import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import run_op
from .selective_scan import selective_scan

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


@functools.lru_cache(maxsize=32)
def _walk_order(height: int, width: int, axis: str, corners: Tuple[str, ...],
                device: torch.device) -> Tensor:
    """The pixels each corner visits, line by line.

    Returns:
        ``(K, H * W)`` long tensor: entry ``[k, line * length + step]`` is
        the row-major pixel index corner ``k`` visits at ``step`` of ``line``
        (lines are rows for ``axis='row'``, else columns).
    """
    lines, length = (height, width) if axis == 'row' else (width, height)
    line = torch.arange(lines, device=device).view(-1, 1)
    step = torch.arange(length, device=device).view(1, -1)
    orders = []
    for corner in corners:
        position = (length - 1 - step) if _walks_backwards(corner,
                                                           axis) else step
        pixel = (line * width + position if axis == 'row' else position *
                 width + line)
        orders.append(pixel.reshape(-1))
    return torch.stack(orders)


@functools.lru_cache(maxsize=32)
def _walk_position(height: int, width: int, axis: str,
                   corners: Tuple[str, ...], device: torch.device) -> Tensor:
    """Inverse of :func:`_walk_order`: each pixel's walk position."""
    return torch.argsort(_walk_order(height, width, axis, corners, device),
                         dim=1)


def _to_lines(x: Tensor, num_corners: int, axis: str,
              corners: Tuple[str, ...]) -> Tensor:
    """Reorder a spatial tensor into ``(batch * lines, K * C, length)``.

    ``x`` is ``(batch, K, C, H, W)`` or ``(batch, C, H, W)`` (shared by the
    corners). Lines go into the batch, corners into the channels, and each
    corner's walk order along the positions.
    """
    batch, channels, height, width = (x.shape[0], x.shape[-3], x.shape[-2],
                                      x.shape[-1])
    pixels = height * width
    flat = x.reshape(batch, -1, channels, pixels).expand(
        batch, num_corners, channels, pixels)
    order = _walk_order(height, width, axis, corners, x.device)
    walked = flat.gather(
        -1,
        order.view(1, num_corners, 1, pixels).expand(batch, -1, channels,
                                                     -1))
    lines, length = (height, width) if axis == 'row' else (width, height)
    walked = walked.view(batch, num_corners, channels, lines, length)
    return walked.permute(0, 3, 1, 2, 4).reshape(batch * lines,
                                                 num_corners * channels,
                                                 length)


def _from_lines(y: Tensor, batch: int, num_corners: int, channels: int,
                height: int, width: int, axis: str,
                corners: Tuple[str, ...]) -> Tensor:
    """Inverse of :func:`_to_lines` for a per-corner tensor."""
    lines, length = (height, width) if axis == 'row' else (width, height)
    pixels = height * width
    walked = y.view(batch, lines, num_corners, channels, length).permute(
        0, 2, 3, 1, 4).reshape(batch, num_corners, channels, pixels)
    position = _walk_position(height, width, axis, corners, y.device)
    restored = walked.gather(
        -1,
        position.view(1, num_corners, 1, pixels).expand(
            batch, -1, channels, -1))
    return restored.view(batch, num_corners, channels, height, width)


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
                             corners: Sequence[str] = CORNERS) -> Tensor:
    """PyTorch path of :func:`v2m_corner_scan` (inputs already checked)."""
    batch, num_corners, dim, height, width = delta.shape
    scan_b, scan_c = B, C
    if B.dim() == 5:
        state = B.shape[2]
        scan_b = _to_lines(B, num_corners, axis, corners).unflatten(
            1, (num_corners, state))
    if C.dim() == 5:
        state = C.shape[2]
        scan_c = _to_lines(C, num_corners, axis, corners).unflatten(
            1, (num_corners, state))
    y = selective_scan(
        _to_lines(u, num_corners, axis, corners),
        _to_lines(delta, num_corners, axis, corners),
        A,
        scan_b,
        scan_c,
        D=D,
        z=None if z is None else _to_lines(z, num_corners, axis, corners),
        delta_bias=delta_bias,
        delta_softplus=delta_softplus)
    return _from_lines(y, batch, num_corners, dim, height, width, axis,
                       corners)


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
                    corners: Sequence[str] = CORNERS) -> Tensor:
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

    Returns:
        ``(batch, K, D, H, W)``: corner ``k``'s output at every pixel, in
        ``u``'s dtype (computed in float32, or float64 for float64 input).
    """
    corners = tuple(corners)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, axis, corners)
    return run_op('v2m_corner_scan', _v2m_corner_scan_pytorch, u, delta, A,
                    B, C, D, z, delta_bias, delta_softplus, axis, corners)


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
                              corners: Sequence[str] = CORNERS) -> Tensor:
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
    return y.to(out_dtype)
