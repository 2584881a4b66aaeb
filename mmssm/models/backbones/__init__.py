"""Backbones registered in the ``mmssm`` scope."""

__all__: list = []
