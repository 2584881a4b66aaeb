"""Backbones registered in the ``mmssm`` scope."""

__all__: list = []
from .mamba2d import Mamba2D  # noqa: F401
from .vim import Vim  # noqa: F401
from .vmamba import VMamba  # noqa: F401
from .v2m_pyramid import V2MPyramid  # noqa: F401
from .v2m import V2M  # noqa: F401
