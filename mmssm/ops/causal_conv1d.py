"""Mamba's short causal depthwise convolution, optionally fused with SiLU.

``out[t] = act(bias + sum_k weight[:, 0, k] * x[t - (K - 1 - k)])``, positions
before the sequence start reading zero: Mamba's ``causal_conv1d_fn``, i.e.
``Conv1d(padding=K - 1)`` truncated to the first ``L`` outputs. With
``reverse=True`` the same convolution runs over the reversed sequence and is
reversed back (``out[t]`` sees ``x[t .. t + K - 1]`` with the taps in reversed
order), as Vim's backward direction needs, without materialising either flip.

CUDA inputs take the compiled kernel (``mmssm.ops.cuda_ops``) through
:func:`mmssm.ops.dispatch.run_op`; the PyTorch implementation serves CPU
inputs and ``MMSSM_FORCE_PYTORCH_OPS=1``.
"""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .dispatch import run_op

#: Activations the op can apply after the convolution.
ACTIVATIONS = (None, 'silu')
#: Largest kernel size (taps) of the op (the compiled kernels' limit).
MAX_KERNEL_SIZE = 8


def _check_causal_conv1d_args(x: Tensor, weight: Tensor,
                              bias: Optional[Tensor],
                              activation: Optional[str]) -> None:
    if not isinstance(weight, Tensor) or weight.dim() != 3 or \
            weight.shape[1] != 1:
        got = (tuple(weight.shape)
               if isinstance(weight, Tensor) else type(weight).__name__)
        raise ValueError(f'weight must have shape (E, 1, K), got {got}')
    channels, _, kernel = weight.shape
    if not 1 <= kernel <= MAX_KERNEL_SIZE:
        raise ValueError(f'weight must have a kernel size K in [1, '
                         f'{MAX_KERNEL_SIZE}], got K={kernel}')
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f'x must have shape (B, {channels}, L) to match '
                         f'weight {tuple(weight.shape)}, got {got}')
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f'x must be non-empty, got shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise ValueError(f'x must be a floating-point tensor, got {x.dtype}')
    if weight.device != x.device:
        raise ValueError(f'weight must be on {x.device}, got {weight.device}')
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (channels, ):
            got = (tuple(bias.shape)
                   if isinstance(bias, Tensor) else type(bias).__name__)
            raise ValueError(f'bias must have shape ({channels},), got {got}')
        if bias.device != x.device:
            raise ValueError(f'bias must be on {x.device}, got {bias.device}')
    if activation not in ACTIVATIONS:
        raise ValueError(f'activation must be one of {ACTIVATIONS}, got '
                         f'{activation!r}')


def _causal_conv1d_pytorch(x: Tensor,
                           weight: Tensor,
                           bias: Optional[Tensor] = None,
                           reverse: bool = False,
                           activation: Optional[str] = None) -> Tensor:
    channels, _, kernel = weight.shape
    length = x.shape[-1]
    # Reversed, the sequence is read from the other side with the taps in
    # the opposite order: out[t] = sum_k w[k] x[t + K - 1 - k].
    taps = weight.flip(-1) if reverse else weight
    if x.is_cuda:
        # One cuDNN depthwise conv (under autocast in the autocast dtype).
        out = F.conv1d(x, taps, bias, padding=kernel - 1, groups=channels)
        out = out[..., kernel - 1:] if reverse else out[..., :length]
    else:
        # K shifted, per-channel scaled copies: PyTorch's CPU depthwise
        # conv1d is ~25x slower in float32 and ~1000x in float64.
        padded = F.pad(x, (0, kernel - 1) if reverse else (kernel - 1, 0))
        scales = taps[:, 0].unsqueeze(-1)
        out = sum(padded[..., k:k + length] * scales[:, k]
                  for k in range(kernel))
        if bias is not None:
            out = out + bias.unsqueeze(-1)
    return F.silu(out) if activation == 'silu' else out


def causal_conv1d(x: Tensor,
                  weight: Tensor,
                  bias: Optional[Tensor] = None,
                  reverse: bool = False,
                  activation: Optional[str] = None) -> Tensor:
    """Depthwise convolution where position ``t`` sees ``t - K + 1 .. t``.

    Args:
        x: ``(B, E, L)`` input; any strides.
        weight: ``(E, 1, K)`` taps (an ``nn.Conv1d(E, E, K, groups=E)``
            weight), ``1 <= K <= 8``.
        bias: ``(E,)`` or None.
        reverse: Anti-causal: position ``t`` sees ``t .. t + K - 1`` (the
            causal convolution of the reversed sequence, reversed back).
        activation: None or ``'silu'`` (applied after the bias).

    Returns:
        ``(B, E, L)``. On CUDA the compiled op computes in float32 (float64
        for float64 inputs) and returns x's dtype, or the autocast dtype
        under CUDA autocast, as ``F.conv1d`` does; on the CPU the dtype of
        ``x * weight``.
    """
    _check_causal_conv1d_args(x, weight, bias, activation)
    return run_op('causal_conv1d', _causal_conv1d_pytorch, x, weight, bias,
                  reverse, activation)
