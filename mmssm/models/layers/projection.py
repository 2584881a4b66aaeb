"""Channel projections of channels-first activations as one batched GEMM."""
from torch import Tensor

from .norm import autocast_dtype


def project_channels(weight: Tensor, x: Tensor) -> Tensor:
    """``weight @ x[b]`` for every batch element ``b``, as one ``bmm``.

    ``torch.matmul`` of an ``(M, K)`` weight with a ``(B, K, L)`` input folds
    the batch into one GEMM through a transposed copy of the input, then
    copies the transposed result to a contiguous one: two copies on the GPU
    and, in training, five more autograd nodes, each with its host time. Here the weight is
    broadcast over the batch (stride 0), so the GEMM reads ``x`` in place
    (any ``x`` whose rows are contiguous, e.g. a slice of channels) and
    writes a contiguous ``(B, M, L)`` result. Under autocast the weight is
    cast once, before the broadcast.

    Args:
        weight: ``(M, K)``.
        x: ``(B, K, L)``.

    Returns:
        ``(B, M, L)``.
    """
    dtype = autocast_dtype(x)
    if dtype is not None:
        weight = weight.to(dtype)
    return weight.expand(x.shape[0], -1, -1).bmm(x)
