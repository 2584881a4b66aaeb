"""Build mmssm models that compute the same function as the authors' code.

Each family file registers a builder with :func:`register_official`; users
call :func:`from_official` with the keyword arguments they passed to the
authors' constructor (VMamba ``VSSM``, Vim/V2M ``VisionMamba``, Mamba2D
``Mamba2DBackbone`` + ``MlpHead``) and, optionally, the authors' checkpoint.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from .utils.checkpoint import (LoadReport, find_state_dict,
                               load_state_dict_with_report, safe_load)

StateDict = Dict[str, torch.Tensor]
OfficialBuilder = Callable[[dict], 'SSMClassifier']

_OFFICIAL_BUILDERS: Dict[str, OfficialBuilder] = {}


class SSMClassifier(nn.Module):
    """An image classifier: an mmssm backbone followed by its family's head.

    Args:
        backbone: The mmssm backbone.
        head: Takes the backbone's output tuple and returns logits.
        convert_fn: Maps the authors' classification state dict (and mmssm's
            own ``backbone.*``/``head.*`` keys) to this module's keys.
    """

    def __init__(self,
                 backbone: nn.Module,
                 head: nn.Module,
                 convert_fn: Optional[Callable[[StateDict],
                                               StateDict]] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.convert_fn = convert_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of NCHW images."""
        return self.head(self.backbone(x))

    def load_official_checkpoint(self, checkpoint: str) -> LoadReport:
        """Load the authors' classification checkpoint, every key checked.

        Args:
            checkpoint: Path of the authors' checkpoint file.

        Returns:
            The load report.
        """
        state_dict = find_state_dict(safe_load(checkpoint), source=checkpoint)
        if self.convert_fn is not None:
            state_dict = self.convert_fn(dict(state_dict))
        report = load_state_dict_with_report(self, state_dict,
                                             source=checkpoint)
        print_log(f'{type(self.backbone).__name__} classifier: loaded '
                  f'{checkpoint}\n{report}', logger='current')
        return report


def register_official(family: str) -> Callable[[OfficialBuilder],
                                               OfficialBuilder]:
    """Register the builder of ``family`` for :func:`from_official`.

    Args:
        family: The family name (``vmamba``, ``vim``, ``v2m``, ``mamba2d``).

    Returns:
        A decorator that registers and returns the builder.
    """

    def decorator(builder: OfficialBuilder) -> OfficialBuilder:
        if family in _OFFICIAL_BUILDERS:
            raise KeyError(f'an official builder for {family!r} is already '
                           'registered')
        _OFFICIAL_BUILDERS[family] = builder
        return builder

    return decorator


def official_families() -> Tuple[str, ...]:
    """Names of the families :func:`from_official` can build."""
    return tuple(sorted(_OFFICIAL_BUILDERS))


def from_official(family: str,
                  official_kwargs: dict,
                  checkpoint: Optional[str] = None) -> SSMClassifier:
    """Build the mmssm classifier equal to the authors' model.

    Args:
        family: One of :func:`official_families`.
        official_kwargs: The keyword arguments of the authors' constructor.
        checkpoint: Optional path of the authors' checkpoint to load.

    Returns:
        The classifier; ``.backbone`` is the mmssm backbone.

    Raises:
        KeyError: For an unknown family.
    """
    if family not in _OFFICIAL_BUILDERS:
        raise KeyError(f'unknown family {family!r}; expected one of '
                       f'{official_families()}')
    model = _OFFICIAL_BUILDERS[family](dict(official_kwargs))
    if checkpoint is not None:
        model.load_official_checkpoint(checkpoint)
    return model
