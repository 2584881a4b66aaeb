"""Mamba2D's 2D selective scan (the wavefront recurrence), channel-last.

With gates a_X = exp(Δ_X A_X) and inputs u_X = Δ_X B_X x taken at the
destination pixel (X = T for the top neighbour, L for the left one):
h(0,0) = u_L; first row h(0,j) = a_L h(0,j-1) + u_L; first column
h(i,0) = a_T h(i-1,0) + u_T; inside h(i,j) = ½[a_L h(i,j-1) + u_L +
a_T h(i-1,j) + u_T]; y = Σ_n C h + D x.

The PyTorch path loops over rows only: given row i-1, row i is the 1D linear
recurrence h(i,j) = (a_L/2) h(i,j-1) + [u_L + a_T h(i-1,j) + u_T]/2 along j
(without the ½ at j = 0), solved without a loop over j by
:func:`~mmssm.ops.selective_scan.linear_recurrence`. For ``origin='br'`` the
rows are visited bottom-up and each row is scanned from right to left, so no
flipped copy of any tensor is made.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import run_op
from .selective_scan import check_tensor, compute_dtype, linear_recurrence

ORIGINS = ('tl', 'br')


def _check_wavefront_args(x: Tensor, delta_t: Tensor, delta_l: Tensor,
                          A_t: Tensor, A_l: Tensor, B_t: Tensor, B_l: Tensor,
                          C: Tensor, D: Optional[Tensor],
                          delta_bias_t: Optional[Tensor],
                          delta_bias_l: Optional[Tensor], origin: str) -> None:
    if origin not in ORIGINS:
        raise ValueError(f'origin must be one of {ORIGINS}, got {origin!r}')
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f'x must have shape (B, H, W, E), got {got}')
    batch, height, width, channels = x.shape
    device = x.device
    grid = (batch, height, width)
    check_tensor('x', x, (*grid, channels), '(B, H, W, E)', device)
    for name, delta in (('delta_t', delta_t), ('delta_l', delta_l)):
        check_tensor(name, delta, (*grid, channels), '(B, H, W, E)', device)
    if not isinstance(A_t, Tensor) or A_t.dim() != 2:
        got = tuple(A_t.shape) if isinstance(A_t, Tensor) else type(
            A_t).__name__
        raise ValueError(f'A_t must have shape (E, N) with E={channels}, got '
                         f'{got}')
    state_size = A_t.shape[1]
    for name, matrix in (('A_t', A_t), ('A_l', A_l)):
        check_tensor(name, matrix, (channels, state_size), '(E, N)', device)
    for name, matrix in (('B_t', B_t), ('B_l', B_l), ('C', C)):
        check_tensor(name, matrix, (*grid, state_size), '(B, H, W, N)',
                     device)
    for name, vector in (('D', D), ('delta_bias_t', delta_bias_t),
                         ('delta_bias_l', delta_bias_l)):
        if vector is not None:
            check_tensor(name, vector, (channels, ), '(E,)', device)


def _wavefront_scan_2d_pytorch(x: Tensor,
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
    dtype = compute_dtype(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                          delta_bias_t, delta_bias_l)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_c = x.to(dtype)
        # Rows first, then (B, E, N, W) per row: the scan runs along W.
        x_rows = x_c.permute(1, 0, 3, 2).unsqueeze(3)
        steps = []
        for delta, bias in ((delta_t, delta_bias_t), (delta_l, delta_bias_l)):
            delta = delta.to(dtype)
            if bias is not None:
                delta = delta + bias.to(dtype)
            delta = F.softplus(delta) if delta_softplus else delta
            steps.append(delta.permute(1, 0, 3, 2).unsqueeze(3))
        step_t, step_l = steps
        log_gate_t = step_t * A_t.to(dtype).unsqueeze(-1)
        log_gate_l = step_l * A_l.to(dtype).unsqueeze(-1)
        input_t = step_t * x_rows * B_t.to(dtype).permute(1, 0, 3,
                                                          2).unsqueeze(2)
        input_l = step_l * x_rows * B_l.to(dtype).permute(1, 0, 3,
                                                          2).unsqueeze(2)
        C_rows = C.to(dtype).permute(1, 0, 3, 2).unsqueeze(2)
        height, width = x.shape[1], x.shape[2]
        reverse = origin == 'br'
        # Interior steps average the two neighbours: halve every step along
        # j but the scan's first one, which has no left neighbour.
        first_column = width - 1 if reverse else 0
        half = torch.full((width, ), 0.5, dtype=dtype, device=x.device)
        half[first_column] = 1.0
        has_left = (half < 1).to(dtype)
        # Row-independent parts of the row recurrences, computed at once and
        # split into rows with one unbind each (indexing rows one at a time
        # would make the backward pass build a full-size gradient per row).
        gate_t = log_gate_t.exp().unbind(0)
        halved_log_gate_l = (log_gate_l + math.log(0.5)).unbind(0)
        halved_input_l = ((half * has_left) * input_l).unbind(0)
        log_gate_l, input_l = log_gate_l.unbind(0), input_l.unbind(0)
        input_t, C_rows = input_t.unbind(0), C_rows.unbind(0)
        row_order = range(height - 1, -1, -1) if reverse else range(height)
        outputs = [None] * height
        previous = None
        for i in row_order:
            if previous is None:
                states = linear_recurrence(
                    log_gate_l[i], input_l[i], reverse=reverse)
            else:
                vertical = gate_t[i] * previous + input_t[i]
                states = linear_recurrence(
                    halved_log_gate_l[i],
                    halved_input_l[i] + half * vertical,
                    reverse=reverse)
            previous = states
            outputs[i] = (states * C_rows[i]).sum(dim=2)
        y = torch.stack(outputs).permute(1, 0, 3, 2)
        if D is not None:
            y = y + D.to(dtype) * x_c
    return y.to(x.dtype)


def wavefront_scan_2d(x: Tensor,
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
    """Mamba2D's 2D selective scan over an H x W grid (channel-last).

    Args:
        x: (B, H, W, E) input.
        delta_t: (B, H, W, E) step sizes of the top-neighbour path, before
            bias/softplus.
        delta_l: (B, H, W, E) step sizes of the left-neighbour path.
        A_t: (E, N) state matrix of the top path (negative reals; Mamba2D's
            code passes ``-exp(A_log)``).
        A_l: (E, N) state matrix of the left path.
        B_t: (B, H, W, N) input matrix of the top path.
        B_l: (B, H, W, N) input matrix of the left path.
        C: (B, H, W, N) output matrix shared by both paths.
        D: Optional (E,) skip weight.
        delta_bias_t: Optional (E,) bias added to ``delta_t``.
        delta_bias_l: Optional (E,) bias added to ``delta_l``.
        delta_softplus: Apply softplus to the biased step sizes.
        origin: ``'tl'`` scans from the top-left corner; ``'br'`` runs the
            same recurrence from the bottom-right corner (as if every input
            and the output were flipped on H and W).

    Returns:
        (B, H, W, E) in x's dtype.
    """
    _check_wavefront_args(x, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                          delta_bias_t, delta_bias_l, origin)
    return run_op('wavefront_scan_2d', _wavefront_scan_2d_pytorch, x, delta_t,
                  delta_l, A_t, A_l, B_t, B_l, C, D, delta_bias_t,
                  delta_bias_l, delta_softplus, origin)
