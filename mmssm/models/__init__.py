"""Models of mmssm: importing this module registers every backbone."""
from .backbones import Mamba2D, V2M, V2MPyramid, Vim, VMamba
from .official import SSMClassifier, from_official, register_official

__all__ = [
    'Mamba2D', 'SSMClassifier', 'V2M', 'V2MPyramid', 'Vim', 'VMamba',
    'from_official', 'register_official'
]
