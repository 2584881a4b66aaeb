"""Single dispatch point between mmssm's compiled CUDA ops and PyTorch ops.

Every public scan op validates its arguments and then calls :func:`run_op`
with its PyTorch implementation. For a CUDA input, :func:`run_op` calls the
compiled op of the same name from ``mmssm.ops.cuda_ops`` (``<op>_cuda``, same
signature as the public op) when it exists; otherwise it warns once per op and
runs the PyTorch implementation, or raises where the environment demands the
compiled ops. CPU inputs always take the PyTorch path.

Environment switches (value ``1`` = on, ``0`` or unset = off):

* ``MMSSM_FORCE_PYTORCH_OPS=1``: always run the PyTorch implementations, e.g.
  to benchmark or compare them with the compiled ops. Takes precedence.
* ``MMSSM_REQUIRE_CUDA_OPS=1``: a CUDA input whose compiled op is missing
  raises a ``RuntimeError`` instead of warning.
"""
import functools
import importlib
import os
import warnings
from typing import Any, Callable, Dict, Optional, Set, Tuple, Union

import torch
from torch import Tensor

#: Ops that have a compiled CUDA counterpart named ``<op>_cuda``.
DISPATCHED_OPS: Tuple[str, ...] = ('selective_scan', 'cross_selective_scan',
                                   'wavefront_scan_2d', 'v2m_corner_scan',
                                   'causal_conv1d', 'layer_norm',
                                   'rms_norm')

FORCE_PYTORCH_ENV = 'MMSSM_FORCE_PYTORCH_OPS'
REQUIRE_CUDA_ENV = 'MMSSM_REQUIRE_CUDA_OPS'

_warned_ops: Set[str] = set()

# The compiled ops as resolved when mmssm.ops was imported: torch.compile reads
# this table instead of importing modules while it traces, which would break
# the graph.
_RESOLVED_FOR_TRACING: Dict[str, Tuple[Optional[Callable], str]] = {}


def _env_flag(name: str) -> bool:
    """Reads an on/off environment switch.

    Args:
        name: Name of the environment variable.

    Returns:
        True for ``'1'``, False for ``'0'``, an empty value or an unset one.
    """
    value = os.environ.get(name, '')
    if value not in ('', '0', '1'):
        raise ValueError(f'environment variable {name} must be 0 or 1, '
                         f'got {value!r}')
    return value == '1'


@functools.lru_cache(maxsize=None)
def _extension_import_error() -> Optional[str]:
    """Imports ``mmssm._ext`` once.

    Returns:
        None where it imports, else the import error's message.
    """
    try:
        importlib.import_module('mmssm._ext')
    except ImportError as error:
        return f'{type(error).__name__}: {error}'
    return None


def compiled_ops_available() -> bool:
    """Whether mmssm's compiled extension ``mmssm._ext`` can be imported.

    Returns:
        True where the extension imports.
    """
    return _extension_import_error() is None


@functools.lru_cache(maxsize=None)
def _load_compiled_op(op_name: str) -> Tuple[Optional[Callable], str]:
    """Finds the compiled CUDA op ``mmssm.ops.cuda_ops.<op_name>_cuda``.

    Args:
        op_name: One of :data:`DISPATCHED_OPS`.

    Returns:
        The compiled function (None where missing) and, where missing, the
        reason in words.
    """
    extension_error = _extension_import_error()
    if extension_error is not None:
        return None, f'mmssm._ext is not importable ({extension_error})'
    try:
        cuda_ops = importlib.import_module('mmssm.ops.cuda_ops')
    except ImportError as error:
        return None, f'mmssm.ops.cuda_ops is not importable ({error})'
    function = getattr(cuda_ops, f'{op_name}_cuda', None)
    if function is None:
        return None, f'mmssm.ops.cuda_ops has no {op_name}_cuda'
    return function, ''


def _check_op_name(op_name: str) -> None:
    if op_name not in DISPATCHED_OPS:
        raise ValueError(f'op_name must be one of {DISPATCHED_OPS}, '
                         f'got {op_name!r}')


def backend(op_name: Optional[str] = None) -> Union[str, Dict[str, str]]:
    """Which implementation each op uses for CUDA inputs.

    CPU inputs always use the PyTorch implementation.

    Args:
        op_name: One of :data:`DISPATCHED_OPS`, or None for all of them.

    Returns:
        ``'cuda'`` (compiled op) or ``'pytorch'`` for ``op_name``, or a dict
        op name -> backend when ``op_name`` is None.
    """
    if op_name is None:
        return {name: backend(name) for name in DISPATCHED_OPS}
    _check_op_name(op_name)
    if _env_flag(FORCE_PYTORCH_ENV):
        return 'pytorch'
    function, _ = _load_compiled_op(op_name)
    return 'pytorch' if function is None else 'cuda'


def run_op(op_name: str, pytorch_impl: Callable, *args: Any,
           **kwargs: Any) -> Any:
    """Runs op ``op_name`` with the compiled or the PyTorch implementation.

    Args:
        op_name: One of :data:`DISPATCHED_OPS`.
        pytorch_impl: The op's PyTorch implementation, called with ``*args``
            and ``**kwargs`` (the public op's arguments).
        *args: The public op's positional arguments; the first one is the
            op's main input tensor, whose device selects the implementation.
        **kwargs: The public op's keyword arguments.

    Returns:
        Whatever the chosen implementation returns.
    """
    _check_op_name(op_name)
    main_input = args[0]
    if not isinstance(main_input, Tensor):
        raise TypeError(f'{op_name}: the first argument must be a Tensor, '
                        f'got {type(main_input).__name__}')
    if main_input.device.type != 'cuda' or _env_flag(FORCE_PYTORCH_ENV):
        return pytorch_impl(*args, **kwargs)
    if torch.compiler.is_compiling():
        function, reason = _RESOLVED_FOR_TRACING[op_name]
    else:
        function, reason = _load_compiled_op(op_name)
    if function is not None:
        return function(*args, **kwargs)
    problem = (f'mmssm.ops.{op_name} got a CUDA tensor but its compiled op '
               f'is unavailable ({reason})')
    if _env_flag(REQUIRE_CUDA_ENV):
        raise RuntimeError(
            f'{problem}; {REQUIRE_CUDA_ENV}=1 forbids the PyTorch fallback.')
    message = (f'{problem}; running the slower PyTorch implementation. Set '
               f'{REQUIRE_CUDA_ENV}=1 to make this an error.')
    if op_name not in _warned_ops:
        _warned_ops.add(op_name)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return pytorch_impl(*args, **kwargs)


def resolve_compiled_ops() -> None:
    """Find every op's compiled implementation once, outside any tracing.

    Called when :mod:`mmssm.ops` is imported, so that ``torch.compile`` of a
    model using the ops traces straight into the compiled ops.
    """
    for op_name in DISPATCHED_OPS:
        _RESOLVED_FOR_TRACING[op_name] = _load_compiled_op(op_name)
