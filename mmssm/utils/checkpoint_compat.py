"""Let ``torch.load(..., weights_only=True)`` read mmengine 0.10.7 checkpoints.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: only
tensors, containers and allow-listed globals may be unpickled. A checkpoint
written by mmengine's ``CheckpointHook`` also holds the ``MessageHub`` state,
whose ``HistoryBuffer`` objects keep numpy arrays and numpy scalars, and
whose statistics-method table is pickled as ``getattr(HistoryBuffer, 'min')``
(and ``'max'``, ``'current'``, ``'mean'``). mmengine then fails to resume
(``Runner.resume`` calls ``torch.load`` with the default).

:func:`register_mmengine_safe_globals` allow-lists exactly those classes and
functions (found by saving a checkpoint with mmengine 0.10.7 under
mmdet/mmseg runners and reading the ``weights_only`` errors), instead of
turning the check off. ``builtins.getattr`` is never allowed: a stand-in
registered under that name resolves only the four ``HistoryBuffer``
statistics methods and rejects every other attribute.
"""
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

# The statistics methods a HistoryBuffer registers for itself.
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(owner: Any, name: str) -> Callable:
    """Stand-in for ``getattr`` while unpickling with ``weights_only=True``.

    Args:
        owner: The object the pickle asks an attribute of; must be the
            ``HistoryBuffer`` class.
        name: The attribute name; one of ``HISTORY_BUFFER_METHODS``.

    Returns:
        The unbound ``HistoryBuffer`` statistics method.

    Raises:
        pickle.UnpicklingError: For any other object or attribute.
    """
    if owner is not HistoryBuffer or name not in HISTORY_BUFFER_METHODS:
        raise pickle.UnpicklingError(
            f'weights_only load: getattr({owner!r}, {name!r}) is not allowed; '
            'only HistoryBuffer statistics methods '
            f'{HISTORY_BUFFER_METHODS} may be resolved')
    return getattr(owner, name)


def _numpy_multiarray_globals() -> list[tuple[Callable, str]]:
    """numpy array/scalar rebuilders under numpy 2 and numpy 1 module names.

    Returns:
        ``(callable, pickled name)`` pairs; a checkpoint written with
        numpy 1.x names the functions ``numpy.core.multiarray.*``.
    """
    pairs = []
    for func in (np._core.multiarray._reconstruct, np._core.multiarray.scalar):
        for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
            pairs.append((func, f'{module}.{func.__name__}'))
    return pairs


def mmengine_checkpoint_safe_globals() -> list[Any]:
    """The globals an mmengine 0.10.7 training checkpoint needs.

    Returns:
        Entries for ``torch.serialization.add_safe_globals``: classes, or
        ``(callable, pickled name)`` pairs.
    """
    return [
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
        np.ndarray,
        np.dtype,
        # MessageHub logs floats and integer counters (numpy float64/int64).
        np.dtypes.Float64DType,
        np.dtypes.Int64DType,
        *_numpy_multiarray_globals(),
    ]


def register_mmengine_safe_globals() -> None:
    """Allow-list mmengine checkpoints' globals for ``weights_only`` loads.

    Idempotent; call it before ``Runner.resume``/``load_checkpoint``.
    """
    torch.serialization.add_safe_globals(mmengine_checkpoint_safe_globals())
