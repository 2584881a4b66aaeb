"""Mamba2D: a natively two-dimensional selective state-space backbone.

Reimplements the released (v2) Mamba2D models of Baty et al.
(cocoalex00/Mamba2D): a convolutional stem and stride-2 convolutions between
four stages of MetaFormer blocks. Stages 1-2 mix tokens with the 2D selective
scan (a wavefront recurrence over the top and left neighbours of every pixel)
plus a separable-convolution local path; stages 3-4 use self-attention with 2D
rotary position embeddings. Inside a stage, even blocks scan from the top-left
corner and odd blocks from the bottom-right. A LayerNorm closes every stage;
its output is the stage's feature map.

Checkpoints: the authors' Lightning files (``M2D-{N,T,S}-backbone.ckpt``,
``{'state_dict': {'backbone.*', 'norm.*', 'head.*'}}``), mmssm's own keys and
mmdet/mmseg checkpoints all load through :meth:`Mamba2D.convert_checkpoint`.
:func:`build_official_classifier` rebuilds the authors' ImageNet classifier
for ``mmssm.models.official.from_official('mamba2d', ...)``.
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from ..layers.drop_path import DropPath
from torch import Tensor, nn

from mmssm.ops import wavefront_scan_2d
from ..official import SSMClassifier, register_official
from ...registry import MODELS
from .base import SSMBackbone

SSM_MIXER = 'ssm2d_local'
ATTENTION_MIXER = 'rope_attention'
RELEASED_MIXERS = (SSM_MIXER, SSM_MIXER, ATTENTION_MIXER, ATTENTION_MIXER)


class StarReLU(nn.Module):
    """``scale * relu(x) ** 2 + bias`` with learnable scalar scale and bias.

    Args:
        scale: Initial scale.
        bias: Initial bias.
    """

    def __init__(self, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, ), scale))
        self.bias = nn.Parameter(torch.full((1, ), bias))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation.

        Args:
            x: Any tensor.

        Returns:
            The activated tensor, same shape.
        """
        return self.scale * F.relu(x)**2 + self.bias


class SeparableConvPath(nn.Module):
    """Inverted separable convolution: the mixer's local path.

    Channel-last 1x1 expansion, StarReLU, 3x3 depthwise convolution, StarReLU,
    1x1 projection back; no biases.

    Args:
        channels: Input and output channels.
        expansion: Width multiplier of the hidden layer.
    """

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.pw_expand = nn.Linear(channels, hidden, bias=False)
        self.act1 = StarReLU()
        self.dw_conv = nn.Conv2d(
            hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.act2 = StarReLU()
        self.pw_project = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Run the path.

        Args:
            x: Channel-last features (B, H, W, C).

        Returns:
            Channel-last features (B, H, W, C).
        """
        x = self.act1(self.pw_expand(x))
        x = self.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pw_project(self.act2(x))


class SSM2DMixer(nn.Module):
    """Mamba2D token mixer: 2D selective scan plus a local convolution path.

    ``out_proj(GELU(scan(GELU(in_proj(x))))) + local_path(local_norm(x))``.
    The scan is ``mmssm.ops.wavefront_scan_2d`` with separate top/left step
    sizes, decays and input matrices, a shared output matrix C and skip D.

    Args:
        channels: Token channels C (the inner width equals C).
        d_state: State size N per channel.
        origin: Scan start corner, ``'tl'`` (top-left) or ``'br'``
            (bottom-right).
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        dt_init_floor: Lower clamp of the initial step sizes.
    """

    def __init__(self,
                 channels: int,
                 d_state: int = 16,
                 origin: str = 'tl',
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        if origin not in ('tl', 'br'):
            raise ValueError(f"origin must be 'tl' or 'br', got {origin!r}")
        self.origin = origin
        self.d_state = d_state
        self.dt_rank = math.ceil(channels / 16)
        self.local_norm = nn.LayerNorm(channels)
        self.local_path = SeparableConvPath(channels)
        self.in_proj = nn.Linear(channels, channels)
        self.x_proj = nn.Linear(
            channels, 2 * self.dt_rank + 3 * d_state, bias=False)
        self.dt_proj_top = nn.Linear(self.dt_rank, channels)
        self.dt_proj_left = nn.Linear(self.dt_rank, channels)
        # Mamba's step-size init: log-uniform steps in [dt_min, dt_max] stored
        # through the inverse softplus; both neighbours start from the same.
        dt = torch.exp(
            torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp(min=dt_init_floor)
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        dt_std = self.dt_rank**-0.5
        with torch.no_grad():
            for proj in (self.dt_proj_top, self.dt_proj_left):
                nn.init.uniform_(proj.weight, -dt_std, dt_std)
                proj.bias.copy_(inv_softplus_dt)
        a_log = torch.log(
            torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
                channels, 1)
        self.A_log_top = nn.Parameter(a_log.clone())
        self.A_log_left = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(channels))
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Mix tokens.

        Args:
            x: Normalised channel-last features (B, H, W, C).

        Returns:
            Channel-last features (B, H, W, C).
        """
        local = self.local_path(self.local_norm(x))
        u = F.gelu(self.in_proj(x))
        rank, n = self.dt_rank, self.d_state
        dt_top, dt_left, b_top, b_left, c = self.x_proj(u).split(
            [rank, rank, n, n, n], dim=-1)
        y = wavefront_scan_2d(
            u,
            F.linear(dt_top, self.dt_proj_top.weight),
            F.linear(dt_left, self.dt_proj_left.weight),
            -torch.exp(self.A_log_top),
            -torch.exp(self.A_log_left),
            b_top,
            b_left,
            c,
            D=self.D,
            delta_bias_t=self.dt_proj_top.bias,
            delta_bias_l=self.dt_proj_left.bias,
            delta_softplus=True,
            origin=self.origin)
        return self.out_proj(F.gelu(y)) + local


def _rotate_pairs(x: Tensor) -> Tensor:
    """Rotate interleaved pairs by 90 degrees: (x0, x1) -> (-x1, x0)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class RoPEAttention2D(nn.Module):
    """Multi-head self-attention with 2D rotary embeddings and qk-LayerNorm.

    Heads are ``head_dim`` wide and there are ``max(1, C // head_dim)`` of
    them, so the attention width may differ from C. In every head the first
    half of the dimensions is rotated by the token's row, the second half by
    its column (interleaved pairs, base ``rope_base``); q and k are then
    LayerNorm-ed over the head dimension.

    Args:
        channels: Token channels C.
        head_dim: Width of one head.
        rope_base: Base of the rotary frequencies.
    """

    def __init__(self,
                 channels: int,
                 head_dim: int = 32,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(
                f'head_dim must be a multiple of 4 (two rotary axes of '
                f'interleaved pairs), got {head_dim}')
        self.head_dim = head_dim
        self.num_heads = max(1, channels // head_dim)
        self.rope_base = rope_base
        attention_dim = self.num_heads * head_dim
        self.qkv = nn.Linear(channels, 3 * attention_dim, bias=False)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(attention_dim, channels, bias=False)

    def _rope_tables(self, height: int, width: int,
                     dtype: torch.dtype,
                     device: torch.device) -> Tuple[Tensor, Tensor]:
        """cos and sin of the rotary angles, each (H*W, head_dim)."""
        pairs_per_axis = self.head_dim // 4
        # float32 at least: positions times frequencies lose digits in bf16
        table_dtype = torch.promote_types(dtype, torch.float32)
        exponents = torch.arange(
            pairs_per_axis, device=device,
            dtype=table_dtype) / pairs_per_axis
        inv_freq = self.rope_base**-exponents
        rows = torch.arange(height, device=device, dtype=table_dtype)
        cols = torch.arange(width, device=device, dtype=table_dtype)
        # both members of an interleaved pair share one angle
        row_angles = (rows[:, None] * inv_freq).repeat_interleave(2, dim=-1)
        col_angles = (cols[:, None] * inv_freq).repeat_interleave(2, dim=-1)
        axis_dim = 2 * pairs_per_axis
        angles = torch.cat(
            [
                row_angles[:, None].expand(height, width, axis_dim),
                col_angles[None].expand(height, width, axis_dim),
            ],
            dim=-1).flatten(0, 1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over all tokens.

        Args:
            x: Normalised channel-last features (B, H, W, C).

        Returns:
            Channel-last features (B, H, W, C).
        """
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads,
                                  self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        cos, sin = self._rope_tables(height, width, q.dtype, q.device)
        q = self.q_norm(q * cos + _rotate_pairs(q) * sin)
        k = self.k_norm(k * cos + _rotate_pairs(k) * sin)
        out = F.scaled_dot_product_attention(
            q, k, v, scale=self.head_dim**-0.5)
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer channel MLP with GELU.

    Args:
        channels: Input and output channels.
        ratio: Hidden width multiplier.
    """

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels * ratio)
        self.fc2 = nn.Linear(channels * ratio, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP.

        Args:
            x: Channel-last features (..., C).

        Returns:
            Channel-last features (..., C).
        """
        return self.fc2(F.gelu(self.fc1(x)))


class Mamba2DBlock(nn.Module):
    """MetaFormer block whose learnable res-scales multiply the shortcut.

    ``x = s1 * x + mixer(norm1(x)); x = s2 * x + mlp(norm2(x))``.

    Args:
        channels: Token channels C.
        mixer: ``'ssm2d_local'`` or ``'rope_attention'``.
        origin: Scan start corner of an SSM mixer, ``'tl'`` or ``'br'``.
        d_state: State size of an SSM mixer.
        head_dim: Head width of an attention mixer.
        mlp_ratio: Hidden width multiplier of the MLP.
        res_scale_init_value: Initial value of both res-scales.
        drop_path: Stochastic-depth rate of both residual branches.
    """

    def __init__(self, channels: int, mixer: str, origin: str, d_state: int,
                 head_dim: int, mlp_ratio: int, res_scale_init_value: float,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        if mixer == SSM_MIXER:
            self.mixer = SSM2DMixer(channels, d_state=d_state, origin=origin)
        else:
            self.mixer = RoPEAttention2D(channels, head_dim=head_dim)
        self.res_scale1 = nn.Parameter(
            torch.full((channels, ), float(res_scale_init_value)))
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, mlp_ratio)
        self.res_scale2 = nn.Parameter(
            torch.full((channels, ), float(res_scale_init_value)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else (
            nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """Run the block.

        Args:
            x: Channel-last features (B, H, W, C).

        Returns:
            Channel-last features (B, H, W, C).
        """
        x = x * self.res_scale1 + self.drop_path(self.mixer(self.norm1(x)))
        return x * self.res_scale2 + self.drop_path(self.mlp(self.norm2(x)))


class Mamba2DStage(nn.Module):
    """Optional stride-2 downsampling, blocks, and the stage-closing LayerNorm.

    Args:
        in_channels: Channels entering the stage.
        channels: Channels of the stage.
        blocks: The stage's blocks.
        downsample: Whether a 3x3 stride-2 convolution opens the stage.
        with_cp: Gradient-checkpoint every block while training.
    """

    def __init__(self, in_channels: int, channels: int,
                 blocks: List[Mamba2DBlock], downsample: bool,
                 with_cp: bool) -> None:
        super().__init__()
        self.downsample = nn.Conv2d(
            in_channels, channels, 3, stride=2,
            padding=1) if downsample else None
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(channels)
        self.with_cp = with_cp

    def forward(self, x: Tensor) -> Tensor:
        """Run the stage.

        Args:
            x: Channel-last features (B, H, W, C_in).

        Returns:
            Channel-last features (B, H', W', C), H' = ceil(H / 2) after a
            downsample.
        """
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


class Mamba2DStem(nn.Module):
    """7x7 stride-4 convolution (padding 2) followed by a channel LayerNorm.

    Args:
        in_channels: Image channels.
        channels: Output channels.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 7, stride=4, padding=2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        """Embed an image.

        Args:
            x: Images (B, C_in, H, W).

        Returns:
            Channel-last features (B, floor((H - 3) / 4) + 1,
            floor((W - 3) / 4) + 1, C).
        """
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


# Official block-relative names -> mmssm names; the first prefix match wins.
_OFFICIAL_BLOCK_NAMES = (
    ('res_scale1.scale', 'res_scale1'),
    ('res_scale2.scale', 'res_scale2'),
    ('MLP', 'mlp'),
    ('token_mixer.AT_log', 'mixer.A_log_top'),
    ('token_mixer.AL_log', 'mixer.A_log_left'),
    ('token_mixer.dt_projT', 'mixer.dt_proj_top'),
    ('token_mixer.dt_projL', 'mixer.dt_proj_left'),
    ('token_mixer.local_path.pwconv1', 'mixer.local_path.pw_expand'),
    ('token_mixer.local_path.dwconv', 'mixer.local_path.dw_conv'),
    ('token_mixer.local_path.pwconv2', 'mixer.local_path.pw_project'),
    ('token_mixer', 'mixer'),
)


def _official_key_to_mmssm(key: str) -> str:
    """Rename one official backbone key (``backbone.`` already removed)."""
    if key.startswith('ds.stem.conv.'):
        return 'stem.conv.' + key[len('ds.stem.conv.'):]
    if key.startswith('ds.stem.post_norm.norm.'):
        return 'stem.norm.' + key[len('ds.stem.post_norm.norm.'):]
    match = re.fullmatch(r'ds\.ds(\d+)\.conv\.(weight|bias)', key)
    if match:
        return f'stages.{match[1]}.downsample.{match[2]}'
    match = re.fullmatch(r'stages\.(\d+)\.(\d+)\.(weight|bias)', key)
    if match:
        # The only direct parameters of a stage entry are the stage LayerNorm.
        return f'stages.{match[1]}.norm.{match[3]}'
    match = re.fullmatch(r'stages\.(\d+)\.(\d+)\.(.+)', key)
    if not match:
        return key
    rest = match[3]
    for official, ours in _OFFICIAL_BLOCK_NAMES:
        if rest == official or rest.startswith(official + '.'):
            rest = ours + rest[len(official):]
            break
    return f'stages.{match[1]}.blocks.{match[2]}.{rest}'


# Keys of the official classifier that are not part of the backbone.
_OFFICIAL_CLASSIFIER_PREFIXES = ('norm.', 'head.')


def convert_backbone_checkpoint(
        state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename any supported Mamba2D checkpoint to :class:`Mamba2D` keys.

    Accepts the authors' Lightning state dict (``backbone.ds.*``,
    ``backbone.stages.{s}.{b}.*``; the classifier's ``norm.*`` and ``head.*``
    are dropped), the authors' downstream ``Mamba2D`` keys (no prefix), and
    mmssm keys with or without a ``backbone.`` prefix (mmssm classifiers,
    mmdet/mmseg checkpoints). Keys of no known form are kept unchanged so the
    load report lists them as unexpected.

    Args:
        state_dict: A flat ``{name: tensor}`` dict.

    Returns:
        The state dict under :class:`Mamba2D` names.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(_OFFICIAL_CLASSIFIER_PREFIXES):
            continue
        if key.startswith('backbone.'):
            key = key[len('backbone.'):]
        converted[_official_key_to_mmssm(key)] = value
    return converted


@MODELS.register_module()
class Mamba2D(SSMBackbone):
    """Mamba2D backbone (Baty et al., released v2 hybrid models).

    Architectures (``embed_dims``, ``depths``) as released:
    ``nano`` (32, 64, 160, 256), (3, 3, 9, 3); ``tiny`` (64, 128, 320, 512),
    (3, 3, 9, 3); ``small`` (96, 192, 384, 576), (3, 12, 14, 3). Every arch
    uses 2D-SSM mixers with a local path in stages 1-2 and RoPE attention in
    stages 3-4 unless a dict arch gives ``mixers``; the defaults of
    ``d_state``, ``head_dim``, ``mlp_ratio``, ``res_scale_init_value`` and
    ``alternate_scan_origin`` are the released values. Accepts any H, W >= 3
    (the authors' CUDA kernel needs scan grids of at least 2 x 2).

    Args:
        arch: ``'nano'``, ``'tiny'``, ``'small'``, or a dict with
            ``embed_dims`` and ``depths`` (one entry per stage) and optionally
            ``mixers`` (``'ssm2d_local'`` or ``'rope_attention'`` per stage).
        in_channels: Image channels.
        d_state: State size N of the 2D scan.
        head_dim: Head width of the attention mixers.
        mlp_ratio: Hidden width multiplier of the block MLPs.
        res_scale_init_value: Initial value of the res-scales.
        alternate_scan_origin: Scan odd blocks of a stage from the
            bottom-right corner (the released ``inter_flip=True``); if False,
            every block scans from the top-left.
        drop_path_rate: Stochastic-depth rate of the last block (linearly
            increasing from 0 over all blocks).
        out_indices: Stages whose (normalised) outputs are returned.
        frozen_stages: Freeze the stem (0) and stages ``[0, frozen_stages)``;
            -1 freezes nothing.
        with_cp: Gradient-checkpoint every block while training.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained',
            checkpoint=PATH)`` for any supported checkpoint.
    """

    arch_zoo = {
        'nano': dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 9, 3)),
        'tiny': dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 9, 3)),
        'small': dict(embed_dims=(96, 192, 384, 576), depths=(3, 12, 14, 3)),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 d_state: int = 16,
                 head_dim: int = 32,
                 mlp_ratio: int = 4,
                 res_scale_init_value: float = 1.0,
                 alternate_scan_origin: bool = True,
                 drop_path_rate: float = 0.0,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        embed_dims, depths, mixers = self._parse_arch(arch)
        num_stages = len(depths)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(
                f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self.out_indices = self._check_out_indices(out_indices, num_stages)
        self.embed_dims = embed_dims
        self.depths = depths
        self.mixers = mixers
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.out_channels = tuple(embed_dims[i] for i in self.out_indices)
        self.out_strides = tuple(4 * 2**i for i in self.out_indices)

        self.stem = Mamba2DStem(in_channels, embed_dims[0])
        # Plain numbers, computed on the CPU even under a meta-device context.
        rates = torch.linspace(
            0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (channels, depth) in enumerate(zip(embed_dims, depths)):
            first = sum(depths[:i])
            blocks = [
                Mamba2DBlock(
                    channels,
                    mixer=mixers[i],
                    origin='br' if alternate_scan_origin and j % 2 else 'tl',
                    d_state=d_state,
                    head_dim=head_dim,
                    mlp_ratio=mlp_ratio,
                    res_scale_init_value=res_scale_init_value,
                    drop_path=rates[first + j]) for j in range(depth)
            ]
            self.stages.append(
                Mamba2DStage(
                    embed_dims[i - 1] if i else channels,
                    channels,
                    blocks,
                    downsample=i > 0,
                    with_cp=with_cp))
        self._freeze_stages()

    def _parse_arch(
        self, arch: Union[str, dict]
    ) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[str, ...]]:
        """Validate ``arch`` and return embed dims, depths and mixers."""
        if isinstance(arch, str):
            if arch not in self.arch_zoo:
                raise ValueError(f'arch must be one of '
                                 f'{sorted(self.arch_zoo)} or a dict, got '
                                 f'{arch!r}')
            arch = self.arch_zoo[arch]
        if not isinstance(arch, dict) or not {'embed_dims', 'depths'
                                              } <= set(arch):
            raise ValueError(
                "arch must be a name or a dict with 'embed_dims' and "
                f"'depths' (and optionally 'mixers'), got {arch!r}")
        unknown = set(arch) - {'embed_dims', 'depths', 'mixers'}
        if unknown:
            raise ValueError(f'arch has unknown keys {sorted(unknown)}; '
                             "expected 'embed_dims', 'depths', 'mixers'")
        embed_dims = tuple(int(d) for d in arch['embed_dims'])
        depths = tuple(int(d) for d in arch['depths'])
        mixers = tuple(arch.get('mixers', RELEASED_MIXERS[:len(depths)]))
        if not (len(embed_dims) == len(depths) == len(mixers) >= 1):
            raise ValueError(
                "arch 'embed_dims', 'depths' and 'mixers' need one entry per "
                f'stage, got {embed_dims}, {depths}, {mixers}')
        if min(embed_dims) < 1 or min(depths) < 1:
            raise ValueError(f'arch embed_dims and depths must be positive, '
                             f'got {embed_dims}, {depths}')
        bad = [m for m in mixers if m not in (SSM_MIXER, ATTENTION_MIXER)]
        if bad:
            raise ValueError(f"arch 'mixers' must be {SSM_MIXER!r} or "
                             f'{ATTENTION_MIXER!r}, got {bad}')
        return embed_dims, depths, mixers

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Extract multi-scale features.

        Args:
            x: Images (B, in_channels, H, W), H and W >= 3.

        Returns:
            One NCHW map per entry of ``out_indices``: stage ``i`` gives
            (B, embed_dims[i], H_i, W_i) at stride ``4 * 2**i``
            (H_0 = floor((H - 3) / 4) + 1, then H_i = ceil(H_{i-1} / 2)).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'x must be (B, {self.in_channels}, H, W), got '
                f'{tuple(x.shape)}')
        if min(x.shape[2:]) < 3:
            raise ValueError(f'x needs H and W >= 3 for the 7x7 stride-4 '
                             f'stem, got {tuple(x.shape)}')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    def _freeze_stages(self) -> None:
        """Put the frozen stem and stages in eval mode without gradients."""
        if self.frozen_stages < 0:
            return
        frozen = [self.stem, *self.stages[:self.frozen_stages]]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def get_layer_depth(self, param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise learning-rate decay.

        The stem is layer 0, block ``j`` of stage ``i`` is layer
        ``sum(depths[:i]) + j + 1``; a stage's downsample shares the id of the
        previous stage's last block, its closing norm that of its own last
        block; everything outside the backbone (heads) is the last layer.

        Args:
            param_name: Parameter name, e.g. from ``named_parameters()`` of
                the model that holds the backbone.
            prefix: The backbone's prefix in ``param_name`` (``'backbone.'``).

        Returns:
            ``(layer_id, num_layers)`` with ``num_layers = sum(depths) + 2``.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('stem.'):
            return 0, num_layers
        match = re.match(r'stages\.(\d+)\.(blocks\.(\d+)|downsample|norm)\.',
                         name)
        if not match:
            raise ValueError(f'{param_name!r} is not a Mamba2D parameter '
                             f'name (prefix {prefix!r})')
        stage = int(match[1])
        if match[3] is not None:
            return sum(self.depths[:stage]) + int(match[3]) + 1, num_layers
        if match[2] == 'downsample':
            return sum(self.depths[:stage]), num_layers
        return sum(self.depths[:stage + 1]), num_layers

    def convert_checkpoint(
            self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Rename a supported checkpoint to this backbone's keys.

        See :func:`convert_backbone_checkpoint`.

        Args:
            state_dict: A flat ``{name: tensor}`` dict.

        Returns:
            The state dict under this backbone's names.
        """
        return convert_backbone_checkpoint(state_dict)


class Mamba2DClsHead(nn.Module):
    """The authors' classification head.

    Global average pooling of the last feature map, LayerNorm (``pool_norm``,
    the official classifier's ``norm``), then MetaFormer's MlpHead:
    ``fc2(dropout(norm(GELU(fc1(x)))))``.

    Args:
        in_channels: Channels of the last feature map.
        num_classes: Number of classes.
        mlp_ratio: Hidden width multiplier.
        dropout: Dropout rate before ``fc2``.
    """

    def __init__(self,
                 in_channels: int,
                 num_classes: int = 1000,
                 mlp_ratio: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden = in_channels * mlp_ratio
        self.pool_norm = nn.LayerNorm(in_channels)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Classify.

        Args:
            features: The backbone's outputs; the last is (B, C, H, W).

        Returns:
            Logits (B, num_classes).
        """
        x = self.pool_norm(features[-1].mean(dim=(-2, -1)))
        return self.fc2(self.dropout(self.norm(F.gelu(self.fc1(x)))))


def convert_official_classifier(
        state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename the authors' classifier checkpoint to SSMClassifier keys.

    Official ``backbone.*`` -> ``backbone.<Mamba2D name>``, ``norm.*`` ->
    ``head.pool_norm.*``, ``head.{fc1,norm,fc2}.*`` unchanged. Keys already
    in mmssm form pass through.

    Args:
        state_dict: The Lightning ``state_dict`` of ``Mamba2DClassifier``.

    Returns:
        The state dict under ``SSMClassifier(Mamba2D, Mamba2DClsHead)``
        names.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('backbone.'):
            key = 'backbone.' + _official_key_to_mmssm(key[len('backbone.'):])
        elif key.startswith('norm.'):
            key = 'head.pool_norm.' + key[len('norm.'):]
        converted[key] = value
    return converted


# Defaults of the authors' ``Mamba2DBackbone`` constructor (v2 code).
_OFFICIAL_BACKBONE_DEFAULTS = dict(
    in_channels=3,
    channel_last=True,
    n_blocks=[3, 3, 9, 3],
    ds_stages=['mf_stem', 'mf_2', 'mf_2', 'mf_2'],
    embed_dim=[64, 128, 320, 512],
    token_mixer=['2D_local', '2D_local', 'RopeAttention', 'RopeAttention'],
    drop_path_rate=0.1,
    res_scale_init_values=[None, None, 1.0, 1.0],
    inter_flip=False,
    recomp='partial')
_OFFICIAL_HEAD_DEFAULTS = dict(n_classes=1000, mlp_ratio=4, head_dropout=0.0)
_OFFICIAL_MIXER_NAMES = {
    '2D_local': SSM_MIXER,
    'RopeAttention': ATTENTION_MIXER
}


@register_official('mamba2d')
def build_official_classifier(official_kwargs: dict) -> SSMClassifier:
    """Build the authors' ImageNet classifier from its constructor arguments.

    ``official_kwargs`` are the ``init_args`` of ``Mamba2DBackbone`` in the
    released yaml configs (``in_channels``, ``channel_last``, ``n_blocks``,
    ``ds_stages``, ``embed_dim``, ``token_mixer``, ``drop_path_rate``,
    ``res_scale_init_values``, ``inter_flip``, ``recomp``; missing ones take
    the authors' defaults), plus an optional ``head`` dict with the
    ``MlpHead`` arguments (``dim``, ``n_classes``, ``mlp_ratio``,
    ``head_dropout``; default 1000 classes, no dropout). For a parity fixture:
    ``{**meta['constructor_kwargs_backbone'],
    'head': meta['constructor_kwargs_MlpHead']}``; for a released model:
    ``{**manifest['backbone_init_args'], 'head': manifest['head_init_args']}``.
    Only the released design is supported: ``ds_stages`` ``mf_stem, mf_2,
    ...``, mixers ``2D_local``/``RopeAttention`` and one res-scale value for
    every stage. ``channel_last`` (memory format) and ``recomp`` (what the
    CUDA kernel recomputes in backward) do not change the computed function.
    The backbone returns all stages; the head reads the last.

    Args:
        official_kwargs: The arguments described above.

    Returns:
        ``SSMClassifier(Mamba2D, Mamba2DClsHead)`` that converts official
        checkpoints with :func:`convert_official_classifier`.

    Raises:
        ValueError: On unknown arguments or a design mmssm does not build.
    """
    kwargs = dict(official_kwargs)
    head_kwargs = dict(kwargs.pop('head', {}))
    unknown = set(kwargs) - set(_OFFICIAL_BACKBONE_DEFAULTS)
    if unknown:
        raise ValueError(f'unsupported official Mamba2D arguments '
                         f'{sorted(unknown)}; expected a subset of '
                         f'{sorted(_OFFICIAL_BACKBONE_DEFAULTS)} and head')
    unknown = set(head_kwargs) - set(_OFFICIAL_HEAD_DEFAULTS) - {'dim'}
    if unknown:
        raise ValueError(f'unsupported official MlpHead arguments '
                         f'{sorted(unknown)}; expected a subset of '
                         f"{sorted(_OFFICIAL_HEAD_DEFAULTS) + ['dim']}")
    args = {**_OFFICIAL_BACKBONE_DEFAULTS, **kwargs}
    embed_dims = list(args['embed_dim'])
    num_stages = len(embed_dims)
    downsampling = ['mf_stem'] + ['mf_2'] * (num_stages - 1)
    if list(args['ds_stages']) != downsampling:
        raise ValueError(f'ds_stages must be {downsampling} (the released '
                         f"design), got {args['ds_stages']}")
    bad = [m for m in args['token_mixer'] if m not in _OFFICIAL_MIXER_NAMES]
    if bad:
        raise ValueError(f'token_mixer entries must be in '
                         f'{sorted(_OFFICIAL_MIXER_NAMES)}, got {bad}')
    res_scales = list(args['res_scale_init_values'])
    if None in res_scales or len(set(res_scales)) != 1:
        raise ValueError('res_scale_init_values must hold one number for '
                         'every stage (released models: 1.0), got '
                         f'{res_scales}')
    if args['recomp'] not in ('partial', 'full'):
        raise ValueError(
            f"recomp must be 'partial' or 'full', got {args['recomp']!r}")
    head_args = {**_OFFICIAL_HEAD_DEFAULTS, **head_kwargs}
    if head_args.get('dim', embed_dims[-1]) != embed_dims[-1]:
        raise ValueError(f"head 'dim' must equal embed_dim[-1] = "
                         f"{embed_dims[-1]}, got {head_args['dim']}")
    backbone = Mamba2D(
        arch=dict(
            embed_dims=embed_dims,
            depths=args['n_blocks'],
            mixers=[_OFFICIAL_MIXER_NAMES[m] for m in args['token_mixer']]),
        in_channels=args['in_channels'],
        res_scale_init_value=res_scales[0],
        alternate_scan_origin=bool(args['inter_flip']),
        drop_path_rate=args['drop_path_rate'],
        out_indices=tuple(range(num_stages)))
    head = Mamba2DClsHead(
        embed_dims[-1],
        num_classes=head_args['n_classes'],
        mlp_ratio=head_args['mlp_ratio'],
        dropout=head_args['head_dropout'])
    return SSMClassifier(
        backbone, head, convert_fn=convert_official_classifier)
