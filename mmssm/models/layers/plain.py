"""Shared pieces of plain (ViT-like, single-scale) state-space backbones.

Vim and the plain V2M embed non-overlapping (or stride-8 overlapping)
patches, add an absolute position embedding, run a stack of pre-norm residual
blocks over the token sequence at one resolution and, for dense prediction,
turn selected blocks' outputs into a feature pyramid. This module holds the
family-independent parts:

* :class:`PaddedPatchEmbed`: ``Conv2d(kernel=patch_size, stride=stride)`` on
  an input zero-padded at the bottom/right so that any size works; the token
  grid is ``((H' - patch) // stride + 1, (W' - patch) // stride + 1)`` of the
  padded size ``H' x W'`` (the authors' formula).
* :func:`resize_pos_embed`: bicubic resampling of the patch part of a position
  embedding to another grid (any aspect ratio), a middle class token
  (Vim, index ``M // 2``) kept in place.
* :class:`RMSNorm` and :class:`PlainResidualBlock`: the authors' fused
  add + RMSNorm block in residual-stream form (see the block's docstring).
* :class:`MultiScaleAdapter`: the documented ViTDet-style simple feature
  pyramid that turns single-stride maps into strides 4/8/16/32.
* :func:`drop_path_rates`, :func:`plain_layer_depth`, :func:`tokens_to_map`,
  :func:`residual_dtype`, :func:`as_pair`.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from .drop_path import DropPath
from .norm import autocast_dtype
from torch import nn

from mmssm.ops import rms_norm

Grid = Tuple[int, int]


def as_pair(value: Union[int, Sequence[int]], name: str) -> Grid:
    """Turn a positive int or a pair of positive ints into a pair.

    Args:
        value: The int or pair (0-dim integer tensors, as jit tracing gives
            for shape entries, count as ints).
        name: Argument name for the error message.

    Returns:
        ``(value, value)`` or the pair as a tuple.

    Raises:
        ValueError: If ``value`` is not a positive int or pair of them.
    """
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        # Sizes read off a tensor's shape are 0-dim tensors under jit tracing.
        value = int(value)
    pair = (value, value) if isinstance(value, int) else tuple(
        int(v) if isinstance(v, torch.Tensor) and v.ndim == 0 else v
        for v in value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f'{name} must be a positive int or a pair of '
                         f'positive ints, got {value!r}')
    return pair


def residual_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the residual stream for activations of ``dtype``.

    The authors keep the residual stream in float32 (``residual_in_fp32``)
    whatever the activation dtype; float64 runs stay float64.

    Args:
        dtype: The activation dtype.

    Returns:
        ``promote_types(dtype, float32)``.
    """
    return torch.promote_types(dtype, torch.float32)


class PaddedPatchEmbed(nn.Module):
    """Patch embedding of inputs of any size.

    The input is zero-padded at the bottom and right to the smallest size
    ``H' >= patch_size`` with ``(H' - patch_size) % stride == 0`` (same for
    the width), then ``proj`` (a ``Conv2d`` with kernel ``patch_size`` and
    stride ``stride``, the authors' ``patch_embed.proj``) is applied.

    Args:
        in_channels: Input image channels.
        embed_dims: Token channels.
        patch_size: Patch (kernel) size.
        stride: Distance between patches; ``stride < patch_size`` gives the
            overlapping patches of Vim's long-sequence (stride 8) models.
    """

    def __init__(self,
                 in_channels: int,
                 embed_dims: int,
                 patch_size: Union[int, Sequence[int]] = 16,
                 stride: Union[int, Sequence[int]] = 16) -> None:
        super().__init__()
        self.patch_size = as_pair(patch_size, 'patch_size')
        self.stride = as_pair(stride, 'stride')
        if any(s > p for s, p in zip(self.stride, self.patch_size)):
            raise ValueError(f'stride {self.stride} must not exceed '
                             f'patch_size {self.patch_size} (pixels would '
                             'be skipped)')
        self.proj = nn.Conv2d(
            in_channels,
            embed_dims,
            kernel_size=self.patch_size,
            stride=self.stride)

    def padded_size(self, size: Grid) -> Grid:
        """The input size after padding.

        Args:
            size: ``(H, W)`` of the input.

        Returns:
            ``(H', W')``.
        """
        return tuple(
            patch + math.ceil(max(length - patch, 0) / stride) * stride
            for length, patch, stride in zip(size, self.patch_size,
                                              self.stride))

    def grid_size(self, size: Grid) -> Grid:
        """The token grid of an input.

        Args:
            size: ``(H, W)`` of the (unpadded) input.

        Returns:
            ``(h, w)``: tokens per column and per row.
        """
        return tuple((length - patch) // stride + 1
                     for length, patch, stride in zip(
                         self.padded_size(size), self.patch_size, self.stride))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """Embed a batch of images.

        Args:
            x: ``(B, C_in, H, W)`` images.

        Returns:
            Tokens ``(B, h * w, embed_dims)`` in row-major grid order, and
            the grid ``(h, w)``.
        """
        if x.dim() != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f'x must have shape (B, {self.proj.in_channels}, H, W), got '
                f'{tuple(x.shape)}')
        height, width = x.shape[-2:]
        padded_h, padded_w = self.padded_size((height, width))
        if (padded_h, padded_w) != (height, width):
            x = F.pad(x, (0, padded_w - width, 0, padded_h - height))
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


def resize_pos_embed(pos_embed: torch.Tensor,
                     src_grid: Sequence[int],
                     dst_grid: Sequence[int],
                     with_mid_cls_token: bool = False) -> torch.Tensor:
    """Resample an absolute position embedding to another token grid.

    The patch part is reshaped to its ``src_grid`` (row-major) and resized
    bicubically (``align_corners=False``) to ``dst_grid``; at the same grid
    the input is returned unchanged. A middle class token (Vim: index
    ``M // 2`` of ``M + 1`` tokens) keeps its embedding and is put back at
    index ``M' // 2`` of the new ``M' + 1`` tokens.

    Args:
        pos_embed: ``(1, L, C)`` with ``L = h_src * w_src (+ 1)``.
        src_grid: ``(h_src, w_src)`` of ``pos_embed``.
        dst_grid: ``(h_dst, w_dst)`` wanted.
        with_mid_cls_token: Whether ``pos_embed`` holds a middle class token.

    Returns:
        ``(1, h_dst * w_dst (+ 1), C)`` in ``pos_embed``'s dtype.

    Raises:
        ValueError: If ``pos_embed``'s length does not fit ``src_grid``.
    """
    src_h, src_w = as_pair(tuple(src_grid), 'src_grid')
    dst_h, dst_w = as_pair(tuple(dst_grid), 'dst_grid')
    num_extra = int(with_mid_cls_token)
    if (pos_embed.dim() != 3 or pos_embed.shape[0] != 1
            or pos_embed.shape[1] != src_h * src_w + num_extra):
        raise ValueError(
            f'pos_embed must have shape (1, {src_h * src_w + num_extra}, C) '
            f'for src_grid {(src_h, src_w)} '
            f'(with_mid_cls_token={with_mid_cls_token}), got '
            f'{tuple(pos_embed.shape)}')
    if (src_h, src_w) == (dst_h, dst_w):
        return pos_embed
    channels = pos_embed.shape[2]
    patch_part = pos_embed
    if with_mid_cls_token:
        cls_index = src_h * src_w // 2
        cls_part = pos_embed[:, cls_index:cls_index + 1]
        patch_part = torch.cat(
            [pos_embed[:, :cls_index], pos_embed[:, cls_index + 1:]], dim=1)
    grid = patch_part.reshape(1, src_h, src_w, channels).permute(0, 3, 1, 2)
    # Bicubic is not implemented for half types on every device.
    compute_dtype = residual_dtype(pos_embed.dtype)
    resized = F.interpolate(
        grid.to(compute_dtype),
        size=(dst_h, dst_w),
        mode='bicubic',
        align_corners=False).to(pos_embed.dtype)
    resized = resized.permute(0, 2, 3, 1).reshape(1, dst_h * dst_w, channels)
    if with_mid_cls_token:
        cls_index = dst_h * dst_w // 2
        resized = torch.cat(
            [resized[:, :cls_index], cls_part, resized[:, cls_index:]], dim=1)
    return resized


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Reshape row-major patch tokens to an NCHW map.

    Args:
        tokens: ``(B, h * w, C)``.
        grid: ``(h, w)``.

    Returns:
        ``(B, C, h, w)`` (contiguous).
    """
    height, width = grid
    if tokens.dim() != 3 or tokens.shape[1] != height * width:
        raise ValueError(f'tokens must have shape (B, {height * width}, C) '
                         f'for grid {tuple(grid)}, got {tuple(tokens.shape)}')
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, height,
                                          width).contiguous()


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, ``weight`` but no bias.

    ``y = x / sqrt(mean(x^2) + eps) * weight``, computed in float32 or wider
    and returned in ``x``'s dtype (as the authors' Triton kernel does) or in
    the dtype asked for (:func:`mmssm.ops.rms_norm`).

    Args:
        dims: Size of the last dimension.
        eps: Added to the mean square.
    """

    def __init__(self, dims: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dims))

    def forward(self,
                x: torch.Tensor,
                out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Normalise ``x`` (..., dims).

        Args:
            x: The input.
            out_dtype: Dtype of the result; None for x's dtype.
        """
        return rms_norm(x, self.weight, self.eps, out_dtype)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'


class PlainResidualBlock(nn.Module):
    """Pre-norm residual block: ``r + drop_path(mixer(RMSNorm(r)))``.

    The authors' ``Block`` computes ``Add -> Norm -> Mixer`` and returns
    ``(mixer output, residual)`` so that the add can be fused with the next
    block's norm; summing the two gives the residual stream, so chaining
    their blocks equals chaining this one on the stream
    ``r_{i+1} = r_i + drop_path(mixer_i(norm_i(r_i)))`` (``r_0`` = embedded
    tokens); the authors' final fused add + ``norm_f`` is ``RMSNorm(r_depth)``.
    The stream is kept in float32 or wider (``residual_in_fp32``); the norm
    is computed in float32 or wider (as the authors' fused kernel does) and
    its output stored in the autocast dtype under autocast, else in the norm
    weight's dtype, for the mixer. The mixer output of block ``i`` gets
    drop-path rate ``drop_path_rates(rate, depth)[i]``, which is where the
    authors' shifted ``[0] + dpr`` schedule and final ``drop_path`` apply
    it.

    Args:
        embed_dims: Token channels.
        mixer: Maps ``(B, L, embed_dims)`` to the same shape.
        drop_path: Drop-path rate of the mixer output.
        norm_eps: Epsilon of the RMSNorm.
        with_cp: Recompute the block in the backward pass (activation
            checkpointing) while training.
    """

    def __init__(self,
                 embed_dims: int,
                 mixer: nn.Module,
                 drop_path: float = 0.0,
                 norm_eps: float = 1e-5,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(embed_dims, eps=norm_eps)
        self.drop_path = (
            DropPath(drop_path) if drop_path > 0 else nn.Identity())
        self.with_cp = with_cp

    def _forward(self, residual: torch.Tensor) -> torch.Tensor:
        # Under autocast the norm stores the mixer's input projection dtype.
        out_dtype = autocast_dtype(residual) or self.norm.weight.dtype
        hidden = self.mixer(self.norm(residual, out_dtype))
        # Type promotion adds the autocast-dtype branch in the residual's
        # dtype without a cast op.
        return residual + self.drop_path(hidden)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        """Advance the residual stream ``(B, L, embed_dims)`` by one block."""
        if self.with_cp and self.training and residual.requires_grad:
            return cp.checkpoint(self._forward, residual, use_reentrant=False)
        return self._forward(residual)


def drop_path_rates(drop_path_rate: float, depth: int) -> List[float]:
    """Per-block drop-path rates rising linearly from 0 to the given rate.

    Args:
        drop_path_rate: Rate of the last block.
        depth: Number of blocks.

    Returns:
        ``depth`` rates.
    """
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(
            f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
    # Plain floats: the rates must not depend on the default device (meta).
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (B, C, H, W) over C."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MultiScaleAdapter(nn.Module):
    """ViTDet-style simple feature pyramid for plain backbones.

    Input ``i`` (a ``(B, C, h, w)`` map at the patch stride ``in_stride``,
    e.g. one selected block's patch tokens) is rescaled by
    ``in_stride / out_strides[i]``, which must be a power of two:

    * ``2^k`` up (``k >= 1``): ``k`` ``ConvTranspose2d(C, C, 2, stride=2)``
      with ``LayerNorm2d + GELU`` between consecutive ones (with stride-16
      patches: two for stride 4, one for stride 8);
    * equal: identity (stride 16 with stride-16 patches);
    * ``2^k`` down: ``MaxPool2d(2^k, stride=2^k, ceil_mode=True)`` (stride 32
      with stride-16 patches), so an ``h x w`` map becomes
      ``ceil(h / 2^k) x ceil(w / 2^k)``;

    followed in every branch by a ``LayerNorm2d`` (eps 1e-6). Channels stay
    ``C``. Stride-8 patches shift every scale by one step (one deconv for
    stride 4, identity for 8, pooling by 2 and 4 for 16 and 32).

    Args:
        embed_dims: Channels ``C`` of every input and output.
        in_stride: Stride of the input maps (the patch stride).
        out_strides: Wanted stride of each output, one per input.
    """

    def __init__(self, embed_dims: int, in_stride: int,
                 out_strides: Sequence[int]) -> None:
        super().__init__()
        if len(out_strides) == 0:
            raise ValueError('out_strides must name at least one stride')
        self.in_stride = in_stride
        self.out_strides = tuple(out_strides)
        self.branches = nn.ModuleList(
            self._make_branch(embed_dims, in_stride, stride)
            for stride in self.out_strides)

    @staticmethod
    def _make_branch(embed_dims: int, in_stride: int,
                     out_stride: int) -> nn.Sequential:
        if not (isinstance(out_stride, int) and out_stride > 0
                and math.log2(in_stride / out_stride).is_integer()):
            raise ValueError(
                f'out_strides entry {out_stride!r} must be the patch stride '
                f'{in_stride} times a power of two')
        # Positive: number of 2x upsamplings; negative: of 2x downsamplings.
        steps = int(math.log2(in_stride / out_stride))
        layers: List[nn.Module] = []
        for step in range(steps):
            if step > 0:
                layers += [LayerNorm2d(embed_dims, eps=1e-6), nn.GELU()]
            layers.append(
                nn.ConvTranspose2d(embed_dims, embed_dims, 2, stride=2))
        if steps < 0:
            factor = 2**(-steps)
            layers.append(
                nn.MaxPool2d(factor, stride=factor, ceil_mode=True))
        layers.append(LayerNorm2d(embed_dims, eps=1e-6))
        return nn.Sequential(*layers)

    def forward(self,
                maps: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Rescale one map per branch.

        Args:
            maps: ``len(out_strides)`` maps ``(B, C, h, w)``.

        Returns:
            The rescaled maps, in order.
        """
        if len(maps) != len(self.branches):
            raise ValueError(f'expected {len(self.branches)} maps (one per '
                             f'out_strides entry), got {len(maps)}')
        return tuple(branch(x) for branch, x in zip(self.branches, maps))


def plain_layer_depth(param_name: str, prefix: str,
                      num_blocks: int) -> Tuple[int, int]:
    """Layer id for layer-wise lr decay of a plain backbone's parameter.

    mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` convention with
    ``num_blocks + 2`` layers: the embeddings (``patch_embed``,
    ``pos_embed``, ``cls_token``) are layer 0, block ``i`` (``layers.{i}``)
    is layer ``i + 1``, everything else (final norm, pyramid adapter, and
    any module outside the backbone) is the last layer.

    Args:
        param_name: Full parameter name.
        prefix: The backbone's prefix in the whole model (e.g.
            ``'backbone.'``).
        num_blocks: Number of blocks of the backbone.

    Returns:
        ``(layer_id, num_blocks + 2)``.
    """
    num_layers = num_blocks + 2
    if not param_name.startswith(prefix):
        return num_layers - 1, num_layers
    name = param_name[len(prefix):]
    if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed.'):
        return 0, num_layers
    if name.startswith('layers.'):
        return int(name.split('.')[1]) + 1, num_layers
    return num_layers - 1, num_layers
