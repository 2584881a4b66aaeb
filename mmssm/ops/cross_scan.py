"""VMamba's four-path cross scan, its merge, and the fused SS2D scan core.

Path k reads the H x W map in one of four orders: 0 row-major, 1 column-major,
2 reversed row-major, 3 reversed column-major. :func:`cross_scan` and
:func:`cross_merge` are pure index operations, so autograd gives each the
other as its exact adjoint.
"""
from typing import Optional

import torch
from torch import Tensor

from .dispatch import run_op
from .selective_scan import check_tensor, selective_scan_states


def cross_scan(x: Tensor) -> Tensor:
    """Reads a map along the four cross-scan paths.

    Args:
        x: (B, C, H, W) feature map.

    Returns:
        (B, 4, C, H*W): row-major, column-major, reversed row-major and
        reversed column-major sequences.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f'x must have shape (B, C, H, W), got {got}')
    row_major = x.flatten(2)
    column_major = x.transpose(2, 3).flatten(2)
    paths = (row_major, column_major, row_major.flip(-1),
             column_major.flip(-1))
    return torch.stack(paths, dim=1)


def cross_merge(y: Tensor) -> Tensor:
    """Sums the four paths' sequences back at their pixels (row-major).

    The adjoint of :func:`cross_scan`.

    Args:
        y: (B, 4, C, H, W); ``y[:, k]`` is path k's sequence of length H*W in
            path order, shaped (H, W) to carry the grid size.

    Returns:
        (B, C, H*W) in row-major pixel order.
    """
    if not isinstance(y, Tensor) or y.dim() != 5 or y.shape[1] != 4:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f'y must have shape (B, 4, C, H, W), got {got}')
    batch, _, channels, height, width = y.shape
    sequences = y.flatten(3)
    # Paths 2 and 3 are paths 0 and 1 reversed: fold them first.
    folded = sequences[:, :2] + sequences[:, 2:].flip(-1)
    column_major = folded[:, 1].reshape(batch, channels, width, height)
    return folded[:, 0] + column_major.transpose(2, 3).flatten(2)


def _path_sequences(per_path: Tensor) -> Tensor:
    """Reads ``per_path[:, k]`` along path k.

    Args:
        per_path: (B, 4, C, H, W), one map per path.

    Returns:
        (B, 4, C, H*W).
    """
    row_major = per_path[:, 0::2].flatten(3)
    column_major = per_path[:, 1::2].transpose(3, 4).flatten(3)
    paths = (row_major[:, 0], column_major[:, 0], row_major[:, 1].flip(-1),
             column_major[:, 1].flip(-1))
    return torch.stack(paths, dim=1)


def _check_cross_selective_scan_args(u: Tensor, delta: Tensor, A: Tensor,
                                     B: Tensor, C: Tensor, D: Optional[Tensor],
                                     delta_bias: Optional[Tensor]) -> None:
    if not isinstance(u, Tensor) or u.dim() != 4:
        got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f'u must have shape (B, D, H, W), got {got}')
    batch, dim, height, width = u.shape
    device = u.device
    check_tensor('u', u, (batch, dim, height, width), '(B, D, H, W)', device)
    check_tensor('delta', delta, (batch, 4, dim, height, width),
                 '(B, 4, D, H, W)', device)
    if not isinstance(A, Tensor) or A.dim() != 2:
        got = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f'A must have shape (4*D, N) with D={dim}, got {got}')
    state_size = A.shape[1]
    check_tensor('A', A, (4 * dim, state_size), '(4*D, N)', device)
    for name, matrix in (('B', B), ('C', C)):
        check_tensor(name, matrix, (batch, 4, state_size, height, width),
                     '(B, 4, N, H, W)', device)
    for name, vector in (('D', D), ('delta_bias', delta_bias)):
        if vector is not None:
            check_tensor(name, vector, (4 * dim, ), '(4*D,)', device)


def _cross_selective_scan_pytorch(u: Tensor,
                                  delta: Tensor,
                                  A: Tensor,
                                  B: Tensor,
                                  C: Tensor,
                                  D: Optional[Tensor] = None,
                                  delta_bias: Optional[Tensor] = None,
                                  delta_softplus: bool = False) -> Tensor:
    batch, dim, height, width = u.shape
    length = height * width
    with torch.autocast(device_type=u.device.type, enabled=False):
        y, _ = selective_scan_states(
            cross_scan(u).reshape(batch, 4 * dim, length),
            _path_sequences(delta).reshape(batch, 4 * dim, length), A,
            _path_sequences(B), _path_sequences(C), D, None, delta_bias,
            delta_softplus)
        merged = cross_merge(y.reshape(batch, 4, dim, height, width))
    return merged.reshape(batch, dim, height, width).to(u.dtype)


def cross_selective_scan(u: Tensor,
                         delta: Tensor,
                         A: Tensor,
                         B: Tensor,
                         C: Tensor,
                         D: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None,
                         delta_softplus: bool = False) -> Tensor:
    """VMamba's SS2D core: four selective scans along the cross-scan paths.

    Every per-path input is given at its pixel (row-major spatial layout);
    path k scans the pixels in :func:`cross_scan`'s k-th order with channels
    ``k*D:(k+1)*D`` of ``A``/``D``/``delta_bias``, and its outputs are added
    back at their pixels. Equals
    ``cross_merge(selective_scan(cross_scan(u), ...))`` with each path's
    inputs read along that path.

    Args:
        u: (B, D, H, W) input shared by the four paths.
        delta: (B, 4, D, H, W) per-path step sizes before bias/softplus.
        A: (4*D, N) state matrix.
        B: (B, 4, N, H, W) per-path input matrices.
        C: (B, 4, N, H, W) per-path output matrices.
        D: Optional (4*D,) skip weights.
        delta_bias: Optional (4*D,) step-size biases.
        delta_softplus: Apply softplus to the biased step sizes.

    Returns:
        (B, D, H, W) in u's dtype.
    """
    _check_cross_selective_scan_args(u, delta, A, B, C, D, delta_bias)
    return run_op('cross_selective_scan', _cross_selective_scan_pytorch, u,
                  delta, A, B, C, D, delta_bias, delta_softplus)
