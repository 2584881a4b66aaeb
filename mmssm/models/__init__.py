"""Models of mmssm: importing this module registers every backbone."""
from .backbones import *  # noqa: F401,F403
