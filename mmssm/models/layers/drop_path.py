"""Stochastic depth without an mmcv dependency (mmssm.models imports no mmcv)."""
import torch
from torch import nn


class DropPath(nn.Module):
    """Drop whole residual branches per sample while training.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is
    unchanged; in eval mode (or with ``drop_prob == 0``) it is the identity.

    Args:
        drop_prob: Probability of dropping a sample's branch.
    """

    def __init__(self, drop_prob: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
        # Scaling the (B, 1, ...) mask rather than the branch saves a pass
        # over the activation, forward and backward.
        mask = x.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)
        return x * mask

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
