"""Scan operators of mmssm (PyTorch implementations and compiled CUDA ops)."""
