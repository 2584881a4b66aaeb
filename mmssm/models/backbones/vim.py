"""Vim (Vision Mamba): a plain backbone of bidirectional Mamba blocks.

Reimplements the released middle-class-token models of Zhu et al.
(hustvl/Vim, ``vim/models_mamba.py`` ``VisionMamba`` with ``bimamba_type
'v2'``; ../shared/papers/vim.txt eq. 4 and the block of Fig. 2): 16x16
patches (stride 16, or stride 8 for the long-sequence ``+`` models), a class
token inserted in the middle of the row-major patch sequence (index ``M // 2``
of ``M`` patches), an absolute position embedding, ``depth`` pre-RMSNorm
residual blocks whose mixer runs one selective scan forwards and one
backwards over the sequence (shared in/out projections and gate, separate
conv1d, x/dt projections, A and D per direction; output
``out_proj((y_fwd + flip(y_bwd)) / 2)``), and a final RMSNorm (``norm_f``).

Outputs for dense prediction: the residual stream after each block in
``out_indices`` (the fixtures' ``layers.{i}.tokens``; optionally normalised by
``norm_f``), class token removed, reshaped to a stride-``stride`` map and
passed through the ViTDet-style :class:`MultiScaleAdapter` (strides 4/8/16/32
by default). Checkpoints: the authors' ``ckpt['model']`` files (stride 16 and
8), mmssm's own keys and mmdet/mmseg checkpoints load through
:meth:`Vim.convert_checkpoint`; :func:`build_official_classifier` rebuilds the
authors' ImageNet classifier for ``from_official('vim', ...)``.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmssm.ops import causal_conv1d, selective_scan
from ..layers.plain import (Grid, MultiScaleAdapter, PaddedPatchEmbed,
                            PlainResidualBlock, RMSNorm, as_pair,
                            drop_path_rates, plain_layer_depth,
                            residual_dtype, resize_pos_embed, tokens_to_map)
from ..layers.projection import project_channels
from ..official import SSMClassifier, register_official
from ...registry import MODELS
from .base import SSMBackbone

OUT_TYPES = ('featmap', 'raw', 'cls_token')


def _lecun_normal_(weight: Tensor) -> None:
    """Truncated normal with variance ``1 / fan_in`` (the authors' conv init).

    Args:
        weight: A convolution weight ``(out, in, *kernel)``, set in place.
    """
    fan_in = weight[0].numel()
    # 0.8796... is the std of a standard normal truncated to [-2, 2].
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class BidirectionalMambaMixer(nn.Module):
    """Vim's mixer: Mamba run forwards and backwards over the sequence.

    ``x, z = in_proj(tokens)``; for each direction (the backward one on the
    reversed sequence of both ``x`` and ``z``):
    ``u = silu(causal_conv1d(x))``, ``[dt, B, C] = x_proj(u)``,
    ``y = selective_scan(u, dt_proj.weight @ dt, -exp(A_log), B, C, D, z,
    delta_bias=dt_proj.bias, softplus)``; the output is
    ``out_proj((y_fwd + flip(y_bwd)) / 2)`` (the authors' ``if_divide_out``).
    mmssm computes the backward direction with an anti-causal convolution and
    a reversed scan in place of the flips (the same function).
    Parameter names and initialisation follow the authors' ``Mamba`` with
    ``bimamba_type='v2'``; backward-direction parameters carry ``_b``.

    Args:
        embed_dims: Token channels ``C``.
        d_state: SSM state size ``N``.
        num_layers: Number of blocks of the model (``out_proj`` is scaled by
            ``1 / sqrt(num_layers)`` at initialisation).
        expand: Inner channels ``E = expand * C``.
        d_conv: Kernel size of the causal convolutions.
    """

    def __init__(self,
                 embed_dims: int,
                 d_state: int,
                 num_layers: int,
                 expand: int = 2,
                 d_conv: int = 4) -> None:
        super().__init__()
        inner = expand * embed_dims
        self.d_inner = inner
        self.d_state = d_state
        self.dt_rank = math.ceil(embed_dims / 16)
        self.in_proj = nn.Linear(embed_dims, 2 * inner, bias=False)
        self.out_proj = nn.Linear(inner, embed_dims, bias=False)
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(num_layers)
        for suffix in ('', '_b'):
            self.add_module(
                'conv1d' + suffix,
                nn.Conv1d(inner, inner, d_conv, groups=inner, bias=True))
            self.add_module(
                'x_proj' + suffix,
                nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module('dt_proj' + suffix,
                            self._make_dt_proj(self.dt_rank, inner))
            a_log = torch.log(
                torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
                    inner, 1)
            self.register_parameter('A' + suffix + '_log',
                                    nn.Parameter(a_log))
            self.register_parameter('D' + suffix,
                                    nn.Parameter(torch.ones(inner)))

    @staticmethod
    def _make_dt_proj(dt_rank: int, inner: int) -> nn.Linear:
        """Step-size projection, bias set so softplus(bias) is in [1e-3, 0.1].

        Args:
            dt_rank: Input features.
            inner: Output features.

        Returns:
            The initialised ``nn.Linear``.
        """
        dt_proj = nn.Linear(dt_rank, inner, bias=True)
        bound = dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        log_min, log_max = math.log(1e-3), math.log(1e-1)
        dt = torch.exp(
            torch.rand(inner) * (log_max - log_min) + log_min).clamp(min=1e-4)
        with torch.no_grad():
            # Inverse of softplus.
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        return dt_proj

    def _scan(self, x: Tensor, z: Tensor, suffix: str,
              reverse: bool) -> Tensor:
        """One direction: conv, projections and gated selective scan.

        Args:
            x: ``(B, E, L)`` scan input before the convolution (any strides).
            z: ``(B, E, L)`` gate.
            suffix: ``''`` (forward) or ``'_b'`` (backward parameters).
            reverse: Scan from the last position to the first (the backward
                direction, computed in place of the authors' flips).

        Returns:
            ``(B, E, L)``.
        """
        conv = getattr(self, 'conv1d' + suffix)
        dt_proj = getattr(self, 'dt_proj' + suffix)
        a_log = getattr(self, 'A' + suffix + '_log')
        u = causal_conv1d(x, conv.weight, conv.bias, reverse,
                          activation='silu')
        # Projections applied as W @ u keep the (B, channels, L) layout the
        # scan reads, so no transposed copy of u or delta is made.
        projected = project_channels(
            getattr(self, 'x_proj' + suffix).weight, u)
        dt, state_in, state_out = projected.split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = project_channels(dt_proj.weight, dt)
        # A is formed in float32 or wider, as the authors do.
        a = -torch.exp(a_log.to(residual_dtype(a_log.dtype)))
        return selective_scan(
            u,
            delta,
            a,
            state_in,
            state_out,
            D=getattr(self, 'D' + suffix),
            z=z,
            delta_bias=dt_proj.bias,
            delta_softplus=True,
            reverse=reverse)

    def forward(self, tokens: Tensor) -> Tensor:
        """Mix a token sequence.

        Args:
            tokens: ``(B, L, C)``.

        Returns:
            ``(B, L, C)``.
        """
        x, z = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)
        # One contiguous copy of each serves both directions (the
        # convolutions and the scans read them in this layout).
        x, z = x.contiguous(), z.contiguous()
        forward = self._scan(x, z, '', reverse=False)
        backward = self._scan(x, z, '_b', reverse=True)
        mixed = project_channels(self.out_proj.weight,
                                 (forward + backward) / 2)
        return mixed.transpose(1, 2)


@MODELS.register_module()
class Vim(SSMBackbone):
    """Vision Mamba backbone (middle class token, bidirectional v2 mixer).

    The token sequence is the row-major patch grid with the class token
    inserted at index ``M // 2`` (``M`` patches), plus ``pos_embed``, which is
    stored for the ``img_size`` grid and resized bicubically (class token kept)
    to the grid of every input. Inputs of any size are zero-padded at the
    bottom/right to fit the patches (:class:`PaddedPatchEmbed`).

    Outputs, one per entry of ``out_indices`` (blocks, sorted): the residual
    stream after that block (``r_{i+1} = r_i + mixer_i(norm_i(r_i))``; the
    fixtures' ``layers.{i}.tokens``), normalised by ``norm_f`` if
    ``final_norm``, then by ``out_type``:

    * ``'featmap'``: class token removed, patch tokens reshaped to a
      ``(B, C, h, w)`` map at the patch stride; with ``pyramid_strides`` the
      maps go through :class:`MultiScaleAdapter` (output ``i`` at stride
      ``pyramid_strides[i]``; default 4/8/16/32 for the 4 default blocks).
    * ``'raw'``: the ``(B, M + 1, C)`` token sequences, class token included
      (used by the classifier head of :func:`build_official_classifier`).
    * ``'cls_token'``: the ``(B, C)`` class token (for mmpretrain's
      ``LinearClsHead``; the authors' features are ``final_norm=True``).

    The authors' segmentation code (hustvl/Vim ``seg/backbone/vim.py``) drops
    the class token and takes the mixer outputs with a BatchNorm pyramid;
    mmssm keeps the pretrained class token in the sequence (the function the
    ImageNet weights were trained for) and takes the residual stream.

    ``frozen_stages=k`` (``k >= 0``) freezes the patch embedding, class token
    and position embedding, plus blocks ``0 .. k-1``, plus ``norm_f`` when
    ``k == num_layers``; ``-1`` freezes nothing. The adapter is never frozen.

    Args:
        arch: ``'tiny'`` (192 channels), ``'small'`` (384), ``'base'`` (768),
            all 24 blocks and ``d_state`` 16, or a dict with keys
            ``embed_dims``, ``num_layers`` and ``d_state``.
        img_size: Image size of the pretraining grid of ``pos_embed``.
        patch_size: Patch size.
        stride: Patch stride (16, or 8 for Vim-Ti+/S+).
        in_channels: Image channels.
        out_indices: Blocks to output (negative ones count from the end).
            None: the last block of each quarter of the depth (5, 11, 17, 23
            for 24 blocks).
        out_type: ``'featmap'``, ``'raw'`` or ``'cls_token'``.
        pyramid_strides: Output strides of the adapter, one per out index;
            None returns the patch-stride maps. Only for ``'featmap'``.
        final_norm: Apply the final RMSNorm ``norm_f`` to every output.
        drop_path_rate: Drop-path rate of the last block (linear from 0).
        norm_eps: Epsilon of every RMSNorm.
        frozen_stages: See above.
        with_cp: Activation checkpointing of every block while training.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained',
            checkpoint=PATH)`` for any checkpoint :meth:`convert_checkpoint`
            reads.
    """

    arch_zoo = {
        'tiny': dict(embed_dims=192, num_layers=24, d_state=16),
        'small': dict(embed_dims=384, num_layers=24, d_state=16),
        'base': dict(embed_dims=768, num_layers=24, d_state=16),
    }
    # The pyramid adapter does not exist in ImageNet checkpoints.
    pretrained_fresh_patterns = ('adapter.*', )

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 stride: int = 16,
                 in_channels: int = 3,
                 out_indices: Optional[Union[int, Sequence[int]]] = None,
                 out_type: str = 'featmap',
                 pyramid_strides: Optional[Sequence[int]] = (4, 8, 16, 32),
                 final_norm: bool = False,
                 drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        settings = self._parse_arch(arch)
        self.embed_dims = settings['embed_dims']
        self.num_layers = settings['num_layers']
        self.d_state = settings['d_state']
        if not isinstance(stride, int) or not isinstance(patch_size, int):
            raise ValueError(f'patch_size and stride must be ints, got '
                             f'{patch_size!r} and {stride!r}')
        self.patch_embed = PaddedPatchEmbed(in_channels, self.embed_dims,
                                            patch_size, stride)
        self.img_size = as_pair(img_size, 'img_size')
        self.pretrain_grid = self.patch_embed.grid_size(self.img_size)
        num_patches = self.pretrain_grid[0] * self.pretrain_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, self.embed_dims))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        _lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)

        rates = drop_path_rates(drop_path_rate, self.num_layers)
        self.layers = nn.ModuleList(
            PlainResidualBlock(
                self.embed_dims,
                BidirectionalMambaMixer(self.embed_dims, self.d_state,
                                        self.num_layers),
                drop_path=rates[i],
                norm_eps=norm_eps,
                with_cp=with_cp) for i in range(self.num_layers))
        self.final_norm = final_norm
        if final_norm:
            self.norm_f = RMSNorm(self.embed_dims, eps=norm_eps)

        if out_indices is None:
            out_indices = tuple(self.num_layers * (q + 1) // 4 - 1
                                for q in range(4))
        self.out_indices = self._check_out_indices(out_indices,
                                                   self.num_layers)
        if out_type not in OUT_TYPES:
            raise ValueError(
                f'out_type must be one of {OUT_TYPES}, got {out_type!r}')
        self.out_type = out_type
        self.adapter = None
        self.out_strides = (stride, ) * len(self.out_indices)
        if pyramid_strides is not None:
            if out_type != 'featmap':
                raise ValueError(
                    f"pyramid_strides needs out_type='featmap', got "
                    f'{out_type!r} (pass pyramid_strides=None)')
            if len(pyramid_strides) != len(self.out_indices):
                raise ValueError(
                    f'pyramid_strides {tuple(pyramid_strides)} must have one '
                    f'stride per out_indices entry {self.out_indices}')
            self.adapter = MultiScaleAdapter(self.embed_dims, stride,
                                             pyramid_strides)
            self.out_strides = tuple(pyramid_strides)
        self.out_channels = (self.embed_dims, ) * len(self.out_indices)

        if not (isinstance(frozen_stages, int)
                and -1 <= frozen_stages <= self.num_layers):
            raise ValueError(f'frozen_stages must be an int in [-1, '
                             f'{self.num_layers}], got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        """Resolve ``arch`` to ``embed_dims``, ``num_layers``, ``d_state``."""
        required = {'embed_dims', 'num_layers', 'd_state'}
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(
                    f'arch {arch!r} is not one of {sorted(cls.arch_zoo)}; or '
                    f'pass a dict with keys {sorted(required)}')
            return dict(cls.arch_zoo[arch.lower()])
        if not isinstance(arch, dict) or set(arch) != required:
            raise ValueError(f'arch must be one of {sorted(cls.arch_zoo)} or '
                             f'a dict with exactly the keys '
                             f'{sorted(required)}, got {arch!r}')
        if not all(isinstance(v, int) and v > 0 for v in arch.values()):
            raise ValueError(f'arch values must be positive ints, got {arch}')
        return dict(arch)

    def embed(self, x: Tensor) -> Tuple[Tensor, Grid]:
        """Embed images into the residual stream ``r_0``.

        Args:
            x: ``(B, C_in, H, W)`` images.

        Returns:
            ``(B, M + 1, C)`` tokens (float32 or wider) with the class token
            at index ``M // 2``, and the patch grid ``(h, w)``.
        """
        tokens, grid = self.patch_embed(x)
        # The class token and position embedding join the float32 (or
        # wider) stream, never a half-precision copy of it.
        tokens = tokens.to(residual_dtype(tokens.dtype))
        middle = tokens.shape[1] // 2
        cls_token = self.cls_token.to(tokens.dtype).expand(
            tokens.shape[0], -1, -1)
        tokens = torch.cat(
            [tokens[:, :middle], cls_token, tokens[:, middle:]], dim=1)
        pos_embed = resize_pos_embed(
            self.pos_embed, self.pretrain_grid, grid, with_mid_cls_token=True)
        return tokens + pos_embed.to(tokens.dtype), grid

    def forward_tokens(self,
                       x: Tensor,
                       num_blocks: Optional[int] = None
                       ) -> Tuple[List[Tensor], Grid]:
        """Run the first ``num_blocks`` blocks and keep every block's output.

        Args:
            x: ``(B, C_in, H, W)`` images.
            num_blocks: Blocks to run (default: all).

        Returns:
            The residual stream after each block, ``(B, M + 1, C)`` with the
            class token at ``M // 2`` (the fixtures' ``layers.{i}.tokens``),
            and the patch grid ``(h, w)``.
        """
        stream, grid = self.embed(x)
        outputs = []
        for layer in self.layers[:num_blocks]:
            stream = layer(stream)
            outputs.append(stream)
        return outputs, grid

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Features of a batch of images (see the class docstring).

        Args:
            x: ``(B, C_in, H, W)`` images.

        Returns:
            One tensor per ``out_indices`` entry.
        """
        streams, grid = self.forward_tokens(x, max(self.out_indices) + 1)
        selected = [streams[i] for i in self.out_indices]
        if self.final_norm:
            selected = [self.norm_f(tokens) for tokens in selected]
        if self.out_type == 'raw':
            return tuple(selected)
        middle = grid[0] * grid[1] // 2
        if self.out_type == 'cls_token':
            return tuple(tokens[:, middle] for tokens in selected)
        maps = [
            tokens_to_map(
                torch.cat([tokens[:, :middle], tokens[:, middle + 1:]], 1),
                grid) for tokens in selected
        ]
        if self.adapter is not None:
            return self.adapter(maps)
        return tuple(maps)

    def _freeze_stages(self) -> None:
        """Freeze the embeddings and the first ``frozen_stages`` blocks."""
        if self.frozen_stages < 0:
            return
        frozen: List[nn.Module] = [self.patch_embed]
        frozen += list(self.layers[:self.frozen_stages])
        if self.final_norm and self.frozen_stages == self.num_layers:
            frozen.append(self.norm_f)
        self.cls_token.requires_grad_(False)
        self.pos_embed.requires_grad_(False)
        for module in frozen:
            module.eval()
            module.requires_grad_(False)

    def get_layer_depth(self, param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise lr decay (see ``plain_layer_depth``).

        Args:
            param_name: The parameter's name in the whole model.
            prefix: The backbone's prefix, e.g. ``'backbone.'``.

        Returns:
            ``(layer_id, num_layers + 2)``.
        """
        return plain_layer_depth(param_name, prefix, self.num_layers)

    def _checkpoint_pos_embed(self, pos_embed: Tensor) -> Tensor:
        """Resize a checkpoint's ``pos_embed`` to this model's grid.

        The checkpoint's grid is this model's when the patch count matches,
        else it must be square (all released models are).

        Args:
            pos_embed: ``(1, M_ckpt + 1, C)`` with a middle class token.

        Returns:
            ``(1, M + 1, C)``.
        """
        if pos_embed.dim() != 3:
            raise ValueError(f'checkpoint pos_embed must have shape '
                             f'(1, M + 1, C), got {tuple(pos_embed.shape)}')
        num_patches = pos_embed.shape[1] - 1
        if num_patches == self.pretrain_grid[0] * self.pretrain_grid[1]:
            return pos_embed
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f'cannot infer the grid of the checkpoint pos_embed '
                f'{tuple(pos_embed.shape)}: {num_patches} patch tokens are '
                f'neither a square grid nor this model\'s grid '
                f'{self.pretrain_grid}')
        return resize_pos_embed(pos_embed, (side, side), self.pretrain_grid,
                                with_mid_cls_token=True)

    def convert_checkpoint(self,
                           state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Rename a Vim checkpoint to this backbone's keys.

        mmssm's keys equal the authors' (``cls_token``, ``pos_embed``,
        ``patch_embed.proj.*``, ``layers.{i}.norm.weight``,
        ``layers.{i}.mixer.*``, ``norm_f.weight``), so the authors'
        ``ckpt['model']`` (stride 16 or 8), mmssm's own and mmdet/mmseg
        backbones (``backbone.`` removed by the base class) share one path:
        the classifier ``head.*`` is dropped, ``norm_f.*`` is dropped when
        this backbone has no final norm, and ``pos_embed`` is resized to this
        model's ``img_size`` grid.

        Args:
            state_dict: The checkpoint's flat state dict.

        Returns:
            The state dict under this backbone's names.
        """
        converted = {}
        for key, value in state_dict.items():
            if key.startswith('head.'):
                continue
            if key.startswith('norm_f.') and not self.final_norm:
                continue
            if key == 'pos_embed':
                value = self._checkpoint_pos_embed(value)
            converted[key] = value
        return converted


class VimClsHead(nn.Module):
    """The authors' classifier head: ``norm_f`` -> class token -> Linear.

    Args:
        embed_dims: Token channels.
        num_classes: Classes; 0 gives the normed class token itself.
        norm_eps: Epsilon of ``norm_f``.
    """

    def __init__(self, embed_dims: int, num_classes: int,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_f = RMSNorm(embed_dims, eps=norm_eps)
        self.fc = (
            nn.Linear(embed_dims, num_classes)
            if num_classes > 0 else nn.Identity())
        if num_classes > 0:
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Logits from the backbone's ``'raw'`` outputs.

        Args:
            feats: Token sequences ``(B, M + 1, C)``; the last one is used.

        Returns:
            ``(B, num_classes)``.
        """
        tokens = feats[-1]
        if tokens.dim() != 3:
            raise ValueError(
                "VimClsHead needs the backbone's out_type='raw' tokens "
                f'(B, M + 1, C), got {tuple(tokens.shape)}')
        return self.fc(self.norm_f(tokens[:, (tokens.shape[1] - 1) // 2]))


def convert_official_classifier(
        state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename the authors' ``ckpt['model']`` to SSMClassifier keys.

    ``norm_f.weight`` -> ``head.norm_f.weight``, ``head.{weight,bias}`` ->
    ``head.fc.*``, every other key -> ``backbone.<key>``. mmssm's own
    classifier keys (``backbone.*``, ``head.norm_f.*``, ``head.fc.*``) pass
    unchanged. ``pos_embed`` is not resized: :func:`build_official_classifier`
    builds the backbone at the authors' ``img_size``.

    Args:
        state_dict: The checkpoint's flat state dict.

    Returns:
        The state dict under ``SSMClassifier(Vim, VimClsHead)`` names.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(('backbone.', 'head.norm_f.', 'head.fc.')):
            converted[key] = value
        elif key.startswith('norm_f.'):
            converted['head.' + key] = value
        elif key.startswith('head.'):
            converted['head.fc.' + key[len('head.'):]] = value
        else:
            converted['backbone.' + key] = value
    return converted


# The authors' ``VisionMamba`` defaults (vim/models_mamba.py @ dd0358ad1e42).
OFFICIAL_DEFAULTS = dict(
    img_size=224,
    patch_size=16,
    stride=16,
    depth=24,
    embed_dim=192,
    d_state=16,
    channels=3,
    num_classes=1000,
    drop_path_rate=0.1,
    norm_epsilon=1e-5)
# Options whose value changes the computed function: only the released one
# is reimplemented.
OFFICIAL_FIXED = dict(
    rms_norm=True,
    residual_in_fp32=True,
    if_abs_pos_embed=True,
    if_rope=False,
    if_rope_residual=False,
    if_bimamba=False,
    bimamba_type='v2',
    if_cls_token=True,
    use_middle_cls_token=True,
    use_double_cls_token=False,
    if_divide_out=True,
    if_bidirectional=False,
    init_layer_scale=None,
    initializer_cfg=None,
    drop_rate=0.0,
    flip_img_sequences_ratio=-1.0,
    device=None,
    dtype=None)
# Options that do not change the function of a middle-class-token model:
# the fused and unfused add + norm compute the same; the pool type is unused
# with a class token ('max' is not); the RoPE lengths are unused without
# RoPE; ``if_devide_out`` (a misspelling the Vim-B factory passes) is
# swallowed by the authors' ``**kwargs``.
OFFICIAL_IGNORED = dict(
    fused_add_norm=(True, False),
    final_pool_type=('none', 'mean'),
    ft_seq_len=None,
    pt_hw_seq_len=None,
    if_devide_out=None)


def _check_official_kwargs(kwargs: dict) -> dict:
    """Validate the authors' constructor kwargs; fill in their defaults."""
    known = set(OFFICIAL_DEFAULTS) | set(OFFICIAL_FIXED) | set(
        OFFICIAL_IGNORED) | {'ssm_cfg'}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f'unsupported VisionMamba arguments {unknown}; '
                         f'known: {sorted(known)}')
    for key, value in OFFICIAL_FIXED.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f'VisionMamba argument {key}={kwargs[key]!r} is not '
                f'supported: mmssm reimplements the released models '
                f'({key}={value!r})')
    for key, allowed in OFFICIAL_IGNORED.items():
        if allowed is not None and key in kwargs and kwargs[
                key] not in allowed:
            raise ValueError(f'VisionMamba argument {key}={kwargs[key]!r} is '
                             f'not supported (expected one of {allowed})')
    if kwargs.get('ssm_cfg'):
        raise ValueError(f"VisionMamba argument ssm_cfg={kwargs['ssm_cfg']!r}"
                         ' is not supported (expected None: d_conv 4, '
                         'expand 2)')
    settings = dict(OFFICIAL_DEFAULTS)
    settings.update({k: kwargs[k] for k in OFFICIAL_DEFAULTS if k in kwargs})
    return settings


@register_official('vim')
def build_official_classifier(official_kwargs: dict) -> SSMClassifier:
    """The mmssm classifier equal to the authors' ``VisionMamba``.

    Args:
        official_kwargs: Keyword arguments of ``VisionMamba`` (e.g. the
            released ``vim_*_midclstok`` factory's): the released
            configuration (middle class token, v2 mixer, divide-out,
            RMSNorm, absolute position embedding) with any ``img_size``,
            ``patch_size``, ``stride``, ``depth``, ``embed_dim``,
            ``d_state``, ``channels``, ``num_classes``, ``drop_path_rate``,
            ``norm_epsilon``.

    Returns:
        ``SSMClassifier(Vim(out_type='raw'), VimClsHead)`` with the
        official-checkpoint converter.
    """
    settings = _check_official_kwargs(official_kwargs)
    backbone = Vim(
        arch=dict(
            embed_dims=settings['embed_dim'],
            num_layers=settings['depth'],
            d_state=settings['d_state']),
        img_size=settings['img_size'],
        patch_size=settings['patch_size'],
        stride=settings['stride'],
        in_channels=settings['channels'],
        out_indices=(-1, ),
        out_type='raw',
        pyramid_strides=None,
        drop_path_rate=settings['drop_path_rate'],
        norm_eps=settings['norm_epsilon'])
    head = VimClsHead(settings['embed_dim'], settings['num_classes'],
                      settings['norm_epsilon'])
    return SSMClassifier(
        backbone, head, convert_fn=convert_official_classifier)
