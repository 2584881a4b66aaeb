"""Safe checkpoint loading and loud, key-by-key load reports.

Released checkpoints of the families mmssm supports embed pickled objects
beside their tensors (a yacs ``CfgNode`` or an ``argparse.Namespace`` holding
the training config, Lightning loop state). ``torch.load(weights_only=True)``
refuses such files, and ``weights_only=False`` would execute whatever the
pickle names. :func:`safe_load` first tries the strict loader; if the file
names other globals, it unpickles again with an unpickler that resolves only
PyTorch's own weights-only allow-list and replaces every other global by an
inert :class:`OpaqueObject` that runs no code. Tensors and plain containers
come back intact; the placeholders only say what the file contained.
"""
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]

# Keys under which released checkpoints keep their weights, in the order they
# are tried (mmengine/Lightning, then the authors' ``{'model': ...}``).
STATE_DICT_KEYS = ('state_dict', 'model', 'module', 'model_state_dict')


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or holds no usable weights."""


class OpaqueObject:
    """Inert stand-in for a pickled object whose class is not allow-listed.

    It records the qualified name of the class or function the pickle named
    and swallows construction arguments and state without running any code.

    Args:
        *args: Positional construction arguments from the pickle (kept).
        **kwargs: Keyword construction arguments from the pickle (kept).
    """

    qualified_name = '<unknown>'

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.kwargs[key] = value

    def append(self, value: Any) -> None:
        self.args = self.args + (value, )

    def extend(self, values: Any) -> None:
        self.args = self.args + tuple(values)

    def __repr__(self) -> str:
        return f'<opaque {self.qualified_name}>'


def _opaque_class(qualified_name: str) -> type:
    return type('Opaque', (OpaqueObject, ), {'qualified_name': qualified_name})


def _restricted_pickle_module(replaced: List[str]) -> ModuleType:
    """A pickle module whose unpickler never imports non-allow-listed names."""
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()
    allowed.update({
        'collections.OrderedDict': OrderedDict,
        'torch._utils._rebuild_tensor_v2': torch._utils._rebuild_tensor_v2,
        'torch._utils._rebuild_parameter': torch._utils._rebuild_parameter,
    })

    class RestrictedUnpickler(pickle.Unpickler):

        def find_class(self, module: str, name: str) -> Any:
            qualified = f'{module}.{name}'
            if qualified in allowed:
                return allowed[qualified]
            if module == 'torch' and name.endswith('Storage'):
                return getattr(torch, name)
            if qualified not in replaced:
                replaced.append(qualified)
            return _opaque_class(qualified)

    restricted = ModuleType('mmssm_restricted_pickle')
    restricted.Unpickler = RestrictedUnpickler
    restricted.load = pickle.load
    restricted.__name__ = 'mmssm_restricted_pickle'
    return restricted


def safe_load(path: Union[str, Path], map_location: str = 'cpu') -> Any:
    """Load a checkpoint without executing pickled code.

    Args:
        path: The checkpoint file (``.pth``, ``.ckpt``, ``.pt``).
        map_location: Where tensors are placed.

    Returns:
        The unpickled object: tensors and plain containers, with every object
        of a non-allow-listed class replaced by an :class:`OpaqueObject`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is truncated, corrupted or not a
            PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f'checkpoint file not found: {path} (expected a PyTorch '
            'checkpoint written by torch.save)')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as strict_error:
        if 'global' not in str(strict_error).lower():
            raise CheckpointError(
                f'checkpoint {path} is corrupted or not a PyTorch checkpoint: '
                f'{strict_error}') from strict_error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError) as error:
        raise CheckpointError(
            f'checkpoint {path} is truncated, corrupted or not a PyTorch '
            f'checkpoint ({type(error).__name__}: {error})') from error
    replaced: List[str] = []
    try:
        obj = torch.load(
            path,
            map_location=map_location,
            weights_only=False,
            pickle_module=_restricted_pickle_module(replaced))
    except Exception as error:  # any failure here means an unusable file
        raise CheckpointError(
            f'checkpoint {path} could not be read with the restricted '
            f'unpickler ({type(error).__name__}: {error})') from error
    if replaced:
        from mmengine.logging import print_log
        print_log(
            f'{path}: objects of these classes were not unpickled (no code '
            f'was run; they are not weights): {", ".join(sorted(replaced))}',
            logger='current')
    return obj


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def find_state_dict(obj: Any, source: str = 'checkpoint') -> StateDict:
    """Find the weights inside a loaded checkpoint.

    Args:
        obj: What :func:`safe_load` returned.
        source: How to name the checkpoint in error messages.

    Returns:
        A flat ``{name: tensor}`` dict. A ``module.`` prefix that every key
        carries (DistributedDataParallel) is removed.

    Raises:
        CheckpointError: If no state dict is found, or it holds objects that
            are not tensors.
    """
    candidate = obj
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                candidate = obj[key]
                break
    has_tensors = isinstance(candidate, Mapping) and any(
        isinstance(v, torch.Tensor) for v in candidate.values())
    if not has_tensors:
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj)
        raise CheckpointError(
            f'{source} holds no state dict: expected a dict of tensors or one '
            f'under {STATE_DICT_KEYS}, found {keys}')
    not_tensors = [
        f'{k} ({type(v).__name__})' for k, v in candidate.items()
        if not isinstance(v, torch.Tensor)
    ]
    if not_tensors:
        raise CheckpointError(
            f'{source}: the state dict holds entries that are not tensors: '
            f'{not_tensors[:10]}')
    state_dict = OrderedDict(candidate)
    if all(k.startswith('module.') for k in state_dict):
        state_dict = OrderedDict(
            (k[len('module.'):], v) for k, v in state_dict.items())
    return state_dict


@dataclass
class LoadReport:
    """What matched and what did not when a state dict was loaded.

    Args:
        loaded: Keys copied into the module.
        missing: Module keys the state dict did not provide.
        unexpected: State-dict keys the module does not have.
        shape_mismatched: ``(key, checkpoint shape, module shape)`` triples.
        fresh: Missing keys that the module declares as freshly initialised
            when loading a checkpoint of another task (e.g. output norms).
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatched: List[Tuple[str, tuple, tuple]] = field(
        default_factory=list)
    fresh: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every module key was loaded or is declared fresh."""
        return not self.missing and not self.shape_mismatched

    def __str__(self) -> str:
        lines = [f'loaded {len(self.loaded)} tensors']
        if self.fresh:
            lines.append(f'freshly initialised (not in the checkpoint, '
                         f'expected): {self.fresh}')
        if self.missing:
            lines.append(f'MISSING from the checkpoint: {self.missing}')
        if self.shape_mismatched:
            lines.append('SHAPE MISMATCH (key, checkpoint, model): '
                         f'{self.shape_mismatched}')
        if self.unexpected:
            lines.append(f'UNEXPECTED (in the checkpoint, not in the model): '
                         f'{self.unexpected}')
        return '\n'.join(lines)


def _matches_any(key: str, patterns: Tuple[str, ...]) -> bool:
    from fnmatch import fnmatchcase
    return any(fnmatchcase(key, pattern) for pattern in patterns)


def load_state_dict_with_report(module: nn.Module,
                                state_dict: Mapping[str, torch.Tensor],
                                allow_partial: bool = False,
                                fresh_patterns: Tuple[str, ...] = (),
                                source: str = 'checkpoint') -> LoadReport:
    """Load a state dict and report every key that did not match.

    Nothing is copied unless the load is acceptable, so a failed load leaves
    the module untouched.

    Args:
        module: The module to load into.
        state_dict: Weights named as ``module.state_dict()`` names them.
        allow_partial: Load what matches even if module keys stay missing or
            shapes differ (the report still lists them).
        fresh_patterns: ``fnmatch`` patterns of module keys that may be absent
            (parameters that the checkpoint's task does not have).
        source: How to name the checkpoint in messages.

    Returns:
        The :class:`LoadReport`.

    Raises:
        CheckpointError: If keys are missing or mismatched and
            ``allow_partial`` is False.
    """
    own = module.state_dict()
    report = LoadReport()
    to_load = OrderedDict()
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatched.append(
                (key, tuple(value.shape), tuple(own[key].shape)))
        else:
            to_load[key] = value
    for key in own:
        if key not in state_dict:
            if _matches_any(key, fresh_patterns):
                report.fresh.append(key)
            else:
                report.missing.append(key)
    if not report.ok and not allow_partial:
        raise CheckpointError(
            f'{source} does not fit {type(module).__name__} (pass '
            f"init_cfg['allow_partial']=True to load what matches):\n"
            f'{report}')
    module.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    return report
