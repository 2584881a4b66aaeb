"""Naive reference implementations of mmssm's scan ops, for tests.

Each reference loops over sequence positions or pixels exactly as the
recurrence is written, shares no code with the production ops, and computes
in float32, or in float64 where an input is float64 (so gradients can be
compared in float64). They are slow: use small sizes.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _internal_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _steps_of(matrix: Tensor, dim: int, length: int) -> List[Tensor]:
    """B or C per step as (batch or 1, dim, N) tensors.

    Sequences are split with one ``unbind`` so that the backward pass stacks
    the per-step gradients once instead of once per step.
    """
    if matrix.dim() == 2:
        return [matrix.unsqueeze(0)] * length
    if matrix.dim() == 3:
        return [step.unsqueeze(1) for step in matrix.unbind(-1)]
    groups = matrix.shape[1]
    return [
        step.repeat_interleave(dim // groups, dim=1)
        for step in matrix.unbind(-1)
    ]


def selective_scan_reference(
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
        reverse: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Step-by-step selective scan; arguments as ``mmssm.ops.selective_scan``.

    With ``reverse`` the steps are taken from position L-1 down to 0.

    Returns:
        y (batch, dim, L) in u's dtype, and with ``return_last_state`` the
        state after the last step taken (batch, dim, N) in the internal dtype.
    """
    dtype = _internal_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    u_c, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    B, C = B.to(dtype), C.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = torch.where(delta > 20, delta, torch.log1p(torch.exp(delta)))
    state = torch.zeros(batch, dim, A.shape[1], dtype=dtype, device=u.device)
    steps = list(
        zip(delta.unbind(-1), u_c.unbind(-1), _steps_of(B, dim, length),
            _steps_of(C, dim, length)))
    outputs = [None] * length
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        step, u_t, B_t, C_t = steps[t]
        step = step.unsqueeze(-1)
        state = torch.exp(step * A) * state + step * B_t * u_t.unsqueeze(-1)
        outputs[t] = (state * C_t).sum(-1)
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    if z is not None:
        z = z.to(dtype)
        y = y * z * torch.sigmoid(z)
    y = y.to(u.dtype)
    return (y, state) if return_last_state else y


def cross_scan_pixel_orders(height: int, width: int) -> List[List[int]]:
    """Row-major pixel indices visited by each of the four cross-scan paths.

    Args:
        height: Grid height H.
        width: Grid width W.

    Returns:
        Four lists of H*W row-major indices: row-major, column-major,
        reversed row-major, reversed column-major.
    """
    row_major = [i * width + j for i in range(height) for j in range(width)]
    column_major = [
        i * width + j for j in range(width) for i in range(height)
    ]
    return [row_major, column_major, row_major[::-1], column_major[::-1]]


def cross_scan_reference(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): the map read along the four paths."""
    flat = x.flatten(2)
    orders = cross_scan_pixel_orders(x.shape[2], x.shape[3])
    return torch.stack([flat[:, :, order] for order in orders], dim=1)


def _pixel_positions(order: List[int]) -> List[int]:
    """Inverse of a path order: the path position of each pixel."""
    positions = [0] * len(order)
    for position, pixel in enumerate(order):
        positions[pixel] = position
    return positions


def cross_merge_reference(y: Tensor) -> Tensor:
    """(B, 4, C, H, W) -> (B, C, H*W): the four paths summed at their pixels.

    ``y[:, k]`` holds path k's sequence (length H*W, in path order) shaped
    as (H, W).
    """
    height, width = y.shape[3], y.shape[4]
    sequences = y.flatten(3)
    return sum(sequences[:, k, :, _pixel_positions(order)]
               for k, order in enumerate(cross_scan_pixel_orders(height,
                                                                 width)))


def cross_selective_scan_reference(u: Tensor,
                                   delta: Tensor,
                                   A: Tensor,
                                   B: Tensor,
                                   C: Tensor,
                                   D: Optional[Tensor] = None,
                                   delta_bias: Optional[Tensor] = None,
                                   delta_softplus: bool = False) -> Tensor:
    """Four-path selective scan, arguments as ``cross_selective_scan``.

    Each path k gathers its pixels in cross-scan order k, runs
    :func:`selective_scan_reference` and adds its outputs back at the
    pixels.

    Returns:
        (B, D, H, W) in u's dtype.
    """
    batch, dim, height, width = u.shape
    orders = cross_scan_pixel_orders(height, width)
    out = 0
    for k, order in enumerate(orders):
        channels = slice(k * dim, (k + 1) * dim)
        y = selective_scan_reference(
            u.flatten(2)[:, :, order], delta[:, k].flatten(2)[:, :, order],
            A[channels], B[:, k].flatten(2)[:, :, order],
            C[:, k].flatten(2)[:, :, order],
            None if D is None else D[channels], None,
            None if delta_bias is None else delta_bias[channels],
            delta_softplus)
        out = out + y[:, :, _pixel_positions(order)]
    return out.reshape(batch, dim, height, width)


def wavefront_scan_2d_reference(x: Tensor,
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
    """Pixel-by-pixel Mamba2D scan; arguments as ``wavefront_scan_2d``.

    For ``origin='br'`` the 'top' neighbour of (i, j) is (i+1, j) and the
    'left' one is (i, j+1); the scan starts at (H-1, W-1).

    Returns:
        (B, H, W, E) in x's dtype.
    """
    dtype = _internal_dtype(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                            delta_bias_t, delta_bias_l)
    height, width = x.shape[1], x.shape[2]
    x_c = x.to(dtype)
    steps = []
    for delta, bias in ((delta_t, delta_bias_t), (delta_l, delta_bias_l)):
        delta = delta.to(dtype)
        if bias is not None:
            delta = delta + bias.to(dtype)
        steps.append(F.softplus(delta) if delta_softplus else delta)
    step_t, step_l = steps
    if origin == 'tl':
        rows, cols, offset = range(height), range(width), -1
    else:
        rows, cols = range(height - 1, -1, -1), range(width - 1, -1, -1)
        offset = 1
    first_row, first_col = rows[0], cols[0]

    def pixels(tensor: Tensor) -> List[List[Tensor]]:
        return [row.unbind(1) for row in tensor.to(dtype).unbind(1)]

    x_px, step_t_px, step_l_px = pixels(x_c), pixels(step_t), pixels(step_l)
    B_t_px, B_l_px, C_px = pixels(B_t), pixels(B_l), pixels(C)
    A_t, A_l = A_t.to(dtype), A_l.to(dtype)
    states, outputs = {}, {}
    for i in rows:
        for j in cols:
            x_ij = x_px[i][j].unsqueeze(-1)
            step_t_ij = step_t_px[i][j].unsqueeze(-1)
            step_l_ij = step_l_px[i][j].unsqueeze(-1)
            gate_t = torch.exp(step_t_ij * A_t)
            gate_l = torch.exp(step_l_ij * A_l)
            input_t = step_t_ij * x_ij * B_t_px[i][j].unsqueeze(1)
            input_l = step_l_ij * x_ij * B_l_px[i][j].unsqueeze(1)
            if i == first_row and j == first_col:
                state = input_l
            elif i == first_row:
                state = gate_l * states[i, j + offset] + input_l
            elif j == first_col:
                state = gate_t * states[i + offset, j] + input_t
            else:
                state = 0.5 * (gate_l * states[i, j + offset] + input_l +
                               gate_t * states[i + offset, j] + input_t)
            states[i, j] = state
            outputs[i, j] = (state * C_px[i][j].unsqueeze(1)).sum(-1)
    out_rows = [
        torch.stack([outputs[i, j] for j in range(width)], dim=1)
        for i in range(height)
    ]
    out = torch.stack(out_rows, dim=1)
    if D is not None:
        out = out + D.to(dtype) * x_c
    return out.to(x.dtype)
