"""Models of mmssm: importing this module registers every backbone."""
from .backbones import *  # noqa: F401,F403
from .official import SSMClassifier, from_official, register_official

__all__ = ['SSMClassifier', 'from_official', 'register_official']
