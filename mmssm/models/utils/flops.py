"""FLOP counting of mmssm's scan ops under mmengine's jit-trace analysis.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (fvcore's counter) traces
the model with ``torch.jit`` and counts FLOPs per graph node with a handle
keyed on the node's kind. mmssm's scan ops are Python functions: traced as
they are, they dissolve into hundreds of elementwise nodes (uncounted) and the
chunked scan's small matmuls (counted, but meaningless as a cost of the
recurrence). :func:`traced_scan_ops` makes every scan op call ONE node:

* Every public scan op validates its arguments and then calls
  :func:`mmssm.ops.dispatch.run_op` (the single point that picks the compiled
  CUDA or the PyTorch implementation). Inside the context manager, the
  ``run_op`` name of every ``mmssm.ops`` module refers to a wrapper that runs
  the op through a ``torch.autograd.Function`` subclass named after it
  (:class:`SelectiveScanOp`, :class:`CrossSelectiveScanOp`,
  :class:`V2MCornerScanOp`, :class:`WavefrontScan2dOp`; Vim's fused causal
  convolution :class:`CausalConv1dOp` too, counted like a conv layer). The jit tracer
  records an autograd Function as one ``prim::PythonOp.<ClassName>`` node and
  puts the ops it runs into that node's subgraph, which the analyzer does not
  visit. This works for both backends (the compiled op runs inside the
  Function) and needs nothing from the backbones.
* The wrapper computes the call's FLOPs from its actual arguments (shapes and
  which optional arguments are given) and passes them to the Function as a
  non-tensor argument, which the trace keeps as the node's scalar argument;
  the handles in :data:`SCAN_FLOP_HANDLES` read it back.
* The Function's backward recomputes the op under autograd, so the context
  manager changes no result or gradient.
* A FLOP count needs the scans' output shapes, not their values: with
  ``run_scans=False`` every scan returns zeros of its output's shape and dtype
  instead of running (the PyTorch scans dominate a CPU forward pass by far),
  which is exact for models whose control flow does not depend on values.

Counting rule (the authors' fvcore convention: one multiply-add of a
linear or conv layer = one FLOP, norms 4-5 per element, elementwise
activations free). A selective scan of batch B, length L, D channels and
state size N costs ``9·B·L·D·N`` (Mamba's count: discretisation, state update
and output contraction per state element, state-spaces/mamba issue 110),
plus ``B·L·D`` for the D skip and ``B·L·D`` for the ``silu(z)`` gate when
given; grouped or constant B/C change nothing. VMamba's authors count their
four-route scan as one scan with ``4·D`` channels, hence:

* ``selective_scan``: ``9·B·L·D·N + B·L·D·[D given] + B·L·D·[z given]``.
* ``cross_selective_scan``: four scans of ``H·W`` steps, i.e. a scan with
  ``4·D`` channels, ``9·B·HW·4D·N + B·HW·4D·[D given]``.
* ``v2m_corner_scan`` (one pass, rows or columns): ``K`` scans (one per
  corner) along every line, i.e. ``B·H·W`` steps with ``K·D`` channels,
  ``9·B·HW·KD·N + B·HW·KD·([D given] + [z given])``. V2M's 2D scan is two
  passes, so it is counted twice, as the released code runs it.
* ``wavefront_scan_2d``: every pixel takes one selective-scan step per
  neighbour (top and left, each with its own gate and input), so
  ``2·9·B·HW·E·N + B·HW·E·[D given]``.

Tracing needs models that accept traced sizes: under ``torch.jit`` tracing
``x.shape[i]`` is a 0-dim tensor, not an int, so a model must not reject
sizes that are not ``int`` (``int(size)`` works in both cases).

The module also builds the models that ``tools/analysis/get_flops.py``,
``tools/benchmark.py`` and ``tools/analysis/visualize_erf.py`` measure
(:func:`build_analysis_model`, :func:`analysis_inputs`): a config's whole
model or backbone, or ``Type[:arch]`` of a registered backbone.
"""
import contextlib
import inspect
import sys
import threading
from collections import Counter
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Type)

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope
from torch import Tensor, nn

from mmssm.ops import dispatch
from mmssm.registry import MODELS
from mmssm.utils.run_setup import init_config_scope

#: FLOPs per state element and step of a selective scan (Mamba's count).
SCAN_FLOPS_PER_STATE = 9


def selective_scan_flops(batch: int,
                         length: int,
                         dim: int,
                         state_size: int,
                         with_skip: bool = True,
                         with_gate: bool = False) -> int:
    """FLOPs of one selective scan.

    Args:
        batch: Batch size B.
        length: Sequence length L.
        dim: Channels D.
        state_size: State size N.
        with_skip: Whether the D skip ``+ D·u`` is applied.
        with_gate: Whether the output is gated by ``silu(z)``.

    Returns:
        ``9·B·L·D·N + B·L·D·(with_skip + with_gate)``.
    """
    steps = batch * length * dim
    return (SCAN_FLOPS_PER_STATE * steps * state_size +
            steps * (int(with_skip) + int(with_gate)))


def cross_selective_scan_flops(batch: int, height: int, width: int, dim: int,
                               state_size: int, with_skip: bool) -> int:
    """FLOPs of VMamba's four-route scan (four scans over H·W pixels).

    Args:
        batch: Batch size.
        height: Map height.
        width: Map width.
        dim: Channels D of each route.
        state_size: State size N.
        with_skip: Whether the D skip is applied.

    Returns:
        The FLOPs of one scan with ``4·dim`` channels and ``H·W`` steps.
    """
    return selective_scan_flops(batch, height * width, 4 * dim, state_size,
                                with_skip)


def v2m_corner_scan_flops(batch: int, num_corners: int, height: int,
                          width: int, dim: int, state_size: int,
                          with_skip: bool, with_gate: bool) -> int:
    """FLOPs of one pass (rows or columns) of V2M's corner scan.

    Args:
        batch: Batch size.
        num_corners: Corners K scanned in the pass.
        height: Map height.
        width: Map width.
        dim: Channels D of each corner.
        state_size: State size N.
        with_skip: Whether the D skip is applied.
        with_gate: Whether the output is gated by ``silu(z)``.

    Returns:
        The FLOPs of one scan with ``K·dim`` channels over all ``H·W``
        pixels (every line of the pass, one step per pixel).
    """
    return selective_scan_flops(batch, height * width, num_corners * dim,
                                state_size, with_skip, with_gate)


def wavefront_scan_2d_flops(batch: int, height: int, width: int, dim: int,
                            state_size: int, with_skip: bool) -> int:
    """FLOPs of Mamba2D's wavefront scan (one scan step per neighbour).

    Args:
        batch: Batch size.
        height: Map height.
        width: Map width.
        dim: Channels E.
        state_size: State size N.
        with_skip: Whether the D skip is applied.

    Returns:
        ``2·9·B·H·W·E·N + B·H·W·E·with_skip``.
    """
    pixels = batch * height * width * dim
    return (2 * SCAN_FLOPS_PER_STATE * pixels * state_size +
            pixels * int(with_skip))


def _sizes(tensor: Tensor) -> Tuple[int, ...]:
    # Under tracing, sizes may come back as traced tensors: make them ints.
    return tuple(int(size) for size in tensor.shape)


def _selective_scan_call_flops(args: Dict[str, Any]) -> int:
    batch, dim, length = _sizes(args['u'])
    return selective_scan_flops(batch, length, dim, _sizes(args['A'])[1],
                                args['D'] is not None, args['z'] is not None)


def _cross_selective_scan_call_flops(args: Dict[str, Any]) -> int:
    batch, dim, height, width = _sizes(args['u'])
    return cross_selective_scan_flops(batch, height, width, dim,
                                      _sizes(args['A'])[1], args['D']
                                      is not None)


def _v2m_corner_scan_call_flops(args: Dict[str, Any]) -> int:
    batch, corners, dim, height, width = _sizes(args['delta'])
    return v2m_corner_scan_flops(batch, corners, height, width, dim,
                                 _sizes(args['A'])[1], args['D'] is not None,
                                 args['z'] is not None)


def _causal_conv1d_call_flops(args: Dict[str, Any]) -> int:
    # One multiply-add per tap and output, as the convention counts convs.
    batch, channels, length = _sizes(args['x'])
    return batch * channels * length * _sizes(args['weight'])[-1]


def _wavefront_scan_2d_call_flops(args: Dict[str, Any]) -> int:
    batch, height, width, dim = _sizes(args['x'])
    return wavefront_scan_2d_flops(batch, height, width, dim,
                                   _sizes(args['A_t'])[1], args['D']
                                   is not None)


def _selective_scan_zeros(args: Dict[str, Any]) -> Any:
    u = args['u']
    y = torch.zeros_like(u)
    if not args['return_last_state']:
        return y
    batch, dim, _ = u.shape
    state_dtype = (torch.float64 if any(
        isinstance(value, Tensor) and value.dtype == torch.float64
        for value in args.values()) else torch.float32)
    return y, u.new_zeros(batch, dim, args['A'].shape[1], dtype=state_dtype)


def _v2m_corner_scan_zeros(args: Dict[str, Any]) -> Tensor:
    delta = args['delta']
    if args['merge_corners']:
        # The corners' sum, (batch, D, H, W) in the accumulation dtype.
        batch, _, dim, height, width = delta.shape
        return delta.new_zeros(
            (batch, dim, height, width),
            dtype=torch.promote_types(args['u'].dtype, torch.float32))
    return delta.new_zeros(delta.shape, dtype=args['u'].dtype)


class _ScanCall:
    """One scan-op call as the traced Function sees it.

    Holds everything that is not a tensor (the non-tensor arguments, the
    implementation, the FLOP count), so the trace keeps it as the node's
    scalar argument while the tensors become the node's inputs.

    Args:
        op_name: The op's name in :data:`mmssm.ops.dispatch.DISPATCHED_OPS`.
        run: The original ``run_op``.
        pytorch_impl: The op's PyTorch implementation.
        args: The op's positional arguments.
        kwargs: The op's keyword arguments.
        flops: FLOPs of the call.
        zeros: Where given, the call returns ``zeros(arguments)`` (named
            arguments of the call) instead of running the op.
    """

    def __init__(self,
                 op_name: str,
                 run: Callable,
                 pytorch_impl: Callable,
                 args: Tuple[Any, ...],
                 kwargs: Dict[str, Any],
                 flops: int,
                 zeros: Optional[Callable[[Dict[str, Any]], Any]] = None
                 ) -> None:
        self.op_name = op_name
        self.flops = flops
        self._zeros = zeros
        self._run = run
        self._pytorch_impl = pytorch_impl
        flat = list(args) + list(kwargs.values())
        self._tensor_slots = [
            i for i, value in enumerate(flat) if isinstance(value, Tensor)
        ]
        self._template = [
            None if isinstance(value, Tensor) else value for value in flat
        ]
        self._num_args = len(args)
        self._kwarg_names = list(kwargs)

    def tensors(self, args: Tuple[Any, ...],
                kwargs: Dict[str, Any]) -> List[Tensor]:
        """The call's tensor arguments, in order."""
        flat = list(args) + list(kwargs.values())
        return [flat[i] for i in self._tensor_slots]

    def __call__(self, tensors: Sequence[Tensor]) -> Any:
        """Run the op on ``tensors`` in place of the call's tensors."""
        flat = list(self._template)
        for slot, tensor in zip(self._tensor_slots, tensors):
            flat[slot] = tensor
        args = flat[:self._num_args]
        kwargs = dict(zip(self._kwarg_names, flat[self._num_args:]))
        if self._zeros is not None:
            bound = inspect.signature(self._pytorch_impl).bind(*args, **kwargs)
            bound.apply_defaults()
            return self._zeros(bound.arguments)
        return self._run(self.op_name, self._pytorch_impl, *args, **kwargs)

    def __repr__(self) -> str:
        return f'{self.op_name}(flops={self.flops})'


class _TracedScanOp(torch.autograd.Function):
    """Runs one scan-op call as a single traced node (see module doc)."""

    @staticmethod
    def forward(ctx: Any, call: _ScanCall, *tensors: Tensor) -> Any:
        ctx.call = call
        ctx.save_for_backward(*tensors)
        return call(tensors)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> Tuple[Any, ...]:
        # Recompute the op under autograd; its own graph gives the gradients.
        inputs = [t.detach().requires_grad_(needs)
                  for t, needs in zip(ctx.saved_tensors,
                                      ctx.needs_input_grad[1:])]
        with torch.enable_grad():
            outputs = ctx.call(inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs, )
        pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs)
                 if out.requires_grad and grad is not None]
        wanted = [t for t in inputs if t.requires_grad]
        if not pairs or not wanted:
            # No output depends on an input that needs a gradient.
            return (None, ) * (1 + len(inputs))
        grads = iter(
            torch.autograd.grad([out for out, _ in pairs], wanted,
                                [grad for _, grad in pairs],
                                allow_unused=True))
        return (None, ) + tuple(
            next(grads) if t.requires_grad else None for t in inputs)


class SelectiveScanOp(_TracedScanOp):
    """Traced node of :func:`mmssm.ops.selective_scan`."""


class CrossSelectiveScanOp(_TracedScanOp):
    """Traced node of :func:`mmssm.ops.cross_selective_scan`."""


class V2MCornerScanOp(_TracedScanOp):
    """Traced node of :func:`mmssm.ops.v2m_corner_scan`."""


class WavefrontScan2dOp(_TracedScanOp):
    """Traced node of :func:`mmssm.ops.wavefront_scan_2d`."""


class CausalConv1dOp(_TracedScanOp):
    """Traced node of :func:`mmssm.ops.causal_conv1d`."""


_ArgsFn = Callable[[Dict[str, Any]], Any]

#: Per dispatched op: its traced Function, the FLOPs of a call and zeros of
#: the call's output (functions of the call's named arguments).
_SCAN_OPS: Dict[str, Tuple[Type[_TracedScanOp], _ArgsFn, _ArgsFn]] = {
    'selective_scan':
    (SelectiveScanOp, _selective_scan_call_flops, _selective_scan_zeros),
    'cross_selective_scan': (CrossSelectiveScanOp,
                             _cross_selective_scan_call_flops,
                             lambda args: torch.zeros_like(args['u'])),
    'v2m_corner_scan':
    (V2MCornerScanOp, _v2m_corner_scan_call_flops, _v2m_corner_scan_zeros),
    'wavefront_scan_2d': (WavefrontScan2dOp, _wavefront_scan_2d_call_flops,
                          lambda args: torch.zeros_like(args['x'])),
    'causal_conv1d': (CausalConv1dOp, _causal_conv1d_call_flops,
                      lambda args: torch.zeros_like(args['x'])),
}

#: Ops traced as their PyTorch implementation: ``aten::layer_norm`` and
#: ``aten::rms_norm`` nodes, which the analyzer counts like ``nn.LayerNorm``.
_ATEN_TRACED_OPS = ('layer_norm', 'rms_norm')

_inside_scan_op = threading.local()


def _make_traced_run_op(run: Callable, run_scans: bool) -> Callable:
    """A ``run_op`` that runs every scan op as one traced Function node.

    Args:
        run: The original ``run_op``.
        run_scans: Run the ops; False returns zeros of their outputs.

    Returns:
        A function with ``run_op``'s signature.
    """

    def traced_run_op(op_name: str, pytorch_impl: Callable, *args: Any,
                      **kwargs: Any) -> Any:
        # An op implemented with another op (V2M's pass runs
        # selective_scan) is one node: its inner calls run unwrapped.
        if getattr(_inside_scan_op, 'active', False):
            return run(op_name, pytorch_impl, *args, **kwargs)
        if op_name in _ATEN_TRACED_OPS:
            return pytorch_impl(*args, **kwargs)
        if op_name not in _SCAN_OPS:
            raise KeyError(f'no FLOP rule for scan op {op_name!r}; known ops: '
                           f'{sorted(_SCAN_OPS)}')
        function, count, zeros = _SCAN_OPS[op_name]
        bound = inspect.signature(pytorch_impl).bind(*args, **kwargs)
        bound.apply_defaults()
        call = _ScanCall(op_name, run, pytorch_impl, args, kwargs,
                         count(bound.arguments),
                         None if run_scans else zeros)
        _inside_scan_op.active = True
        try:
            return function.apply(call, *call.tensors(args, kwargs))
        finally:
            _inside_scan_op.active = False

    return traced_run_op


@contextlib.contextmanager
def traced_scan_ops(run_scans: bool = True) -> Iterator[None]:
    """Within the block, every mmssm scan op call is one traced node.

    Rebinds ``run_op`` in every imported ``mmssm.ops`` module that uses
    :func:`mmssm.ops.dispatch.run_op` (see the module docstring) and restores
    it on exit. With ``run_scans`` results and gradients are unchanged.

    Args:
        run_scans: Run the scan ops. False makes every scan return zeros of
            its output's shape (for shape-only analyses such as FLOPs).

    Yields:
        None.
    """
    run = dispatch.run_op
    traced = _make_traced_run_op(run, run_scans)
    patched = []
    for name, module in list(sys.modules.items()):
        if (name.startswith('mmssm.ops.') and module is not None
                and getattr(module, 'run_op', None) is run):
            module.run_op = traced
            patched.append(module)
    if not patched:
        raise RuntimeError('no mmssm.ops module uses mmssm.ops.dispatch.'
                           'run_op: nothing to trace')
    try:
        yield
    finally:
        for module in patched:
            module.run_op = run


def scan_op_flop_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    """FlopAnalyzer handle of a traced scan-op node.

    Args:
        inputs: The node's input values (the op's tensors).
        outputs: The node's output values.

    Returns:
        ``Counter({op_name: flops})`` of the call.
    """
    node = outputs[0].node()
    calls = [arg for arg in node.scalar_args() if isinstance(arg, _ScanCall)]
    if len(calls) != 1:
        raise RuntimeError(f'traced scan node {node.kind()} carries '
                           f'{len(calls)} scan calls; expected 1')
    return Counter({calls[0].op_name: calls[0].flops})


#: Handles of the traced scan nodes for ``FlopAnalyzer.set_op_handle``.
SCAN_FLOP_HANDLES: Dict[str, Callable] = {
    f'prim::PythonOp.{function.__name__}': scan_op_flop_handle
    for function, _, _ in _SCAN_OPS.values()
}

def attention_flop_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """FlopAnalyzer handle of ``aten::scaled_dot_product_attention``.

    Counts the two matrix products as fvcore counts matmuls (one FLOP per
    multiply-add): ``Q·K^T`` and ``softmax·V``; the softmax is free, like
    every elementwise op.

    Args:
        inputs: The node's inputs (query, key, value, ...).
        outputs: The node's outputs.

    Returns:
        ``prod(batch dims) · Lq · Lk · (E + Ev)``.
    """
    query, key, value = (get_shape(v) for v in inputs[:3])
    if query is None or key is None or value is None:
        raise ValueError('scaled_dot_product_attention: the trace lost the '
                         'shapes of query/key/value')
    batch = 1
    for size in query[:-2]:
        batch *= size
    query_length, key_length = query[-2], key[-2]
    return batch * query_length * key_length * (query[-1] + value[-1])


#: Handles of ops that mmengine's defaults leave uncounted but the mmssm
#: models use for matrix products.
MATMUL_LIKE_FLOP_HANDLES: Dict[str, Callable] = {
    'aten::scaled_dot_product_attention': attention_flop_handle,
}

#: Elementwise ops that the authors' fvcore setup marks free rather than
#: unsupported (VMamba's ``flops``); listed so they do not raise warnings.
FREE_OPS: Tuple[str, ...] = ('aten::silu', 'aten::neg', 'aten::exp',
                             'aten::flip')


def analyze_flops(model: nn.Module,
                  inputs: Tuple[Any, ...],
                  run_scans: bool = False) -> FlopAnalyzer:
    """Trace ``model`` on ``inputs`` and count its FLOPs, scan ops included.

    Args:
        model: The model (its ``forward`` takes ``*inputs``).
        inputs: The forward's positional arguments.
        run_scans: Run the scan ops during the trace; by default they return
            zeros of their outputs' shapes (see the module docstring), which
            gives the same count for models whose control flow does not
            depend on values.

    Returns:
        The :class:`FlopAnalyzer`, already evaluated (``total()``,
        ``by_module()``, ``by_operator()``, ``unsupported_ops()`` and the
        table helpers of ``mmengine.analysis`` read its cached counts).
    """
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**SCAN_FLOP_HANDLES)
    analyzer.set_op_handle(**MATMUL_LIKE_FLOP_HANDLES)
    analyzer.set_op_handle(**{op: None for op in FREE_OPS})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with traced_scan_ops(run_scans), torch.no_grad():
        analyzer.total()
    return analyzer


class ImageClassifierProbe(nn.Module):
    """A backbone with global average pooling and a linear classifier.

    Gives a bare backbone the classification head the published FLOP counts
    include (the last output map pooled, one linear layer).

    Args:
        backbone: An mmssm backbone (``out_channels`` names its outputs).
        num_classes: Classes of the linear layer.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of NCHW images."""
        return self.head(self.backbone(x)[-1].mean(dim=(2, 3)))


class _WithDataSamples(nn.Module):
    """Calls a downstream model's ``tensor`` mode with fixed data samples.

    The jit tracer takes tensors only, so the data samples an mmdet detector
    needs are bound here.

    Args:
        model: The detector.
        data_samples: Its data samples for the traced batch.
    """

    def __init__(self, model: nn.Module, data_samples: List[Any]) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x: Tensor) -> Any:
        """The model's raw outputs for the batch ``x``."""
        return self.model(x, self.data_samples, mode='tensor')


def parse_model_spec(spec: str) -> Tuple[str, Optional[str]]:
    """Splits an ``ARCH`` spec ``Type[:arch]`` of a registered backbone.

    Args:
        spec: E.g. ``'VMamba:tiny'`` or ``'mmssm.Vim:small'``.

    Returns:
        The registry type (with the ``mmssm.`` scope) and the arch name, or
        None to use the backbone's default arch.
    """
    type_name, _, arch = spec.partition(':')
    if not type_name or (':' in spec and not arch):
        raise ValueError(f'model spec must be a config file (*.py) or '
                         f'Type[:arch] of a registered mmssm backbone, got '
                         f'{spec!r}')
    if not type_name.startswith('mmssm.'):
        type_name = f'mmssm.{type_name}'
    return type_name, arch or None


def build_analysis_model(spec: str,
                         num_classes: Optional[int] = 1000,
                         backbone_only: bool = False,
                         backbone_kwargs: Optional[dict] = None
                         ) -> nn.Module:
    """Builds the model that the analysis tools measure.

    Args:
        spec: A config file (``*.py``; its ``model`` is built, mmpretrain,
            mmdet or mmseg) or ``Type[:arch]`` of a registered mmssm backbone
            (see :func:`parse_model_spec`).
        num_classes: For an ``ARCH`` spec, wrap the backbone in an
            :class:`ImageClassifierProbe` with this many classes; None keeps
            the bare backbone.
        backbone_only: For a config, build ``model.backbone`` only.
        backbone_kwargs: Extra keyword arguments of the backbone (both spec
            kinds), e.g. ``dict(out_indices=(3,))``.

    Returns:
        The model in eval mode, on the CPU, randomly initialised (building
        does not run ``init_weights``, so no checkpoint is read).
    """
    # Registers the backbones (imported here: mmssm.models imports this
    # package).
    import mmssm.models  # noqa: F401
    backbone_kwargs = dict(backbone_kwargs or {})
    if spec.endswith('.py'):
        cfg = Config.fromfile(spec)
        model_cfg = cfg.model
        model_cfg.backbone.update(backbone_kwargs)
        # The config's scope only while building: the caller's stays.
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
            init_config_scope(cfg)
            model = ROOT_MODELS.build(
                model_cfg.backbone if backbone_only else model_cfg)
    else:
        type_name, arch = parse_model_spec(spec)
        if type_name not in MODELS:
            raise KeyError(f'{type_name} is not a registered mmssm backbone; '
                           f'registered: {sorted(MODELS.module_dict)}')
        cfg = dict(type=type_name, **backbone_kwargs)
        if arch is not None:
            cfg['arch'] = arch
        model = MODELS.build(cfg)
        if num_classes is not None:
            model = ImageClassifierProbe(model, num_classes)
    return model.eval()


def analysis_inputs(model: nn.Module,
                    height: int,
                    width: int,
                    batch_size: int = 1
                    ) -> Tuple[nn.Module, Tuple[Tensor, ...]]:
    """The traceable model and its inputs for a batch of random images.

    mmdet detectors get their data samples bound (see
    :class:`_WithDataSamples`); every other model takes the image batch.

    Args:
        model: A model from :func:`build_analysis_model`.
        height: Image height.
        width: Image width.
        batch_size: Images in the batch.

    Returns:
        The module to run and its positional inputs (on the model's device).
    """
    if height < 1 or width < 1 or batch_size < 1:
        raise ValueError('image size and batch_size must be positive, got '
                         f'{height}x{width}, batch_size={batch_size}')
    device = next(model.parameters()).device
    images = torch.randn(batch_size, 3, height, width, device=device)
    if type(model).__module__.startswith('mmdet.'):
        from mmdet.structures import DetDataSample
        shape = (height, width)
        samples = [
            DetDataSample(
                metainfo=dict(
                    img_shape=shape,
                    ori_shape=shape,
                    pad_shape=shape,
                    batch_input_shape=shape,
                    scale_factor=(1.0, 1.0))) for _ in range(batch_size)
        ]
        return _WithDataSamples(model, samples), (images, )
    return model, (images, )
