"""Backbones registered in the ``mmssm`` scope."""
from .mamba2d import Mamba2D
from .v2m import V2M
from .v2m_pyramid import V2MPyramid
from .vim import Vim
from .vmamba import VMamba

__all__ = ['Mamba2D', 'V2M', 'V2MPyramid', 'Vim', 'VMamba']
