"""V2M: the plain Visual 2-Dimensional Mamba backbone (Wang et al.).

The model follows the authors' code (wangck20/V2M, commit 3d309056b575,
``v2m/models_mamba.py`` ``VisionMamba`` with ``bimamba_type='2d'`` and
``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``): Vim's plain layout
(16x16 patches, absolute position embedding, no class token, pre-norm
RMSNorm residual blocks, mean pooling) with the 2D-SSM mixer of
``../shared/papers/v2m.txt`` (section 3.2, eqs. 9-12; four corners, section
3.3, eqs. 13-15).

The 2D-SSM mixer (:class:`V2MMixer`) on a token grid ``x`` ``(B, h, w, C)``:

1. ``x, z = in_proj(x)`` (``E = expand * C`` channels each).
2. First pass (eq. 9): a depthwise causal conv1d (``conv1d``) along every
   line in the scan's direction, SiLU, per-position ``x_proj`` -> ``(dt, B)``,
   ``dt_proj``, then a selective scan along the lines with ``A = -exp(A_log)``,
   input-dependent ``B``, constant all-ones ``C``, skip ``D`` and gate
   ``silu(z)``.
3. Second pass (eq. 12) on the first pass's output, along the other axis:
   ``conv1d_2``, SiLU, ``x_proj_2`` -> ``(dt, C)``, ``dt_proj_2``, a selective
   scan with ``A_2``, constant all-ones ``B``, input-dependent ``C``, skip
   ``D_2`` and the same gate ``silu(z)``.
4. The four corner results are summed, divided by 2 (the authors'
   ``if_devide_out``) and projected by ``out_proj``.

Both passes use :func:`mmssm.ops.v2m_corner_scan` on spatial-layout tensors;
the per-corner convolutions read the grid in the corner's direction, so no
rotated or transposed copy of the activations is built. All corners share the
mixer's parameters (as in the authors' code).

Two output layouts (``layout``):

* ``'corrected'`` (default, any ``h x w``): rows first, then columns, from
  each of the four corners ``tl, tr, bl, br``; every corner's result is added
  at its own pixel, so output ``(i, j)`` sees the whole grid through the four
  quadrants meeting at ``(i, j)``. With shared parameters the row pass of
  ``bl`` equals that of ``tl`` (and ``br`` that of ``tr``), so the row pass is
  computed for ``tl``/``tr`` only.
* ``'official'`` (square grids only): the released code exactly
  (``../shared/papers/README.md``; fixtures README section 4.4). Its four
  branches are rows-then-columns from the top-left (``fh``) and top-right
  (``bh``) and columns-then-rows from the top-left (``fv``) and bottom-left
  (``bv``), and their outputs are written back at transposed/rotated
  positions: ``out(i, j) = fh(j, i) + fv(j, i) + bh(P-1-j, i) + bv(j, P-1-i)``
  on a ``P x P`` grid. No branch starts at the bottom-right.

For dense prediction the backbone returns the residual stream after the
blocks named by ``out_indices`` (the fixtures' ``layers.{i}.tokens``) as
maps at the patch stride, turned into a 4-level pyramid by
:class:`mmssm.models.layers.plain.MultiScaleAdapter` (``pyramid_strides``).
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from mmssm.ops import v2m_corner_scan
from mmssm.registry import MODELS
from ..layers.plain import (MultiScaleAdapter, PaddedPatchEmbed,
                            PlainResidualBlock, RMSNorm, drop_path_rates,
                            plain_layer_depth, resize_pos_embed,
                            residual_dtype, tokens_to_map)
from ..layers.projection import project_channels
from ..official import SSMClassifier, register_official
from .base import SSMBackbone

StateDict = Dict[str, torch.Tensor]

#: Released configurations (``vim_{tiny,small}_patch16_224_bimamba2d_*``);
#: ``base`` follows the same rule (Vim-B width).
ARCH_ZOO: Dict[str, dict] = {
    'tiny': dict(embed_dims=192, num_layers=24),
    'small': dict(embed_dims=384, num_layers=24),
    'base': dict(embed_dims=768, num_layers=24),
}
_ARCH_DEFAULTS = dict(d_state=16, expand=2, d_conv=4, dt_rank='auto')
LAYOUTS = ('corrected', 'official')


def _resolve_arch(arch: Union[str, dict]) -> dict:
    """Complete an arch name or dict.

    Args:
        arch: A name of :data:`ARCH_ZOO` or a dict with ``embed_dims`` and
            ``depth`` and optionally ``d_state`` (16), ``expand`` (2),
            ``d_conv`` (4) and ``dt_rank`` (``'auto'`` = ``ceil(C / 16)``).

    Returns:
        The full arch dict with an integer ``dt_rank``.

    Raises:
        ValueError: For an unknown name or a dict with missing/unknown keys.
    """
    if isinstance(arch, str):
        if arch not in ARCH_ZOO:
            raise ValueError(f'arch must be one of {sorted(ARCH_ZOO)} or a '
                             f'dict, got {arch!r}')
        arch = ARCH_ZOO[arch]
    if not isinstance(arch, dict):
        raise ValueError(f'arch must be a str or a dict, got {arch!r}')
    missing = [k for k in ('embed_dims', 'num_layers') if k not in arch]
    unknown = [
        k for k in arch if k not in ('embed_dims', 'num_layers', *_ARCH_DEFAULTS)
    ]
    if missing or unknown:
        raise ValueError(f'arch dict: missing keys {missing}, unknown keys '
                         f'{unknown} (allowed: embed_dims, depth, '
                         f'{", ".join(_ARCH_DEFAULTS)})')
    resolved = {**_ARCH_DEFAULTS, **arch}
    if resolved['dt_rank'] == 'auto':
        resolved['dt_rank'] = math.ceil(resolved['embed_dims'] / 16)
    return resolved


def _line_conv(x: torch.Tensor, conv: nn.Conv1d, axis: str,
               backwards: bool) -> torch.Tensor:
    """Causal depthwise conv1d along every row or column of a grid.

    Position ``t`` of a line walked in the scan's direction sees positions
    ``t - K + 1 .. t`` of that walk (Mamba's ``causal_conv1d``), for a walk
    left-to-right/top-to-bottom or (``backwards``) the reverse.

    Args:
        x: ``(..., E, h, w)``.
        conv: The depthwise ``nn.Conv1d(E, E, K, groups=E)`` holding weights.
        axis: ``'row'`` (along w) or ``'col'`` (along h).
        backwards: Walk right-to-left / bottom-to-top.

    Returns:
        ``(..., E, h, w)``.
    """
    weight = conv.weight[:, 0]  # (E, K)
    if backwards:
        weight = weight.flip(-1)
    size = weight.shape[-1]
    before, after = (0, size - 1) if backwards else (size - 1, 0)
    dim, padding = ((-1, (before, after)) if axis == 'row' else
                    (-2, (0, 0, before, after)))
    length = x.shape[dim]
    padded = F.pad(x, padding)
    # A sum of shifted copies: cheaper than a depthwise conv2d on CPU and
    # the same in every dtype.
    out = sum(weight[:, tap].view(-1, 1, 1) * padded.narrow(dim, tap, length)
              for tap in range(size))
    if conv.bias is not None:
        out = out + conv.bias.view(-1, 1, 1)
    return out


class V2MMixer(nn.Module):
    """The V2M 2D-SSM mixer (the authors' ``Mamba(bimamba_type='2d')``).

    Parameter names and shapes are the authors'. See the module docstring
    for the computation.

    Args:
        embed_dims: Token channels ``C``.
        d_state: SSM state size ``N``.
        expand: Inner channels ``E = expand * C``.
        d_conv: Kernel size of the causal convolutions.
        dt_rank: Rank of the time-step projection.
        layout: ``'corrected'`` or ``'official'`` (module docstring).
        num_layers: Number of blocks, for the authors' ``out_proj`` scaling
            at initialisation.
    """

    def __init__(self,
                 embed_dims: int,
                 d_state: int = 16,
                 expand: int = 2,
                 d_conv: int = 4,
                 dt_rank: int = 1,
                 layout: str = 'corrected',
                 num_layers: int = 1) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f'layout must be one of {LAYOUTS}, got '
                             f'{layout!r}')
        self.layout = layout
        self.d_state, self.dt_rank = d_state, dt_rank
        inner = self.d_inner = int(expand * embed_dims)
        self.in_proj = nn.Linear(embed_dims, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner)
        self.x_proj = nn.Linear(inner, dt_rank + d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        self.A_log = nn.Parameter(torch.empty(inner, d_state))
        self.D = nn.Parameter(torch.empty(inner))
        self.conv1d_2 = nn.Conv1d(inner, inner, d_conv, groups=inner)
        self.x_proj_2 = nn.Linear(inner, dt_rank + d_state, bias=False)
        self.dt_proj_2 = nn.Linear(dt_rank, inner)
        self.A_2_log = nn.Parameter(torch.empty(inner, d_state))
        self.D_2 = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, embed_dims, bias=False)
        self.reset_ssm_parameters(num_layers)

    @torch.no_grad()
    def reset_ssm_parameters(self, num_layers: int = 1) -> None:
        """The authors' initialisation of the SSM parameters.

        ``A_log = log(1..N)``, ``D = 1``, ``dt_proj`` weights uniform in
        ``±dt_rank^-0.5`` and biases the inverse softplus of time steps
        log-uniform in ``[1e-3, 0.1]``; ``out_proj`` Kaiming-uniform scaled
        by ``1 / sqrt(num_layers)``.

        Args:
            num_layers: Number of blocks of the backbone.
        """
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        for a_log, skip, dt_proj in ((self.A_log, self.D, self.dt_proj),
                                     (self.A_2_log, self.D_2,
                                      self.dt_proj_2)):
            a_log.copy_(torch.log(states).expand_as(a_log))
            skip.fill_(1.0)
            bound = self.dt_rank**-0.5
            nn.init.uniform_(dt_proj.weight, -bound, bound)
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) +
                math.log(1e-3)).clamp(min=1e-4)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight /= math.sqrt(num_layers)

    def _scan_pass(self,
                   u: torch.Tensor,
                   z: torch.Tensor,
                   second: bool,
                   axis: str,
                   corners: Tuple[str, ...],
                   merge_corners: bool = False) -> torch.Tensor:
        """One selective-scan pass of every corner.

        Args:
            u: Convolved, activated inputs ``(B, K, E, h, w)``.
            z: Gate ``(B, E, h, w)``.
            second: Use the second pass's parameters (constant ``B``,
                input-dependent ``C``) instead of the first's.
            axis: ``'row'`` or ``'col'``.
            corners: The ``K`` corners.
            merge_corners: Return the corners' sum (float32) instead.

        Returns:
            ``(B, K, E, h, w)``, or ``(B, E, h, w)`` merged.
        """
        x_proj, dt_proj = ((self.x_proj_2, self.dt_proj_2) if second else
                           (self.x_proj, self.dt_proj))
        a_log, skip = (self.A_2_log, self.D_2) if second else (self.A_log,
                                                               self.D)
        num = len(corners)
        batch, _, _, height, width = u.shape
        projected = project_channels(x_proj.weight,
                                     u.flatten(3).flatten(0, 1)).view(
                                         batch, num, -1, height, width)
        dt, state_matrix = projected.split([self.dt_rank, self.d_state], 2)
        delta = project_channels(dt_proj.weight,
                                 dt.flatten(3).flatten(0, 1)).view(
                                     batch, num, -1, height, width)
        A = -torch.exp(a_log.to(torch.promote_types(a_log.dtype,
                                                    torch.float32)))
        ones = torch.ones(num * self.d_inner, self.d_state, dtype=A.dtype,
                          device=A.device)
        B, C = (ones, state_matrix) if second else (state_matrix, ones)
        return v2m_corner_scan(
            u,
            delta,
            A.repeat(num, 1),
            B,
            C,
            D=skip.repeat(num),
            z=z,
            delta_bias=dt_proj.bias.repeat(num),
            delta_softplus=True,
            axis=axis,
            corners=corners,
            merge_corners=merge_corners)

    def _first_pass(self, x: torch.Tensor, z: torch.Tensor, axis: str,
                    corners: Tuple[str, str]) -> torch.Tensor:
        """First pass of two corners walking ``axis`` forwards/backwards."""
        u = torch.stack([
            _line_conv(x, self.conv1d, axis, backwards=False),
            _line_conv(x, self.conv1d, axis, backwards=True)
        ], 1)
        return self._scan_pass(F.silu(u), z, False, axis, corners)

    def _second_pass(self,
                     y: torch.Tensor,
                     z: torch.Tensor,
                     axis: str,
                     backwards: Sequence[bool],
                     corners: Tuple[str, ...],
                     merge_corners: bool = False) -> torch.Tensor:
        """Second pass over first-pass outputs ``y`` (B, K', E, h, w)."""
        u = torch.cat(
            [_line_conv(y, self.conv1d_2, axis, back) for back in backwards],
            1)
        return self._scan_pass(F.silu(u), z, True, axis, corners,
                               merge_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix a token grid.

        Args:
            x: ``(B, h, w, C)``.

        Returns:
            ``(B, h, w, C)``.
        """
        height, width = x.shape[1:3]
        if self.layout == 'official' and height != width:
            raise ValueError(
                "layout='official' reproduces the authors' code, which only "
                f'runs on square token grids; got {height}x{width}. Use '
                "layout='corrected' for other grids.")
        xz = self.in_proj(x).permute(0, 3, 1, 2)
        inner, gate = xz.chunk(2, dim=1)  # (B, E, h, w) views
        if self.layout == 'corrected':
            rows = self._first_pass(inner, gate, 'row', ('tl', 'tr'))
            # Column walks top-down for tl/tr and bottom-up for bl/br; the
            # row results of tl/tr serve bl/br (same parameters).
            out = self._second_pass(rows, gate, 'col', (False, True),
                                    ('tl', 'tr', 'bl', 'br'),
                                    merge_corners=True)
            # The kernel merges the corners in float32; without autocast
            # the sum takes the activations' dtype (a half-precision model).
            if not torch.is_autocast_enabled(out.device.type):
                out = out.to(gate.dtype)
        else:
            rows = self._first_pass(inner, gate, 'row', ('tl', 'tr'))
            cols = self._first_pass(inner, gate, 'col', ('tl', 'bl'))
            fh, bh = self._second_pass(rows, gate, 'col', (False, ),
                                       ('tl', 'tr')).unbind(1)
            fv, bv = self._second_pass(cols, gate, 'row', (False, ),
                                       ('tl', 'bl')).unbind(1)
            # The authors' write-back positions (module docstring).
            out = ((fh + fv).transpose(-1, -2) +
                   bh.transpose(-1, -2).flip(-1) +
                   bv.transpose(-1, -2).flip(-2))
        return self.out_proj(out.permute(0, 2, 3, 1) / 2)


@MODELS.register_module()
class V2M(SSMBackbone):
    """Plain V2M backbone (V2M-T/S) for classification and dense prediction.

    Args:
        arch: ``'tiny'`` (192 channels), ``'small'`` (384), ``'base'`` (768),
            all of depth 24, or an arch dict (see :func:`_resolve_arch`).
        img_size: Input size the position embedding is stored for (its grid
            is ``img_size // patch_size``); other inputs get it resized.
        patch_size: Patch size.
        stride: Patch stride (default: ``patch_size``).
        in_channels: Image channels.
        out_indices: Blocks whose output (the residual stream after the
            block) is returned; default: the last block of each quarter of
            the depth, e.g. ``(5, 11, 17, 23)``.
        pyramid_strides: Stride of each output, one per ``out_indices`` entry,
            made by the multi-scale adapter; None returns the maps at the
            patch stride without an adapter (used by the classifier).
        layout: ``'corrected'`` (any grid) or ``'official'`` (the authors'
            write-back positions, square grids only); see the module
            docstring.
        final_norm: Apply the authors' final RMSNorm (``norm_f``) to every
            output before the adapter, e.g. for an mmpretrain classifier
            (pooling neck + linear head) that then computes the authors'
            ``head(mean(norm_f(tokens)))``.
        drop_path_rate: Largest stochastic-depth rate (linear over blocks).
        norm_eps: Epsilon of the RMSNorms.
        frozen_stages: -1 freezes nothing; 0 the patch and position
            embeddings; ``k > 0`` also blocks ``0 .. k-1``.
        with_cp: Gradient checkpointing of every block.
        init_cfg: mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=PATH)``; V2M and Vim
            checkpoints are understood (see :meth:`convert_checkpoint`).
    """

    arch_zoo = ARCH_ZOO
    pretrained_fresh_patterns = ('adapter.*', )

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 stride: Optional[int] = None,
                 in_channels: int = 3,
                 out_indices: Optional[Sequence[int]] = None,
                 pyramid_strides: Optional[Sequence[int]] = (4, 8, 16, 32),
                 layout: str = 'corrected',
                 final_norm: bool = False,
                 drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-5,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = _resolve_arch(arch)
        dims, depth = self.arch['embed_dims'], self.arch['num_layers']
        self.embed_dims, self.depth = dims, depth
        if layout not in LAYOUTS:
            raise ValueError(f'layout must be one of {LAYOUTS}, got '
                             f'{layout!r}')
        self.layout = layout
        if out_indices is None:
            if depth < 4:
                raise ValueError(f'a depth of {depth} needs explicit '
                                 'out_indices')
            out_indices = tuple(depth * (i + 1) // 4 - 1 for i in range(4))
        self.out_indices = self._check_out_indices(out_indices, depth)
        if not -1 <= frozen_stages <= depth:
            raise ValueError(f'frozen_stages must be in [-1, {depth}], got '
                             f'{frozen_stages}')
        self.frozen_stages = frozen_stages
        stride = patch_size if stride is None else stride
        self.patch_embed = PaddedPatchEmbed(in_channels, dims, patch_size,
                                            stride)
        self.pos_grid = self.patch_embed.grid_size(
            (img_size, img_size) if isinstance(img_size, int) else
            tuple(img_size))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], dims))
        self.layers = nn.ModuleList(
            PlainResidualBlock(
                dims,
                V2MMixer(
                    dims,
                    d_state=self.arch['d_state'],
                    expand=self.arch['expand'],
                    d_conv=self.arch['d_conv'],
                    dt_rank=self.arch['dt_rank'],
                    layout=layout,
                    num_layers=depth),
                drop_path=rate,
                norm_eps=norm_eps,
                with_cp=with_cp)
            for rate in drop_path_rates(drop_path_rate, depth))
        if pyramid_strides is None:
            self.adapter = None
            self.out_strides = (stride, ) * len(self.out_indices)
        else:
            if len(pyramid_strides) != len(self.out_indices):
                raise ValueError(
                    f'pyramid_strides {tuple(pyramid_strides)} needs one entry per '
                    f'out_indices entry {self.out_indices}')
            self.adapter = MultiScaleAdapter(dims, stride, pyramid_strides)
            self.out_strides = tuple(pyramid_strides)
        self.out_channels = (dims, ) * len(self.out_indices)
        self.norm_f = RMSNorm(dims, eps=norm_eps) if final_norm else None
        self._init_embeddings()
        self._freeze_stages()

    @torch.no_grad()
    def _init_embeddings(self) -> None:
        """The authors' init: LeCun-normal patch projection, pos-embed 0.02."""
        weight = self.patch_embed.proj.weight
        std = math.sqrt(1.0 / weight[0].numel()) / 0.87962566103423978
        nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus position embedding as a grid ``(B, h, w, C)``."""
        tokens, grid = self.patch_embed(x)
        pos_embed = resize_pos_embed(self.pos_embed, self.pos_grid, grid)
        tokens = (tokens + pos_embed).to(residual_dtype(tokens.dtype))
        return tokens.reshape(tokens.shape[0], *grid, self.embed_dims)

    def forward_tokens(self, x: torch.Tensor
                       ) -> Tuple[List[torch.Tensor], Tuple[int, int]]:
        """The residual stream after every block.

        Args:
            x: ``(B, in_channels, H, W)`` images.

        Returns:
            ``depth`` tensors ``(B, h * w, C)`` (row-major tokens; the
            fixtures' ``layers.{i}.tokens``) and the grid ``(h, w)``.
        """
        stream = self._embed(x)
        grid = tuple(stream.shape[1:3])
        streams = []
        for layer in self.layers:
            stream = layer(stream)
            streams.append(stream.flatten(1, 2))
        return streams, grid

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Feature maps of a batch of images.

        Args:
            x: ``(B, in_channels, H, W)``, any size (padded to whole patches).

        Returns:
            One NCHW map per ``out_indices`` entry, ``out_channels`` channels
            at ``out_strides``.
        """
        stream = self._embed(x)
        grid = tuple(stream.shape[1:3])
        maps = []
        for index, layer in enumerate(self.layers[:self.out_indices[-1] + 1]):
            stream = layer(stream)
            if index in self.out_indices:
                tokens = stream.flatten(1, 2)
                if self.norm_f is not None:
                    tokens = self.norm_f(tokens)
                maps.append(tokens_to_map(tokens, grid))
        if self.adapter is None:
            return tuple(maps)
        return self.adapter(maps)

    def _freeze_stages(self) -> None:
        """Freeze the embeddings (0) and the first ``frozen_stages`` blocks."""
        if self.frozen_stages < 0:
            return
        self.pos_embed.requires_grad = False
        for module in [self.patch_embed,
                       *self.layers[:self.frozen_stages]]:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def get_layer_depth(self, param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise lr decay.

        Embeddings are layer 0, block ``i`` is layer ``i + 1``, everything
        else (adapter, heads) is the last of ``depth + 2`` layers.

        Args:
            param_name: Name of the parameter.
            prefix: Prefix of the backbone's parameters in the whole model.

        Returns:
            ``(layer_id, depth + 2)``.
        """
        return plain_layer_depth(param_name, prefix, self.depth)

    def convert_checkpoint(self, state_dict: StateDict) -> StateDict:
        """Rename a V2M or Vim checkpoint to this backbone's keys.

        * The authors' V2M ``ckpt['model']``, mmssm's own V2M keys and
          mmdet/mmseg/mmpretrain backbones (``backbone.`` already stripped)
          share the names; ``head.*`` is dropped, ``norm_f.weight`` too
          unless this backbone has ``final_norm``, and ``pos_embed`` is
          resized to this model's grid.
        * A Vim checkpoint (``hustvl/Vim`` ``ckpt['model']``, recognised by
          its ``x_proj_b``/``cls_token`` keys) gives a partial init: patch
          embedding, position embedding (class token removed, resized),
          block norms, ``in_proj``, ``out_proj`` and the first pass
          (``conv1d``, ``dt_proj``, ``A_log``, ``D``, and of ``x_proj`` the
          time-step and ``B`` rows) come from Vim's forward branch. Fresh:
          the whole second (column) pass (``conv1d_2``, ``x_proj_2``,
          ``dt_proj_2``, ``A_2_log``, ``D_2``), which has no counterpart in
          Vim. Vim's ``C`` rows of ``x_proj`` (V2M's first pass uses
          ``C = 1``), its backward branch, class token and head are dropped
          (``norm_f`` maps as for V2M). Load it with
          ``init_cfg['allow_partial'] = True``.

        Args:
            state_dict: The checkpoint's flat state dict.

        Returns:
            The renamed state dict.
        """
        from_vim = 'cls_token' in state_dict or any(
            key.endswith('mixer.x_proj_b.weight') for key in state_dict)
        converted = {}
        for key, value in state_dict.items():
            if key.startswith(('head.', 'cls_token')) or (
                    key.startswith('norm_f.') and self.norm_f is None):
                continue
            if key == 'pos_embed':
                value = self._convert_pos_embed(value, with_cls=from_vim)
            elif from_vim:
                key, value = self._vim_mixer_key(key, value)
                if key is None:
                    continue
            converted[key] = value
        return converted

    def _convert_pos_embed(self, pos_embed: torch.Tensor,
                           with_cls: bool) -> torch.Tensor:
        """Resize a checkpoint's position embedding to this model's grid.

        With ``with_cls`` (Vim) the middle class token (index ``M // 2``) is
        removed first; V2M has none.
        """
        tokens = pos_embed.shape[1] - int(with_cls)
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f'pos_embed of shape {tuple(pos_embed.shape)} does not hold '
                'a square grid of patch tokens')
        if with_cls:
            middle = tokens // 2
            pos_embed = torch.cat(
                [pos_embed[:, :middle], pos_embed[:, middle + 1:]], dim=1)
        return resize_pos_embed(pos_embed, (side, side), self.pos_grid)

    def _vim_mixer_key(self, key: str, value: torch.Tensor
                       ) -> Tuple[Optional[str], torch.Tensor]:
        """Map one Vim key to V2M (None for keys without a counterpart)."""
        match = re.match(r'layers\.\d+\.mixer\.(\w+)\.?', key)
        if match is None:
            return key, value
        name = match.group(1)
        if name in ('in_proj', 'out_proj', 'conv1d', 'dt_proj', 'A_log',
                    'D'):
            return key, value
        if name == 'x_proj':
            return key, value[:self.arch['dt_rank'] + self.arch['d_state']]
        return None, value


class V2MClassifierHead(nn.Module):
    """The authors' head: final RMSNorm -> token mean -> Linear.

    Args:
        embed_dims: Token channels.
        num_classes: Number of classes.
        norm_eps: Epsilon of the RMSNorm.
    """

    def __init__(self, embed_dims: int, num_classes: int,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_f = RMSNorm(embed_dims, eps=norm_eps)
        self.fc = nn.Linear(embed_dims, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def final_norm(self, feats: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Normalised tokens ``(B, h * w, C)`` of the last map (the
        fixtures' ``final_norm``)."""
        tokens = feats[-1].flatten(2).transpose(1, 2)
        return self.norm_f(tokens)

    def forward(self, feats: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits from the backbone's last map ``(B, C, h, w)``."""
        return self.fc(self.final_norm(feats).mean(dim=1).to(
            self.fc.weight.dtype))


def convert_official_classifier(state_dict: StateDict) -> StateDict:
    """Map the authors' V2M ``VisionMamba`` state dict to classifier keys.

    ``norm_f.weight`` -> ``head.norm_f.weight``, ``head.*`` -> ``head.fc.*``,
    everything else -> ``backbone.*``. Keys of an mmssm classifier
    (``backbone.*``, ``head.norm_f.*``, ``head.fc.*``) stay as they are.

    Args:
        state_dict: ``ckpt['model']`` of an authors' checkpoint.

    Returns:
        The state dict named for :class:`SSMClassifier`.
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


# Settings of the authors' VisionMamba that the released V2M models fix.
_OFFICIAL_FIXED = dict(
    bimamba_type='2d',
    rms_norm=True,
    final_pool_type='mean',
    if_abs_pos_embed=True,
    if_rope=False,
    if_rope_residual=False,
    if_devide_out=True,
    if_bidirectional=False,
    if_bimamba=False,
    drop_rate=0.0,
    flip_img_sequences_ratio=-1.0,
    init_layer_scale=None)
# Accepted without effect: fused add-norm and the fp32 residual stream are
# how mmssm always computes; the class-token switches are ignored by the
# authors' '2d' model.
_OFFICIAL_NO_EFFECT = ('residual_in_fp32', 'fused_add_norm', 'if_cls_token',
                       'use_middle_cls_token', 'use_double_cls_token')
_OFFICIAL_USED = ('img_size', 'patch_size', 'stride', 'embed_dim', 'depth',
                  'channels', 'num_classes', 'drop_path_rate', 'norm_epsilon',
                  'ssm_cfg')


@register_official('v2m')
def build_official_v2m(official_kwargs: dict) -> SSMClassifier:
    """The mmssm classifier equal to the authors' V2M ``VisionMamba``.

    Args:
        official_kwargs: Keyword arguments of the authors' ``VisionMamba``
            with ``bimamba_type='2d'`` (as the released factories pass them).

    Returns:
        An :class:`SSMClassifier` with ``layout='official'`` (last block
        only, no adapter; head = RMSNorm, token mean, Linear).
    """
    kwargs = dict(official_kwargs)
    unknown = [
        k for k in kwargs if k not in (*_OFFICIAL_FIXED, *_OFFICIAL_NO_EFFECT,
                                       *_OFFICIAL_USED)
    ]
    if unknown:
        raise ValueError(f'VisionMamba kwargs {unknown} are not supported')
    if kwargs.get('bimamba_type') != '2d':
        raise ValueError("V2M needs bimamba_type='2d', got "
                         f"{kwargs.get('bimamba_type')!r}")
    for name, value in _OFFICIAL_FIXED.items():
        if name in kwargs and kwargs[name] != value:
            raise ValueError(f'VisionMamba kwarg {name}={kwargs[name]!r} is '
                             f'not supported (mmssm implements {value!r})')
    ssm_cfg = dict(kwargs.get('ssm_cfg') or {})
    unknown_ssm = [k for k in ssm_cfg if k not in _ARCH_DEFAULTS]
    if unknown_ssm:
        raise ValueError(f'ssm_cfg keys {unknown_ssm} are not supported '
                         f'(supported: {sorted(_ARCH_DEFAULTS)})')
    depth = kwargs.get('depth', 24)
    backbone = V2M(
        arch=dict(
            embed_dims=kwargs.get('embed_dim', 192), num_layers=depth,
            **ssm_cfg),
        img_size=kwargs.get('img_size', 224),
        patch_size=kwargs.get('patch_size', 16),
        stride=kwargs.get('stride', 16),
        in_channels=kwargs.get('channels', 3),
        out_indices=(depth - 1, ),
        pyramid_strides=None,
        layout='official',
        drop_path_rate=kwargs.get('drop_path_rate', 0.1),
        norm_eps=kwargs.get('norm_epsilon', 1e-5))
    head = V2MClassifierHead(backbone.embed_dims,
                             kwargs.get('num_classes', 1000),
                             norm_eps=kwargs.get('norm_epsilon', 1e-5))
    return SSMClassifier(
        backbone, head, convert_fn=convert_official_classifier)
