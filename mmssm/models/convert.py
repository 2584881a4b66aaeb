"""Convert the authors' checkpoints to mmssm backbone checkpoints once.

The conversion itself is each backbone's ``convert_checkpoint``; this module
recognises which family a file belongs to, finds the arch it fits (every
entry of the family's ``arch_zoo`` is tried on the meta device, so nothing is
allocated) and writes a file that ``torch.load(weights_only=True)`` reads.
"""
import re
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from ..registry import MODELS
from .backbones.base import SSMBackbone
from .utils.checkpoint import (CheckpointError, LoadReport, find_state_dict,
                               load_state_dict_with_report, safe_load)

StateDict = Dict[str, torch.Tensor]

#: family name -> registered backbone class name.
FAMILY_BACKBONES = {
    'vmamba': 'VMamba',
    'vim': 'Vim',
    'v2m': 'V2M',
    'mamba2d': 'Mamba2D',
}

# Keys only the authors' checkpoints of one family have, most specific first
# (V2M's mixer is a Vim mixer with a second pass, so it is tested before Vim).
_SIGNATURES: Tuple[Tuple[str, 're.Pattern[str]'], ...] = (
    ('mamba2d', re.compile(r'token_mixer\.A[TL]_log$')),
    ('v2m', re.compile(r'mixer\.A_2_log$')),
    ('vim', re.compile(r'mixer\.A_b_log$')),
    ('vmamba', re.compile(r'\.(op|self_attention)\.A_logs$')),
)


def detect_family(state_dict: StateDict) -> str:
    """Name the family whose authors wrote this state dict.

    Args:
        state_dict: A flat state dict of the authors' code.

    Returns:
        One of :data:`FAMILY_BACKBONES`.

    Raises:
        ValueError: If no family's signature keys are present.
    """
    for family, signature in _SIGNATURES:
        if any(signature.search(key) for key in state_dict):
            return family
    raise ValueError(
        'could not tell which family this checkpoint belongs to (none of the '
        f'signature keys {[s.pattern for _, s in _SIGNATURES]} is present); '
        f'pass the family explicitly (one of {sorted(FAMILY_BACKBONES)})')


def _build_on_meta(family: str, arch: Union[str, dict]) -> SSMBackbone:
    with torch.device('meta'):
        return MODELS.build(
            dict(type=f'mmssm.{FAMILY_BACKBONES[family]}', arch=arch))


def _arch_names(family: str) -> Tuple[str, ...]:
    backbone_cls = MODELS.get(f'mmssm.{FAMILY_BACKBONES[family]}')
    return tuple(backbone_cls.arch_zoo)


def convert_to_backbone(
        state_dict: StateDict,
        family: Optional[str] = None,
        arch: Optional[Union[str, dict]] = None,
        allow_partial: bool = False) -> Tuple[StateDict, str, str, LoadReport]:
    """Convert a state dict to an mmssm backbone's keys, checked key by key.

    Args:
        state_dict: The authors' (or a whole OpenMMLab model's) state dict.
        family: The family; detected from the keys when None.
        arch: The arch; when None, the first arch of the family's zoo that
            the checkpoint fits without a missing, unexpected or mismatched
            key.
        allow_partial: Accept a checkpoint that leaves backbone parameters
            uninitialised (the report lists them).

    Returns:
        ``(converted state dict, family, arch name, report)``.

    Raises:
        CheckpointError: If no arch fits (the report of the requested arch,
            or of the closest one, is in the message).
    """
    family = family or detect_family(state_dict)
    if family not in FAMILY_BACKBONES:
        raise KeyError(f'unknown family {family!r}; expected one of '
                       f'{sorted(FAMILY_BACKBONES)}')
    candidates = (arch, ) if arch is not None else _arch_names(family)
    best: Optional[Tuple[int, str, LoadReport]] = None
    for candidate in candidates:
        backbone = _build_on_meta(family, candidate)
        selected = backbone.select_backbone_keys(state_dict)
        converted = backbone.convert_checkpoint(dict(selected))
        report = load_state_dict_with_report(
            backbone,
            converted,
            allow_partial=True,
            fresh_patterns=backbone.pretrained_fresh_patterns)
        fits = report.ok and not report.unexpected
        if fits or (allow_partial and arch is not None):
            return converted, family, str(candidate), report
        misfit = (len(report.missing) + len(report.shape_mismatched) +
                  len(report.unexpected))
        if best is None or misfit < best[0]:
            best = (misfit, str(candidate), report)
    raise CheckpointError(
        f'the {family} checkpoint fits none of the archs {candidates}; '
        f'closest is {best[1]!r}:\n{best[2]}')


def convert_checkpoint_file(src: Union[str, Path],
                            dst: Union[str, Path],
                            family: Optional[str] = None,
                            arch: Optional[str] = None,
                            allow_partial: bool = False) -> LoadReport:
    """Convert the authors' checkpoint file to an mmssm backbone file.

    The written file is ``{'state_dict': {'backbone.<key>': tensor}, 'meta':
    {...}}``: it initialises a backbone through
    ``init_cfg=dict(type='Pretrained', checkpoint=dst)`` and loads with
    ``torch.load(weights_only=True)``.

    Args:
        src: The authors' checkpoint.
        dst: Where to write the converted file.
        family: The family; detected when None.
        arch: The arch; found when None.
        allow_partial: See :func:`convert_to_backbone`.

    Returns:
        The report of the check against the backbone.
    """
    state_dict = find_state_dict(safe_load(src), source=str(src))
    converted, family, arch, report = convert_to_backbone(
        state_dict, family, arch, allow_partial)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            'state_dict': {f'backbone.{k}': v.contiguous()
                           for k, v in converted.items()},
            'meta': {
                'mmssm_family': family,
                'mmssm_backbone': FAMILY_BACKBONES[family],
                'arch': arch,
                'source': str(src),
            }
        }, dst)
    return report
