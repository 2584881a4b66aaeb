"""Scan operators of mmssm (PyTorch implementations and compiled CUDA ops)."""
from .causal_conv1d import causal_conv1d
from .cross_scan import cross_merge, cross_scan, cross_selective_scan
from .dispatch import backend, compiled_ops_available, resolve_compiled_ops
from .norm import layer_norm, rms_norm
from .selective_scan import linear_recurrence, selective_scan
from .wavefront_scan import wavefront_scan_2d
from .v2m_scan import v2m_corner_scan  # noqa: F401

__all__ = [
    'backend', 'causal_conv1d', 'compiled_ops_available', 'cross_merge',
    'cross_scan', 'cross_selective_scan', 'layer_norm', 'linear_recurrence',
    'rms_norm', 'selective_scan', 'v2m_corner_scan', 'wavefront_scan_2d'
]

resolve_compiled_ops()
