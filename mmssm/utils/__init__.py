"""Utilities of mmssm that are not models (checkpoint compatibility)."""
from .checkpoint_compat import register_mmengine_safe_globals

__all__ = ['register_mmengine_safe_globals']
