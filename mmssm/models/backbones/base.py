"""The base class every mmssm backbone derives from."""
import copy
from abc import abstractmethod
from typing import Dict, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule

from ..utils.checkpoint import (LoadReport, find_state_dict,
                                load_state_dict_with_report, safe_load)

# Top-level module names of OpenMMLab detectors, segmentors and classifiers
# besides the backbone: a state dict holding them is a whole-model checkpoint.
WHOLE_MODEL_PREFIXES = ('neck.', 'head.', 'rpn_head.', 'roi_head.',
                        'decode_head.', 'auxiliary_head.', 'bbox_head.',
                        'mask_head.', 'data_preprocessor.')


class SSMBackbone(BaseModule):
    """Base of mmssm's backbones: pretrained loading and the shared API.

    Subclasses do their random initialisation in ``__init__`` (as the authors'
    code does) and must not override :meth:`init_weights`. They set
    ``out_channels`` and ``out_strides`` (one entry per output, in order) and
    implement ``forward`` (a tuple of NCHW maps), :meth:`_freeze_stages`,
    :meth:`get_layer_depth` and :meth:`convert_checkpoint`.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads any checkpoint
    the family's :meth:`convert_checkpoint` understands (the authors' released
    files, mmssm's own, whole mmdet/mmseg/mmpretrain models). Optional keys:
    ``prefix`` (take only the keys under this prefix, e.g. ``'backbone.'``)
    and ``allow_partial`` (load what matches even when backbone parameters
    stay uninitialised; the report still lists them). Every load logs a
    report; parameters matching :attr:`pretrained_fresh_patterns` (outputs
    norms and adapters that an ImageNet classifier does not have) are
    reported as freshly initialised instead of missing.

    Args:
        init_cfg: mmengine initialisation config(s).
    """

    #: ``fnmatch`` patterns of keys an ImageNet checkpoint need not provide.
    pretrained_fresh_patterns: Tuple[str, ...] = ()

    out_channels: Tuple[int, ...]
    out_strides: Tuple[int, ...]

    def __init__(self, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.last_load_report: Optional[LoadReport] = None

    @staticmethod
    def _check_out_indices(out_indices: Sequence[int],
                           num: int) -> Tuple[int, ...]:
        """Normalise ``out_indices`` (negative ones count from the end).

        Args:
            out_indices: Indices of the stages/blocks to output.
            num: Number of stages/blocks there are.

        Returns:
            Sorted, non-negative, unique indices.

        Raises:
            ValueError: On an empty, duplicated or out-of-range index.
        """
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        if len(out_indices) == 0:
            raise ValueError('out_indices must name at least one output')
        normalised = []
        for index in out_indices:
            if not isinstance(index, int) or not -num <= index < num:
                raise ValueError(
                    f'out_indices entry {index!r} is out of range for '
                    f'{num} stages/blocks (expected an int in [{-num}, '
                    f'{num - 1}])')
            normalised.append(index % num)
        if len(set(normalised)) != len(normalised):
            raise ValueError(f'out_indices {tuple(out_indices)} has '
                             'duplicates')
        return tuple(sorted(normalised))

    def train(self, mode: bool = True) -> 'SSMBackbone':
        super().train(mode)
        self._freeze_stages()
        return self

    @abstractmethod
    def _freeze_stages(self) -> None:
        """Freeze the stages named by ``frozen_stages`` (subclass hook)."""

    @abstractmethod
    def get_layer_depth(self, param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise learning-rate decay.

        Args:
            param_name: The parameter's name.
            prefix: The prefix of the backbone in the whole model.

        Returns:
            ``(layer_id, num_layers)``.
        """

    @abstractmethod
    def convert_checkpoint(
            self,
            state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Rename a checkpoint of this family to this backbone's keys."""

    @staticmethod
    def select_backbone_keys(state_dict: Dict[str, torch.Tensor],
                             prefix: Optional[str] = None
                             ) -> Dict[str, torch.Tensor]:
        """Take the backbone's part of a whole-model state dict.

        Args:
            state_dict: A flat state dict.
            prefix: Take the keys under this prefix (stripped). Without it,
                a state dict of a whole OpenMMLab model (``backbone.`` keys
                beside neck/head keys), or one whose keys all start with
                ``backbone.``, gives its ``backbone.`` keys; any other state
                dict is returned unchanged.

        Returns:
            The selected state dict.

        Raises:
            KeyError: If no key starts with an explicit ``prefix``.
        """
        if prefix is None:
            in_backbone = [k.startswith('backbone.') for k in state_dict]
            whole_model = all(in_backbone) or any(
                k.startswith(WHOLE_MODEL_PREFIXES) for k in state_dict)
            if not (any(in_backbone) and whole_model):
                return state_dict
            prefix = 'backbone.'
        selected = {
            k[len(prefix):]: v
            for k, v in state_dict.items() if k.startswith(prefix)
        }
        if not selected:
            raise KeyError(f'no checkpoint key starts with prefix {prefix!r}')
        return selected

    def load_pretrained(self,
                        checkpoint: str,
                        prefix: Optional[str] = None,
                        allow_partial: bool = False) -> LoadReport:
        """Load a checkpoint of this family and log what matched.

        Args:
            checkpoint: Path of the checkpoint file.
            prefix: See :meth:`select_backbone_keys`.
            allow_partial: Load what matches even if parameters stay
                uninitialised or shapes differ.

        Returns:
            The load report (also kept as ``self.last_load_report``).
        """
        state_dict = find_state_dict(safe_load(checkpoint), source=checkpoint)
        state_dict = self.select_backbone_keys(state_dict, prefix)
        converted = self.convert_checkpoint(dict(state_dict))
        report = load_state_dict_with_report(
            self,
            converted,
            allow_partial=allow_partial,
            fresh_patterns=self.pretrained_fresh_patterns,
            source=checkpoint)
        print_log(
            f'{type(self).__name__}: loaded {checkpoint}\n{report}',
            logger='current')
        self.last_load_report = report
        return report

    def init_weights(self) -> None:
        """Initialise children, then load a ``Pretrained`` checkpoint."""
        init_cfg = copy.deepcopy(self.init_cfg)
        pretrained = None
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            pretrained = init_cfg
            self.init_cfg = None
        try:
            super().init_weights()
        finally:
            if pretrained is not None:
                self.init_cfg = pretrained
        if pretrained is not None:
            if 'checkpoint' not in pretrained:
                raise KeyError("init_cfg of type 'Pretrained' needs a "
                               "'checkpoint' path")
            self.load_pretrained(
                pretrained['checkpoint'],
                prefix=pretrained.get('prefix'),
                allow_partial=pretrained.get('allow_partial', False))
