"""LayerNorm and RMSNorm over channels with a chosen output dtype.

Both compute their statistics and affine map in float32 (float64 for float64
inputs) from the input's own dtype and store the result in ``out_dtype``.
Under autocast, a norm whose output feeds a matrix product can so store it in
the autocast dtype at once: PyTorch's ``layer_norm`` runs in float32 there,
writes a float32 output and leaves the cast to the product, which costs a
float32 round trip and a copy per norm. ``channels_first=True`` normalises
dim 1 of a ``(B, C, *spatial)`` map (e.g. a scan output) and returns it
channel-last, ``(B, *spatial, C)``, without a transposed copy.

CUDA inputs take the compiled kernels (``mmssm.ops.cuda_ops``) through
:func:`mmssm.ops.dispatch.run_op`; the PyTorch implementation serves CPU
inputs and ``MMSSM_FORCE_PYTORCH_OPS=1``.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import run_op
from .selective_scan import compute_dtype


def _check_norm_args(x: Tensor, weight: Optional[Tensor],
                     bias: Optional[Tensor], eps: float,
                     out_dtype: Optional[torch.dtype],
                     channels_first: bool) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f'x must be a floating-point tensor, got {got}')
    if channels_first and x.dim() < 2:
        raise ValueError('a channels-first x must be (B, C, *spatial), got '
                         f'shape {tuple(x.shape)}')
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f'x must be non-empty, got shape {tuple(x.shape)}')
    channels = x.shape[1] if channels_first else x.shape[-1]
    for name, tensor in (('weight', weight), ('bias', bias)):
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor) or tuple(
                tensor.shape) != (channels, ):
            got = (tuple(tensor.shape)
                   if isinstance(tensor, Tensor) else type(tensor).__name__)
            raise ValueError(f'{name} must have shape ({channels},) to match '
                             f'the channels of x {tuple(x.shape)}, got {got}')
        if tensor.device != x.device:
            raise ValueError(f'{name} must be on {x.device}, got '
                             f'{tensor.device}')
    if not eps >= 0:
        raise ValueError(f'eps must be non-negative, got {eps}')
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise ValueError(f'out_dtype must be a floating-point dtype, got '
                         f'{out_dtype}')


def _norm_pytorch(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  eps: float, out_dtype: Optional[torch.dtype],
                  channels_first: bool, rms: bool) -> Tensor:
    out_dtype = out_dtype or x.dtype
    if channels_first:
        x = x.movedim(1, -1)
    compute = compute_dtype(x)
    shape = (x.shape[-1], )
    weight = weight.to(compute) if weight is not None else None
    # Statistics in `compute` whatever autocast would pick.
    with torch.autocast(x.device.type, enabled=False):
        if rms:
            out = F.rms_norm(x.to(compute), shape, weight, eps)
        else:
            out = F.layer_norm(x.to(compute), shape, weight,
                               bias.to(compute) if bias is not None else None,
                               eps)
    return out.to(out_dtype)


def _layer_norm_pytorch(x: Tensor,
                        weight: Optional[Tensor] = None,
                        bias: Optional[Tensor] = None,
                        eps: float = 1e-5,
                        out_dtype: Optional[torch.dtype] = None,
                        channels_first: bool = False) -> Tensor:
    return _norm_pytorch(x, weight, bias, eps, out_dtype, channels_first,
                         False)


def _rms_norm_pytorch(x: Tensor,
                      weight: Optional[Tensor] = None,
                      eps: float = 1e-5,
                      out_dtype: Optional[torch.dtype] = None,
                      channels_first: bool = False) -> Tensor:
    return _norm_pytorch(x, weight, None, eps, out_dtype, channels_first, True)


def layer_norm(x: Tensor,
               weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None,
               eps: float = 1e-5,
               out_dtype: Optional[torch.dtype] = None,
               channels_first: bool = False) -> Tensor:
    """LayerNorm over channels, computed in float32, stored in ``out_dtype``.

    ``(x - mean) / sqrt(var + eps) * weight + bias`` with the biased
    variance over the channels, as ``F.layer_norm``.

    Args:
        x: ``(..., C)``, or ``(B, C, *spatial)`` with ``channels_first``.
        weight: ``(C,)`` scale, or None for 1.
        bias: ``(C,)`` shift, or None for 0.
        eps: Added to the variance.
        out_dtype: Dtype of the result; None for x's dtype.
        channels_first: Normalise dim 1 of x and return the result
            channel-last.

    Returns:
        ``(..., C)``, or ``(B, *spatial, C)`` with ``channels_first``.
    """
    _check_norm_args(x, weight, bias, eps, out_dtype, channels_first)
    return run_op('layer_norm', _layer_norm_pytorch, x, weight, bias, eps,
                  out_dtype, channels_first)


def rms_norm(x: Tensor,
             weight: Optional[Tensor] = None,
             eps: float = 1e-5,
             out_dtype: Optional[torch.dtype] = None,
             channels_first: bool = False) -> Tensor:
    """RMSNorm over channels, computed in float32, stored in ``out_dtype``.

    ``x / sqrt(mean(x^2) + eps) * weight``, as ``F.rms_norm``.

    Args:
        x: ``(..., C)``, or ``(B, C, *spatial)`` with ``channels_first``.
        weight: ``(C,)`` scale, or None for 1.
        eps: Added to the mean square.
        out_dtype: Dtype of the result; None for x's dtype.
        channels_first: Normalise dim 1 of x and return the result
            channel-last.

    Returns:
        ``(..., C)``, or ``(B, *spatial, C)`` with ``channels_first``.
    """
    _check_norm_args(x, weight, None, eps, out_dtype, channels_first)
    return run_op('rms_norm', _rms_norm_pytorch, x, weight, eps, out_dtype,
                  channels_first)
