"""mmssm: 2D state-space vision backbones for OpenMMLab dense prediction."""

__version__ = '0.1.0'

__all__ = ['__version__']
