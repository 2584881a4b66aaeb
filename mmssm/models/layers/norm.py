"""LayerNorm whose output takes the autocast dtype.

Under autocast PyTorch runs ``layer_norm`` in float32 and returns float32,
which the matrix product that follows casts to the autocast dtype: a float32
write, a read and a cast copy per norm. :class:`LayerNorm` computes in float32
as well but stores its output in the autocast dtype at once
(:func:`mmssm.ops.layer_norm`), and can normalise a channels-first map
straight into a channel-last output.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from mmssm.ops import layer_norm


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast gives the half-precision ops of ``x``'s device.

    Args:
        x: An activation.

    Returns:
        The autocast dtype where autocast is on for x's device type and x is
        not float64, else None.
    """
    device_type = x.device.type
    if x.dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over channels whose output takes the autocast dtype.

    Same parameters and state-dict keys as ``nn.LayerNorm(num_channels)``.
    The norm is computed in float32 (float64 for float64 inputs); its output
    has the autocast dtype under autocast, else x's dtype. Use it where a
    matrix product consumes the output, not where the output joins a
    float32 residual stream.

    Args:
        num_channels: Channels C.
        eps: Added to the variance.
        channels_first: Normalise dim 1 of a ``(B, C, *spatial)`` input and
            return it channel-last, ``(B, *spatial, C)``.
    """

    def __init__(self,
                 num_channels: int,
                 eps: float = 1e-5,
                 channels_first: bool = False) -> None:
        super().__init__(num_channels, eps=eps)
        self.channels_first = channels_first

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (see the class docstring for the layouts)."""
        return layer_norm(x, self.weight, self.bias, self.eps,
                          autocast_dtype(x), self.channels_first)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, '
                f'channels_first={self.channels_first}')
