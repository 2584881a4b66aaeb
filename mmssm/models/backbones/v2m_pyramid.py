"""V2M*: the pyramid Visual 2-Dimensional Mamba (Wang et al.).

``../shared/papers/v2m.txt`` reports pyramid models V2M-S* (30 M parameters)
and V2M-B* (50 M) whose sizes equal VMamba-T [s1l8] and VMamba-S [s2l15];
``../shared/papers/README.md`` records that the pyramid V2M is VMamba's v2
architecture with the 1D cross-scan of SS2D replaced by V2M's 2D scan (the
authors released no pyramid code). mmssm builds exactly that: the
:class:`~mmssm.models.backbones.vmamba.VMamba` v2 network (patch embedding,
downsampling, blocks with MLPs, output norms) whose mixer is
:class:`V2M2DMixer`.

:class:`V2M2DMixer` runs the 2D state equation of the paper as its
section 3.2 decomposes it, from each of the four corners (section 3.3):

1. row pass (eq. 9): along every row, starting at the corner's side,
   ``h = exp(Δ_r A_r) h + Δ_r B_r x`` with input-dependent ``Δ_r`` and
   ``B_r``; its output is the state itself (``C = 1``, summed over the N
   state entries, no skip), i.e. the new input ``x'`` of eq. 11;
2. column pass (eq. 12): along every column of ``x'``, starting at the
   corner's side, with ``B = 1`` (the identity projection ``I``),
   input-dependent ``Δ_c`` and ``C_c`` and a skip ``D_c``;
3. the four corners' results are summed at their pixels (eq. 15).

Each corner and pass has its own parameters (``A``, ``Δ`` projection and
bias; ``B_r`` for rows, ``C_c`` and ``D_c`` for columns). The Δ rank of each
pass is half of SS2D's (``ceil(dim / 32)``), so the per-corner projections
have exactly SS2D's size and the model stays within 1 % of VMamba's
parameter count (only the second pass's ``A`` and Δ bias are extra).
The op :func:`mmssm.ops.v2m_corner_scan` scans the spatial layout directly:
no rotated or transposed copies are made.

Initialisation from VMamba v2 weights (:meth:`V2MPyramid.convert_checkpoint`
on an authors' or mmssm VMamba checkpoint with the same layout):

* copied: patch embedding, downsampling, every LayerNorm, MLP, ``in_proj``,
  depthwise conv, ``out_norm``, ``out_proj`` and output norms;
* row pass (it reads the same features as VMamba's scan): ``row_x_proj``
  = VMamba's first ``R_r`` Δ rows and its B rows, ``row_dt_proj_weight``
  = VMamba's first ``R_r`` Δ-rank columns, ``row_dt_proj_bias`` and
  ``row_A_log`` = VMamba's;
* fresh (kept at their initialisation, reported as such by the loader):
  every ``col_*`` parameter of the column pass, which has no VMamba
  counterpart.
"""
import math
import re
from typing import Dict, Tuple, Union

import torch
from torch import nn

from mmssm.ops import v2m_corner_scan
from mmssm.registry import MODELS
from ..layers.norm import LayerNorm
from ..layers.projection import project_channels
from .vmamba import (VMamba, dt_bias_init, official_key_to_mmssm,
                     resolve_arch)

StateDict = Dict[str, torch.Tensor]

_V2 = dict(version='v2', d_state=1, mlp_ratio=4.0, conv_bias=False)

#: V2M-S* / V2M-B* (``papers/v2m.txt`` Tables 1-3) on VMamba's layouts.
ARCH_ZOO: Dict[str, dict] = {
    # VMamba-T [s1l8] layout, 30 M parameters with a 1000-class head
    'small': dict(embed_dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, **_V2),
    # VMamba-S [s2l15] layout, 50 M parameters with a 1000-class head
    'base': dict(embed_dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, **_V2),
}

CORNERS = ('tl', 'tr', 'bl', 'br')


class V2M2DMixer(nn.Module):
    """V2M's four-corner 2D selective scan in VMamba's SS2D frame.

    ``in_proj -> 3x3 depthwise conv -> SiLU -> row pass -> column pass ->
    sum over corners -> LayerNorm -> out_proj`` (see the module docstring).

    Args:
        embed_dims: Channels of the input and output.
        d_state: SSM state size N.
        ssm_ratio: Inner width ``d_inner = int(ssm_ratio * embed_dims)``.
        dt_rank: Δ rank of each pass; ``'auto'`` is ``ceil(embed_dims / 32)``.
        conv_bias: Whether the depthwise convolution has a bias.
    """

    num_corners = len(CORNERS)

    def __init__(self,
                 embed_dims: int,
                 d_state: int,
                 ssm_ratio: float,
                 dt_rank: Union[int, str] = 'auto',
                 conv_bias: bool = False) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * embed_dims)
        rank = math.ceil(embed_dims / 32) if dt_rank == 'auto' else dt_rank
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got "
                             f'{dt_rank!r}')
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        corners = self.num_corners
        self.in_proj = nn.Linear(embed_dims, d_inner, bias=False)
        self.dwconv = nn.Conv2d(
            d_inner, d_inner, 3, padding=1, groups=d_inner, bias=conv_bias)
        bound = d_inner**-0.5
        log_a = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
        # One parameter group per (pass, corner): rows project (Δ, B),
        # columns project (Δ, C).
        for name in ('row', 'col'):
            self.register_parameter(
                f'{name}_x_proj_weight',
                nn.Parameter(
                    torch.empty(corners, rank + d_state,
                                d_inner).uniform_(-bound, bound)))
            self.register_parameter(
                f'{name}_dt_proj_weight',
                nn.Parameter(
                    torch.empty(corners, d_inner,
                                rank).uniform_(-rank**-0.5, rank**-0.5)))
            self.register_parameter(
                f'{name}_dt_proj_bias',
                nn.Parameter(dt_bias_init(corners, d_inner)))
            self.register_parameter(
                f'{name}_A_log',
                nn.Parameter(log_a.repeat(corners * d_inner, 1)))
        self.col_D = nn.Parameter(torch.ones(corners * d_inner))
        # The row pass's constant C and the column pass's constant B: a
        # buffer rather than a fresh tensor per call (an allocation and a
        # cast to float32 each).
        self.register_buffer(
            'unit_matrix',
            torch.ones(corners * d_inner, d_state),
            persistent=False)
        # Normalises the channels-first corner sum straight to channel-last.
        self.out_norm = LayerNorm(d_inner, channels_first=True)
        self.out_proj = nn.Linear(d_inner, embed_dims, bias=False)

    def _projections(self, x: torch.Tensor,
                     name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel projections of one pass (``name``: row or col).

        Args:
            x: ``(B, D, H, W)`` (shared by the corners) or ``(B, K, D, H, W)``.
            name: ``'row'`` or ``'col'``.

        Returns:
            Δ before its bias ``(B, K, D, H, W)`` and the row pass's B or the
            column pass's C ``(B, K, N, H, W)``.
        """
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        weight = getattr(self, f'{name}_x_proj_weight')
        # W @ x products in the scans' layout: no transposed copies. A map
        # shared by the corners meets every corner's weight at once. (A
        # grouped 1x1 convolution for the per-corner products made the
        # V2M-S* training step's kernels 27% slower on an H100.)
        if x.dim() == 4:
            x_dbl = project_channels(weight.flatten(0, 1), x.flatten(2))
        else:
            x_dbl = torch.matmul(weight, x.flatten(3))
        x_dbl = x_dbl.view(batch, self.num_corners, -1, height * width)
        dt, matrix = x_dbl.split([self.dt_rank, self.d_state], dim=2)
        delta = torch.matmul(getattr(self, f'{name}_dt_proj_weight'), dt)
        delta = delta.view(batch, self.num_corners, -1, height, width)
        matrix = matrix.reshape(batch, self.num_corners, self.d_state, height,
                                width)
        return delta, matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix a channel-last map.

        Args:
            x: ``(B, H, W, embed_dims)``.

        Returns:
            ``(B, H, W, embed_dims)``.
        """
        x = self.in_proj(x)
        # The convolution keeps the channel-last strides of its input: one
        # contiguous (B, D, H, W) copy serves the projections and the scan.
        x = nn.functional.silu(self.dwconv(x.permute(0, 3, 1, 2))).contiguous()
        delta, B = self._projections(x, 'row')
        rows = v2m_corner_scan(
            x,
            delta,
            -torch.exp(self.row_A_log),
            B,
            self.unit_matrix,
            delta_bias=self.row_dt_proj_bias.flatten(),
            delta_softplus=True,
            axis='row',
            corners=CORNERS)
        delta, C = self._projections(rows, 'col')
        y = v2m_corner_scan(
            rows,
            delta,
            -torch.exp(self.col_A_log),
            self.unit_matrix,
            C,
            D=self.col_D,
            delta_bias=self.col_dt_proj_bias.flatten(),
            delta_softplus=True,
            axis='col',
            corners=CORNERS,
            merge_corners=True)
        # The kernel merges the corners in float32, which the norm reads;
        # without autocast the sum takes the activations' dtype (a
        # half-precision model).
        if not torch.is_autocast_enabled(y.device.type):
            y = y.to(x.dtype)
        return self.out_proj(self.out_norm(y))


@MODELS.register_module()
class V2MPyramid(VMamba):
    """Pyramid V2M (V2M-S*, V2M-B*) for detection, segmentation, ImageNet.

    Same arguments, outputs (NCHW maps, strides 4/8/16/32, a LayerNorm per
    output), freezing, checkpointing and layer-depth rules as
    :class:`~mmssm.models.backbones.vmamba.VMamba`.

    Args:
        arch: ``'small'`` (V2M-S*), ``'base'`` (V2M-B*) or a dict with
            ``embed_dims``, ``depths``, ``d_state``, ``ssm_ratio``,
            ``mlp_ratio`` and optionally ``conv_bias`` and ``dt_rank`` (Δ rank
            per pass, ``'auto'`` = ``ceil(dim / 32)``).
        **kwargs: ``in_channels``, ``out_indices``, ``with_out_norm``,
            ``frozen_stages``, ``drop_path_rate``, ``with_cp``, ``init_cfg``
            as for VMamba.
    """

    # Weights an ImageNet VMamba checkpoint cannot provide.
    arch_zoo = ARCH_ZOO
    pretrained_fresh_patterns = ('out_norms.*', 'stages.*.mixer.col_*')

    def __init__(self, arch: Union[str, dict] = 'small', **kwargs) -> None:
        super().__init__(arch=arch, **kwargs)

    @staticmethod
    def _resolve_arch(arch: Union[str, dict]) -> dict:
        """The complete arch dict of a V2MPyramid arch name or dict."""
        if isinstance(arch, dict):
            if 'version' in arch:
                raise ValueError("a V2MPyramid arch dict has no 'version' "
                                 '(the layout is always VMamba v2)')
            arch = dict(arch, version='v2')
        return resolve_arch(arch, ARCH_ZOO, family='V2MPyramid')

    def _build_mixer(self, embed_dims: int) -> nn.Module:
        """The four-corner 2D mixer of one block."""
        return V2M2DMixer(
            embed_dims,
            d_state=self.arch['d_state'],
            ssm_ratio=self.arch['ssm_ratio'],
            dt_rank=self.arch['dt_rank'],
            conv_bias=self.arch['conv_bias'])

    def convert_checkpoint(self, state_dict: StateDict) -> StateDict:
        """Rename a V2MPyramid checkpoint, or map VMamba v2 weights.

        mmssm's own V2MPyramid keys pass through. VMamba v2 weights (the
        authors' classification or downstream keys, or mmssm VMamba keys)
        initialise everything but the column pass, as the module docstring
        lists; the classifier is dropped.

        Args:
            state_dict: The checkpoint's flat state dict.

        Returns:
            The renamed state dict.
        """
        converted = {}
        for key, value in state_dict.items():
            new_key = official_key_to_mmssm(key, 'v2')
            if new_key is None:
                continue
            match = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.mixer\.(.*)$',
                             new_key)
            if match is None:
                converted[new_key] = value
                continue
            stage, block, name = match.groups()
            prefix = new_key[:-len(name)]
            converted.update(
                self._from_vmamba_mixer(prefix, name, value,
                                        self._mixer(int(stage), int(block))))
        return converted

    def _mixer(self, stage: int, block: int) -> Union[V2M2DMixer, None]:
        """The mixer of a block, or None where this arch has no such block."""
        if stage >= len(self.stages) or block >= len(
                self.stages[stage].blocks):
            return None
        return self.stages[stage].blocks[block].mixer

    @staticmethod
    def _from_vmamba_mixer(prefix: str, name: str, value: torch.Tensor,
                           mixer: Union[V2M2DMixer, None]) -> StateDict:
        """Map one VMamba SS2D tensor to the row pass (see module doc)."""
        if name in ('A_log', 'dt_proj_bias'):
            return {f'{prefix}row_{name}': value}
        if name == 'D':
            return {}  # the row pass has no skip; the column pass is fresh
        if mixer is None or name not in ('x_proj_weight', 'dt_proj_weight'):
            return {f'{prefix}{name}': value}
        rank, state = mixer.dt_rank, mixer.d_state
        if name == 'x_proj_weight':
            vmamba_rank = value.shape[1] - 2 * state
            row = torch.cat(
                [value[:, :rank], value[:, vmamba_rank:vmamba_rank + state]],
                dim=1)
            return {f'{prefix}row_x_proj_weight': row}
        return {f'{prefix}row_dt_proj_weight': value[..., :rank]}
