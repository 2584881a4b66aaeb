"""VMamba: hierarchical visual state-space backbone (Liu et al.).

The model follows the authors' code (MzeroMiko/VMamba, commit 2ed52ead062a,
``classification/models/vmamba.py``), in the two variants that were
released with weights:

* ``version='v2'`` (VMamba-T/S/B of the v2+ paper; forward type
  ``v05_noz``): two 3x3 stride-2 convolutions as patch embedding, 3x3 stride-2
  convolutions as downsampling, SS2D without the output gate, a GELU MLP
  after every SS2D and LayerNorms over channels.
* ``version='v0'`` (the "vanilla" VMamba of ``papers/vmamba.txt``): a 4x4
  patch embedding, patch merging, a gated SS2D (``y * silu(z)``) and no MLP.

SS2D (``papers/vmamba.txt`` section 3, "2D-Selective-Scan"): the depthwise
convolved features are scanned by a selective scan along four routes
(row-major, column-major and both reversed), each with its own projections
``x_proj``, ``dt_proj`` and its own ``A``/``D``; the four results are summed
back at their pixels. mmssm computes the per-position projections in the
spatial layout and calls :func:`mmssm.ops.cross_selective_scan`, so no
cross-scanned copy of the activations is ever built.

Tensors flow channel-last ``(B, H, W, C)`` between blocks (so every 1x1
projection is an ``nn.Linear`` whose weight has the authors' 2-D shape);
the backbone returns NCHW maps.
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from ..layers.drop_path import DropPath
from ..layers.norm import LayerNorm
from ..layers.projection import project_channels
from torch import nn

from mmssm.ops import cross_selective_scan
from mmssm.registry import MODELS
from ..official import SSMClassifier, register_official
from .base import SSMBackbone

StateDict = Dict[str, torch.Tensor]

_V2 = dict(version='v2', d_state=1, mlp_ratio=4.0, conv_bias=False)
_V0 = dict(version='v0', d_state=16, ssm_ratio=2.0, mlp_ratio=0.0,
           conv_bias=True)

#: Released configurations (``classification/configs/vssm/*.yaml``).
ARCH_ZOO: Dict[str, dict] = {
    # vmambav2v_tiny_224.yaml: VMamba-T [s1l8]
    'tiny': dict(embed_dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, **_V2),
    # vmambav2_small_224.yaml: VMamba-S [s2l15]
    'small': dict(embed_dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, **_V2),
    # vmambav2_base_224.yaml: VMamba-B [s2l15]
    'base': dict(embed_dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, **_V2),
    # vmambav2_tiny_224.yaml: VMamba-T [s2l5]
    'tiny-s2l5': dict(
        embed_dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0, **_V2),
    # vmambav2v_small_224.yaml: VMamba-S [s1l20]
    'small-s1l20': dict(
        embed_dims=96, depths=(2, 2, 20, 2), ssm_ratio=1.0, **_V2),
    # vmambav2v_base_224.yaml: VMamba-B [s1l20]
    'base-s1l20': dict(
        embed_dims=128, depths=(2, 2, 20, 2), ssm_ratio=1.0, **_V2),
    # vmambav0_{tiny,small,base}_224.yaml: vanilla VMamba
    'vanilla-tiny': dict(embed_dims=96, depths=(2, 2, 9, 2), **_V0),
    'vanilla-small': dict(embed_dims=96, depths=(2, 2, 27, 2), **_V0),
    'vanilla-base': dict(embed_dims=128, depths=(2, 2, 27, 2), **_V0),
}

_ARCH_REQUIRED = ('embed_dims', 'depths', 'd_state', 'ssm_ratio',
                  'mlp_ratio', 'version')
_ARCH_OPTIONAL = ('conv_bias', 'dt_rank')
_VERSIONS = ('v2', 'v0')


def resolve_arch(arch: Union[str, dict],
                 zoo: Dict[str, dict],
                 family: str = 'VMamba') -> dict:
    """Validate ``arch`` and fill in its defaults.

    Args:
        arch: A name of ``zoo`` or a dict with the keys ``embed_dims`` (int,
            doubled per stage, or 4 ints), ``depths`` (4 ints), ``d_state``,
            ``ssm_ratio``, ``mlp_ratio``, ``version`` (``'v2'`` or ``'v0'``)
            and optionally ``conv_bias`` and ``dt_rank`` (int or ``'auto'``).
        zoo: The named archs.
        family: The model's name for error messages.

    Returns:
        The complete arch dict with ``embed_dims`` as a 4-tuple.
    """
    if isinstance(arch, str):
        if arch not in zoo:
            raise ValueError(f'arch {arch!r} is not a {family} arch; '
                             f'expected one of {sorted(zoo)} or a dict')
        arch = zoo[arch]
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be a str or a dict, got {type(arch)}')
    missing = [k for k in _ARCH_REQUIRED if k not in arch]
    unknown = [k for k in arch if k not in _ARCH_REQUIRED + _ARCH_OPTIONAL]
    if missing or unknown:
        raise ValueError(f'arch dict: missing keys {missing}, unknown keys '
                         f'{unknown}; expected {_ARCH_REQUIRED} and '
                         f'optionally {_ARCH_OPTIONAL}')
    arch = dict(arch)
    if arch['version'] not in _VERSIONS:
        raise ValueError(f"arch['version'] must be one of {_VERSIONS}, got "
                         f"{arch['version']!r}")
    depths = tuple(arch['depths'])
    if len(depths) != 4 or any(
            not isinstance(d, int) or d < 1 for d in depths):
        raise ValueError(f"arch['depths'] must be 4 positive ints, got "
                         f'{depths}')
    dims = arch['embed_dims']
    dims = (tuple(int(dims * 2**i) for i in range(4)) if isinstance(
        dims, int) else tuple(dims))
    if len(dims) != 4 or any(d < 1 for d in dims):
        raise ValueError("arch['embed_dims'] must be a positive int or 4 "
                         f'positive ints, got {arch["embed_dims"]}')
    if arch['ssm_ratio'] <= 0 or arch['d_state'] < 1:
        raise ValueError("arch['ssm_ratio'] must be > 0 and "
                         "arch['d_state'] >= 1")
    arch.update(embed_dims=dims, depths=depths)
    arch.setdefault('conv_bias', arch['version'] == 'v0')
    arch.setdefault('dt_rank', 'auto')
    return arch


def dt_bias_init(routes: int,
                 d_inner: int,
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Mamba's Δ-bias initialisation for ``routes`` stacked scans.

    Args:
        routes: Number of scan routes (stacked along the first dimension).
        d_inner: Channels per route.
        dt_min: Smallest initial Δ.
        dt_max: Largest initial Δ.
        dt_init_floor: Floor of the initial Δ.

    Returns:
        ``(routes, d_inner)``: softplus⁻¹ of a log-uniform Δ in
        ``[dt_min, dt_max]``, so ``softplus(bias)`` starts in that range.
    """
    dt = torch.exp(
        torch.rand(routes, d_inner) * (math.log(dt_max) - math.log(dt_min)) +
        math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class SS2D(nn.Module):
    """2D selective scan mixer (four cross-scan routes).

    ``in_proj -> [split off gate z] -> 3x3 depthwise conv -> SiLU ->
    cross selective scan -> LayerNorm -> [* SiLU(z)] -> out_proj``.

    Args:
        embed_dims: Channels of the input and output.
        d_state: SSM state size N.
        ssm_ratio: Inner width ``d_inner = int(ssm_ratio * embed_dims)``.
        dt_rank: Rank R of the Δ projection; ``'auto'`` is
            ``ceil(embed_dims / 16)``.
        conv_bias: Whether the depthwise convolution has a bias.
        gated: Multiply by ``SiLU(z)`` from a second half of ``in_proj``
            (``v0``); the ``v2`` models have no gate.
        dt_min: Smallest initial Δ.
        dt_max: Largest initial Δ.
        dt_init_floor: Floor of the initial Δ.
    """

    num_routes = 4

    def __init__(self,
                 embed_dims: int,
                 d_state: int,
                 ssm_ratio: float,
                 dt_rank: Union[int, str] = 'auto',
                 conv_bias: bool = False,
                 gated: bool = False,
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * embed_dims)
        rank = math.ceil(embed_dims / 16) if dt_rank == 'auto' else dt_rank
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got "
                             f'{dt_rank!r}')
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        self.gated = gated
        routes = self.num_routes
        self.in_proj = nn.Linear(
            embed_dims, d_inner * (2 if gated else 1), bias=False)
        self.dwconv = nn.Conv2d(
            d_inner, d_inner, 3, padding=1, groups=d_inner, bias=conv_bias)
        # Per route: the Δ (R), B (N) and C (N) projections of every pixel.
        bound = d_inner**-0.5
        self.x_proj_weight = nn.Parameter(
            torch.empty(routes, rank + 2 * d_state,
                        d_inner).uniform_(-bound, bound))
        self.dt_proj_weight = nn.Parameter(
            torch.empty(routes, d_inner, rank).uniform_(-rank**-0.5,
                                                        rank**-0.5))
        self.dt_proj_bias = nn.Parameter(
            dt_bias_init(routes, d_inner, dt_min, dt_max, dt_init_floor))
        # S4D-real initialisation A = -(1..N), one row per (route, channel).
        log_a = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
        self.A_log = nn.Parameter(log_a.repeat(routes * d_inner, 1))
        self.D = nn.Parameter(torch.ones(routes * d_inner))
        # Normalises the channels-first scan output straight to channel-last.
        self.out_norm = LayerNorm(d_inner, channels_first=True)
        self.out_proj = nn.Linear(d_inner, embed_dims, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix a channel-last map.

        Args:
            x: ``(B, H, W, embed_dims)``.

        Returns:
            ``(B, H, W, embed_dims)``.
        """
        x = self.in_proj(x)
        if self.gated:
            x, z = x.chunk(2, dim=-1)
        # The convolution keeps the channel-last strides of its input: one
        # contiguous (B, D, H, W) copy serves the projections and the scan.
        x = F.silu(self.dwconv(x.permute(0, 3, 1, 2))).contiguous()
        batch, _, height, width = x.shape
        routes = self.num_routes
        # Per-pixel projections for every route, kept at their pixels, as
        # W @ x products in the scan's layout (no transposed copies).
        x_dbl = project_channels(self.x_proj_weight.flatten(0, 1),
                                 x.flatten(2)).view(batch, routes, -1,
                                                    height * width)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state],
                               dim=2)
        delta = torch.matmul(self.dt_proj_weight, dt).view(
            batch, routes, -1, height, width)
        B = B.reshape(batch, routes, self.d_state, height, width)
        C = C.reshape(batch, routes, self.d_state, height, width)
        y = cross_selective_scan(
            x,
            delta,
            -torch.exp(self.A_log),
            B,
            C,
            D=self.D,
            delta_bias=self.dt_proj_bias.flatten(),
            delta_softplus=True)
        y = self.out_norm(y)
        if self.gated:
            y = y * F.silu(z)
        return self.out_proj(y)


class VSSBlock(nn.Module):
    """Visual state-space block: a 2D mixer and (optionally) an MLP.

    ``x + mixer(norm1(x))``, then ``x + mlp(norm2(x))``, both with drop path.

    Args:
        embed_dims: Channels.
        mixer: Token mixer on channel-last maps (e.g. :class:`SS2D`).
        mlp_ratio: MLP width over ``embed_dims``; 0 means no MLP.
        drop_path: Stochastic-depth rate of both residual branches.
    """

    def __init__(self, embed_dims: int, mixer: nn.Module, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        # Norms that feed a projection: float32 statistics, output in the
        # autocast dtype (the residual stream stays float32).
        self.norm1 = LayerNorm(embed_dims)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else (
            nn.Identity())
        self.with_mlp = mlp_ratio > 0
        if self.with_mlp:
            hidden = int(embed_dims * mlp_ratio)
            self.norm2 = LayerNorm(embed_dims)
            self.mlp = nn.Sequential()
            self.mlp.add_module('fc1', nn.Linear(embed_dims, hidden))
            self.mlp.add_module('act', nn.GELU())
            self.mlp.add_module('fc2', nn.Linear(hidden, embed_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        if self.with_mlp:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class ConvPatchEmbed(nn.Module):
    """``v2`` patch embedding: two 3x3 stride-2 convolutions (``ceil(H/4)``).

    Args:
        in_channels: Image channels.
        embed_dims: Output channels.
    """

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, embed_dims // 2, 3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(embed_dims // 2)
        self.conv2 = nn.Conv2d(
            embed_dims // 2, embed_dims, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, ceil(H/4), ceil(W/4), C)``."""
        x = self.norm1(self.conv1(x).permute(0, 2, 3, 1))
        x = self.conv2(F.gelu(x).permute(0, 3, 1, 2))
        return self.norm2(x.permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """``v1`` patch embedding: a 4x4 stride-4 convolution (``floor(H/4)``).

    Args:
        in_channels: Image channels.
        embed_dims: Output channels.
    """

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dims, 4, stride=4)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, H // 4, W // 4, C)``."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """``v3`` downsampling: a 3x3 stride-2 convolution and a LayerNorm.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C_out)``."""
        x = self.conv(x.permute(0, 3, 1, 2))
        return self.norm(x.permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """``v1`` downsampling: concatenate 2x2 neighbours, LayerNorm, Linear.

    Odd sizes are zero-padded at the bottom/right before merging, as the
    authors' ``PatchMerging2D`` does.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C_out)``."""
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # Neighbour order (0,0), (1,0), (0,1), (1,1) fixes the weight layout.
        x = torch.cat([
            x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
            x[:, 1::2, 1::2]
        ], dim=-1)
        return self.reduction(self.norm(x))


class VMambaStage(nn.Module):
    """One resolution of VMamba: optional downsampling, then blocks.

    Args:
        blocks: The stage's blocks.
        downsample: Downsampling into this stage (None for the first).
        with_cp: Checkpoint every block to save activation memory.
    """

    def __init__(self, blocks: List[nn.Module],
                 downsample: Optional[nn.Module], with_cp: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C_prev) -> (B, H', W', C)``."""
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


@MODELS.register_module()
class VMamba(SSMBackbone):
    """VMamba backbone for classification, detection and segmentation.

    Args:
        arch: A name of :data:`ARCH_ZOO` (``tiny``, ``small``, ``base``,
            ``tiny-s2l5``, ``small-s1l20``, ``base-s1l20``, ``vanilla-tiny``,
            ``vanilla-small``, ``vanilla-base``) or an arch dict (see
            :func:`resolve_arch`).
        in_channels: Image channels.
        out_indices: Stages (0-3) whose output maps are returned.
        with_out_norm: Apply a LayerNorm over channels to every returned map
            (``outnorm{i}`` of the authors' detection/segmentation backbone).
            Classifiers whose head has its own norm set it to False.
        frozen_stages: Freeze the patch embedding (0) and the first
            ``frozen_stages`` stages with their output norms; -1 freezes
            nothing.
        drop_path_rate: Largest stochastic-depth rate (linear over blocks).
        with_cp: Gradient checkpointing of every block.
        init_cfg: mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=PATH)``.
    """

    arch_zoo = ARCH_ZOO
    pretrained_fresh_patterns = ('out_norms.*', )

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 with_out_norm: bool = True,
                 frozen_stages: int = -1,
                 drop_path_rate: float = 0.0,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = self._resolve_arch(arch)
        dims, depths = self.arch['embed_dims'], self.arch['depths']
        self.embed_dims, self.depths = dims, depths
        self.out_indices = self._check_out_indices(out_indices, len(depths))
        if not -1 <= frozen_stages <= len(depths):
            raise ValueError(f'frozen_stages must be in [-1, {len(depths)}], '
                             f'got {frozen_stages}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError('drop_path_rate must be in [0, 1), got '
                             f'{drop_path_rate}')
        self.frozen_stages = frozen_stages
        v2 = self.arch['version'] == 'v2'
        self.patch_embed = (ConvPatchEmbed if v2 else PatchEmbed)(in_channels,
                                                                 dims[0])
        num_blocks = sum(depths)
        rates = [drop_path_rate * i / max(num_blocks - 1, 1)
                 for i in range(num_blocks)]
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            downsample = None
            if i > 0:
                downsample = (ConvDownsample if v2 else PatchMerging)(
                    dims[i - 1], dims[i])
            first = sum(depths[:i])
            blocks = [
                VSSBlock(dims[i], self._build_mixer(dims[i]),
                         self.arch['mlp_ratio'], rates[first + j])
                for j in range(depth)
            ]
            self.stages.append(VMambaStage(blocks, downsample, with_cp))
        self.out_norms = nn.ModuleDict({
            str(i): nn.LayerNorm(dims[i])
            for i in self.out_indices
        }) if with_out_norm else None
        self.out_channels = tuple(dims[i] for i in self.out_indices)
        self.out_strides = tuple(4 * 2**i for i in self.out_indices)
        self.apply(self._init_module)
        self._freeze_stages()

    @staticmethod
    def _resolve_arch(arch: Union[str, dict]) -> dict:
        """The complete arch dict of a VMamba arch name or dict."""
        return resolve_arch(arch, ARCH_ZOO)

    def _build_mixer(self, embed_dims: int) -> nn.Module:
        """The SS2D mixer of one block with ``embed_dims`` channels."""
        return SS2D(
            embed_dims,
            d_state=self.arch['d_state'],
            ssm_ratio=self.arch['ssm_ratio'],
            dt_rank=self.arch['dt_rank'],
            conv_bias=self.arch['conv_bias'],
            gated=self.arch['version'] == 'v0')

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        """The authors' initialisation of Linear and LayerNorm layers."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Feature maps of a batch of images.

        Args:
            x: ``(B, in_channels, H, W)``, any H, W >= 4 (>= 32 avoids
                1-pixel maps).

        Returns:
            One ``(B, C_i, H_i, W_i)`` map per ``out_indices`` entry, strides
            4, 8, 16, 32 (``ceil`` sizes; ``floor(H/4)`` first for ``v0``).
            Stages after the last of ``out_indices`` are not run.
        """
        if x.dim() != 4:
            raise ValueError(f'VMamba expects (B, C, H, W) images, got shape '
                             f'{tuple(x.shape)}')
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i > self.out_indices[-1]:
                break
            x = stage(x)
            if i in self.out_indices:
                out = x if self.out_norms is None else self.out_norms[str(i)](
                    x)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    def _freeze_stages(self) -> None:
        """Freeze the patch embedding and the first ``frozen_stages``."""
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if self.out_norms is not None and str(i) in self.out_norms:
                frozen.append(self.out_norms[str(i)])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def get_layer_depth(self, param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise lr decay (mmpretrain's Swin convention).

        Patch embedding is layer 0, block ``j`` of stage ``i`` is layer
        ``sum(depths[:i]) + j + 1``, a downsampling gets the id of the block
        before it, everything else (output norms, heads) the last id.

        Args:
            param_name: Name of the parameter.
            prefix: Prefix of the backbone's parameters in the whole model.

        Returns:
            ``(layer_id, num_layers)``.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('patch_embed.'):
            return 0, num_layers
        match = re.match(r'stages\.(\d+)\.(blocks\.(\d+)|downsample)\.', name)
        if match is None:
            return num_layers - 1, num_layers
        stage = int(match.group(1))
        if match.group(3) is None:
            return sum(self.depths[:stage]), num_layers
        return sum(self.depths[:stage]) + int(match.group(3)) + 1, num_layers

    def convert_checkpoint(self, state_dict: StateDict) -> StateDict:
        """Rename any VMamba checkpoint to this backbone's keys.

        Understands the authors' classification checkpoints (current and
        legacy names, ``ckpt['model']``), their detection/segmentation
        backbone keys (``outnorm{i}``) and mmssm's own keys; the classifier
        (``classifier.*``, legacy ``norm.*``/``head.*``) is dropped.

        Args:
            state_dict: The checkpoint's flat state dict.

        Returns:
            The renamed state dict.
        """
        converted = {}
        for key, value in state_dict.items():
            new_key = official_key_to_mmssm(key, self.arch['version'])
            if new_key is not None:
                converted[new_key] = _as_linear_weight(new_key, value)
        return converted


_SS2D_RENAMES = {
    'conv2d': 'dwconv',
    'dt_projs_weight': 'dt_proj_weight',
    'dt_projs_bias': 'dt_proj_bias',
    'A_logs': 'A_log',
    'Ds': 'D',
}
_PATCH_EMBED_RENAMES = {
    # current names of the v2 patch embedding (nn.Sequential indices)
    'v2': {'0': 'conv1', '2': 'norm1', '5': 'conv2', '7': 'norm2'},
    # current names of the v1 patch embedding; legacy ones are proj/norm
    'v0': {'0': 'proj', '2': 'norm'},
}
_CLASSIFIER_KEY = re.compile(r'^(classifier\.|norm\.|head\.)')


def official_key_to_mmssm(key: str, version: str) -> Optional[str]:
    """Map one key of an authors' VMamba checkpoint to mmssm's backbone.

    Args:
        key: A key of the authors' ``VSSM``/``Backbone_VSSM`` state dict
            (current or legacy names), or an mmssm key (returned unchanged).
        version: ``'v2'`` or ``'v0'`` (the two number the patch embedding's
            layers differently).

    Returns:
        The mmssm key, or None for classifier keys.
    """
    if _CLASSIFIER_KEY.match(key):
        return None
    match = re.match(r'^patch_embed\.(\d+)\.(.*)$', key)
    if match and match.group(1) in _PATCH_EMBED_RENAMES[version]:
        return (f'patch_embed.{_PATCH_EMBED_RENAMES[version][match.group(1)]}'
                f'.{match.group(2)}')
    match = re.match(r'^outnorm(\d+)\.(.*)$', key)
    if match:
        return f'out_norms.{match.group(1)}.{match.group(2)}'
    match = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', key)
    if match:
        stage, rest = int(match.group(1)) + 1, match.group(2)
        # v3 downsampling is an nn.Sequential: 1 = conv, 3 = norm
        index, _, tail = rest.partition('.')
        rest = {'1': f'conv.{tail}', '3': f'norm.{tail}'}.get(index, rest)
        return f'stages.{stage}.downsample.{rest}'
    match = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.([a-z_0-9]+)\.(.*)$',
                     key)
    if match:
        stage, block, module, rest = match.groups()
        prefix = f'stages.{stage}.blocks.{block}.'
        if module in ('norm', 'ln_1'):
            return f'{prefix}norm1.{rest}'
        if module in ('op', 'self_attention'):
            head, _, tail = rest.partition('.')
            head = _SS2D_RENAMES.get(head, head)
            return f'{prefix}mixer.{head}' + (f'.{tail}' if tail else '')
        return f'{prefix}{module}.{rest}'
    return key


def _as_linear_weight(key: str, value: torch.Tensor) -> torch.Tensor:
    """Squeeze a 1x1-convolution weight saved for an mmssm Linear layer."""
    linear = re.search(r'(in_proj|out_proj|fc1|fc2)\.weight$', key)
    if linear and value.dim() == 4 and value.shape[2:] == (1, 1):
        return value.flatten(1)
    return value


class VMambaClassifierHead(nn.Module):
    """The authors' classifier: LayerNorm -> global average pool -> Linear.

    Args:
        in_channels: Channels of the last stage.
        num_classes: Number of classes.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits from the backbone's last map ``(B, C, H, W)``."""
        x = self.norm(feats[-1].permute(0, 2, 3, 1))
        return self.fc(x.mean(dim=(1, 2)))


def convert_official_classifier(state_dict: StateDict) -> StateDict:
    """Map an authors' ``VSSM`` state dict to :class:`SSMClassifier` keys.

    The patch embedding's ``0.weight`` tells ``v2`` (3x3 kernel) from ``v0``
    (4x4 kernel, or legacy ``patch_embed.proj``). Keys already named
    ``backbone.*``/``head.*`` as in an mmssm classifier stay as they are.

    Args:
        state_dict: ``ckpt['model']`` of an authors' checkpoint.

    Returns:
        The state dict named for the classifier.
    """
    stem = state_dict.get('patch_embed.0.weight')
    version = 'v2' if stem is not None and stem.shape[-1] == 3 else 'v0'
    head_renames = {
        'classifier.norm.': 'head.norm.',
        'norm.': 'head.norm.',
        'classifier.head.': 'head.fc.',
        'head.': 'head.fc.',
    }
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(('backbone.', 'head.norm.', 'head.fc.')):
            converted[key] = value
            continue
        for old, new in head_renames.items():
            if key.startswith(old):
                converted[new + key[len(old):]] = value
                break
        else:
            new_key = official_key_to_mmssm(key, version)
            converted[f'backbone.{new_key}'] = _as_linear_weight(
                new_key, value)
    return converted


# Settings of the authors' VSSM that the two released variants fix.
_OFFICIAL_VARIANTS = {
    ('v05_noz', 'ln2d', 'v3', 'v2'): 'v2',
    ('v0', 'ln', 'v1', 'v1'): 'v0',
}
_OFFICIAL_FIXED = dict(
    patch_size=4,
    ssm_act_layer='silu',
    ssm_conv=3,
    mlp_act_layer='gelu',
    gmlp=False,
    patch_norm=True,
    posembed=False,
    ssm_drop_rate=0.0,
    mlp_drop_rate=0.0)
_OFFICIAL_REQUIRED = ('dims', 'depths', 'ssm_d_state', 'ssm_ratio',
                      'forward_type', 'mlp_ratio', 'norm_layer',
                      'downsample_version', 'patchembed_version')
_OFFICIAL_OPTIONAL = ('in_chans', 'num_classes', 'ssm_dt_rank',
                      'ssm_conv_bias', 'drop_path_rate', 'use_checkpoint',
                      'ssm_init', 'imgsize')


@register_official('vmamba')
def build_official_vmamba(official_kwargs: dict) -> SSMClassifier:
    """The mmssm classifier equal to the authors' ``VSSM(**official_kwargs)``.

    Args:
        official_kwargs: Keyword arguments of the authors' ``VSSM``
            (``forward_type`` ``v05_noz`` with ``ln2d``/``v3``/``v2``, or
            ``v0`` with ``ln``/``v1``/``v1``).

    Returns:
        An :class:`SSMClassifier` (backbone without output norms, last stage
        only; head = LayerNorm, average pool, Linear).
    """
    kwargs = dict(official_kwargs)
    missing = [k for k in _OFFICIAL_REQUIRED if k not in kwargs]
    unknown = [
        k for k in kwargs
        if k not in _OFFICIAL_REQUIRED + _OFFICIAL_OPTIONAL + tuple(
            _OFFICIAL_FIXED)
    ]
    if missing or unknown:
        raise ValueError(f'VSSM kwargs: missing {missing}, unsupported '
                         f'{unknown}')
    for name, value in _OFFICIAL_FIXED.items():
        if name in kwargs and kwargs[name] != value:
            raise ValueError(f'VSSM kwarg {name}={kwargs[name]!r} is not '
                             f'supported (mmssm implements {value!r})')
    variant = (kwargs['forward_type'], str(kwargs['norm_layer']).lower(),
               kwargs['downsample_version'], kwargs['patchembed_version'])
    if variant not in _OFFICIAL_VARIANTS:
        raise ValueError(
            '(forward_type, norm_layer, downsample_version, '
            f'patchembed_version) = {variant} is not a released VMamba '
            f'variant; supported: {sorted(_OFFICIAL_VARIANTS)}')
    version = _OFFICIAL_VARIANTS[variant]
    arch = dict(
        embed_dims=kwargs['dims'],
        depths=kwargs['depths'],
        d_state=kwargs['ssm_d_state'],
        ssm_ratio=kwargs['ssm_ratio'],
        mlp_ratio=kwargs['mlp_ratio'],
        version=version,
        dt_rank=kwargs.get('ssm_dt_rank', 'auto'),
        # the authors' v0 mixer always has a convolution bias
        conv_bias=(version == 'v0' or kwargs.get('ssm_conv_bias', True)))
    backbone = VMamba(
        arch=arch,
        in_channels=kwargs.get('in_chans', 3),
        out_indices=(3, ),
        with_out_norm=False,
        drop_path_rate=kwargs.get('drop_path_rate', 0.1),
        with_cp=kwargs.get('use_checkpoint', False))
    head = VMambaClassifierHead(backbone.embed_dims[-1],
                                kwargs.get('num_classes', 1000))
    return SSMClassifier(
        backbone, head, convert_fn=convert_official_classifier)
