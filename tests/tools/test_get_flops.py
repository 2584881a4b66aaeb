"""Tests of mmssm's scan-op FLOP handles and tools/analysis/get_flops.py."""
import importlib
from pathlib import Path

import pytest
import torch
from mmengine.registry import DefaultScope
from torch import nn

from mmssm.models.utils.flops import (analyze_flops, parse_model_spec,
                                      selective_scan_flops, traced_scan_ops)
from mmssm.ops import dispatch
from mmssm.ops.cross_scan import cross_selective_scan
from mmssm.ops.selective_scan import selective_scan
from mmssm.ops.v2m_scan import v2m_corner_scan
from mmssm.ops.wavefront_scan import wavefront_scan_2d
from mmssm.registry import MODELS
from tool_runs import load_tool

TOOL = 'analysis/get_flops'


class _OpModel(nn.Module):
    """Calls one scan op on fixed tensors (plus a counted linear layer)."""

    def __init__(self, op, kwargs: dict) -> None:
        super().__init__()
        self.op = op
        self.kwargs = kwargs
        self.linear = nn.Linear(3, 5, bias=False)

    def forward(self, x: torch.Tensor):
        out = self.op(x, **self.kwargs)
        return self.linear(out.new_ones(2, 3)).sum() + out.sum()


def _selective_scan_case(with_skip: bool, with_gate: bool, grouped: bool):
    batch, dim, length, state = 2, 6, 7, 3
    u = torch.randn(batch, dim, length)
    matrix_shape = ((batch, 2, state, length) if grouped else
                    (batch, state, length))
    kwargs = dict(
        delta=torch.rand(batch, dim, length),
        A=-torch.rand(dim, state),
        B=torch.randn(matrix_shape),
        C=torch.randn(matrix_shape),
        D=torch.randn(dim) if with_skip else None,
        z=torch.randn(batch, dim, length) if with_gate else None,
        delta_bias=torch.randn(dim),
        delta_softplus=True)
    steps = batch * length * dim
    expected = 9 * steps * state + steps * (with_skip + with_gate)
    return u, kwargs, expected


@pytest.mark.parametrize('with_skip,with_gate,grouped',
                         [(True, True, False), (False, False, True),
                          (True, False, False), (False, True, True)])
def test_selective_scan_handle(with_skip, with_gate, grouped):
    u, kwargs, expected = _selective_scan_case(with_skip, with_gate, grouped)
    model = _OpModel(selective_scan, kwargs)
    analyzer = analyze_flops(model, (u, ))
    # 2 x 3 x 5 multiply-adds of the linear layer.
    assert analyzer.total() == expected + 30
    assert analyzer.by_operator()['selective_scan'] == expected


def test_cross_selective_scan_handle():
    batch, dim, height, width, state = 1, 3, 4, 5, 2
    kwargs = dict(
        delta=torch.rand(batch, 4, dim, height, width),
        A=-torch.rand(4 * dim, state),
        B=torch.randn(batch, 4, state, height, width),
        C=torch.randn(batch, 4, state, height, width),
        D=torch.randn(4 * dim))
    model = _OpModel(cross_selective_scan, kwargs)
    analyzer = analyze_flops(model, (torch.randn(batch, dim, height,
                                                 width), ))
    steps = batch * height * width * 4 * dim
    assert analyzer.by_operator()['cross_selective_scan'] == (9 * steps *
                                                              state + steps)


@pytest.mark.parametrize('run_scans', [True, False])
def test_v2m_corner_scan_counts_once(run_scans):
    """The pass runs selective_scan inside: it must still be one node."""
    batch, corners, dim, height, width, state = 2, 3, 2, 3, 4, 5
    kwargs = dict(
        delta=torch.rand(batch, corners, dim, height, width),
        A=-torch.rand(corners * dim, state),
        B=torch.randn(batch, corners, state, height, width),
        C=torch.ones(corners * dim, state),
        z=torch.randn(batch, dim, height, width),
        axis='col',
        corners=('tl', 'br', 'bl'))
    model = _OpModel(v2m_corner_scan, kwargs)
    analyzer = analyze_flops(
        model, (torch.randn(batch, dim, height, width), ), run_scans)
    steps = batch * height * width * corners * dim
    assert dict(analyzer.by_operator()) == {
        'v2m_corner_scan': 9 * steps * state + steps,
        'linear': 30
    }


def test_wavefront_scan_handle():
    batch, height, width, dim, state = 1, 3, 4, 5, 2
    grid = (batch, height, width)
    kwargs = dict(
        delta_t=torch.rand(*grid, dim),
        delta_l=torch.rand(*grid, dim),
        A_t=-torch.rand(dim, state),
        A_l=-torch.rand(dim, state),
        B_t=torch.randn(*grid, state),
        B_l=torch.randn(*grid, state),
        C=torch.randn(*grid, state),
        D=torch.randn(dim),
        origin='br')
    model = _OpModel(wavefront_scan_2d, kwargs)
    analyzer = analyze_flops(model, (torch.randn(*grid, dim), ))
    pixels = batch * height * width * dim
    assert analyzer.by_operator()['wavefront_scan_2d'] == (
        2 * 9 * pixels * state + pixels)


def test_attention_handle():

    class Attention(nn.Module):

        def forward(self, q, k, v):
            return nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4),
               torch.randn(2, 3, 7, 6))
    analyzer = analyze_flops(Attention(), (q, k, v))
    assert analyzer.total() == 2 * 3 * 5 * 7 * (4 + 6)


def test_traced_ops_keep_values_and_gradients():
    """Inside the context the op runs as one Function: same y and grads."""
    u, kwargs, _ = _selective_scan_case(True, True, False)
    inputs = {'u': u, **kwargs}
    inputs = {
        k: v.double().requires_grad_() if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }
    tensors = [v for v in inputs.values() if isinstance(v, torch.Tensor)]

    def run():
        y, state = selective_scan(**inputs, return_last_state=True)
        generator = torch.Generator().manual_seed(0)
        weights = torch.randn(y.shape, generator=generator, dtype=y.dtype)
        loss = (y * weights).sum() + state.square().sum()
        return (y, state), torch.autograd.grad(loss, tensors)

    (y_ref, state_ref), grads_ref = run()
    with traced_scan_ops():
        (y, state), grads = run()
    # The op ran as one Function, whose backward recomputed it.
    assert type(y.grad_fn).__name__ == 'SelectiveScanOpBackward'
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_ref, rtol=1e-12, atol=1e-12)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


def test_traced_ops_restore_run_op():
    scan_module = importlib.import_module('mmssm.ops.selective_scan')
    run_op = dispatch.run_op
    with pytest.raises(RuntimeError, match='boom'):
        with traced_scan_ops():
            assert scan_module.run_op is not run_op
            assert dispatch.run_op is not run_op
            raise RuntimeError('boom')
    assert scan_module.run_op is run_op and dispatch.run_op is run_op


def test_selective_scan_flops_formula():
    assert selective_scan_flops(2, 3, 4, 5) == 9 * 120 + 24
    assert selective_scan_flops(2, 3, 4, 5, False, True) == 9 * 120 + 24
    assert selective_scan_flops(2, 3, 4, 5, False, False) == 9 * 120


def test_parse_model_spec():
    assert parse_model_spec('VMamba:tiny') == ('mmssm.VMamba', 'tiny')
    assert parse_model_spec('mmssm.Vim') == ('mmssm.Vim', None)
    with pytest.raises(ValueError, match='Type\\[:arch\\]'):
        parse_model_spec('VMamba:')


def test_tool_rejects_unknown_backbone():
    with pytest.raises(KeyError, match='not a registered mmssm backbone'):
        load_tool(TOOL).get_flops('NoSuchNet:tiny', max_depth=0)


TINY_VMAMBA = dict(
    type='mmssm.VMamba',
    arch=dict(
        embed_dims=8,
        depths=(1, 1, 1, 1),
        d_state=1,
        ssm_ratio=1.0,
        mlp_ratio=2.0,
        version='v2'),
    out_indices=(3, ))


def _write_classifier_config(tmp_path: Path) -> str:
    config = tmp_path / 'tiny_vmamba_classifier.py'
    config.write_text(
        "default_scope = 'mmpretrain'\n"
        "custom_imports = dict(imports=['mmssm.models'], "
        'allow_failed_imports=False)\n'
        f"model = dict(type='ImageClassifier', backbone={TINY_VMAMBA!r}, "
        "neck=dict(type='GlobalAveragePooling'), "
        "head=dict(type='LinearClsHead', num_classes=10, in_channels=64))\n")
    return str(config)


def test_tool_main_on_config(tmp_path, capsys):
    config = _write_classifier_config(tmp_path)
    tool = load_tool(TOOL)
    scope = DefaultScope.get_current_instance()
    result = tool.main([config, '--shape', '64', '--max-depth', '1'])
    # The config's scope is not left behind.
    assert DefaultScope.get_current_instance() is scope
    out = capsys.readouterr().out
    assert 'Params: ' in out and 'FLOPs: ' in out and '| model' in out
    assert result['by_operator']['cross_selective_scan'] > 0
    assert result['by_operator']['linear'] > 64 * 10
    backbone = tool.get_flops(config, (64, 64), backbone_only=True,
                              max_depth=0)
    # The classifier adds the head's 64 x 10 multiply-adds (and the pool).
    assert 640 <= result['flops'] - backbone['flops'] <= 640 + 64 * 4
    # FLOPs grow with the pixels (stride-32 maps: 2x2 -> 3x2 tokens).
    wider = tool.get_flops(config, (64, 96), backbone_only=True, max_depth=0)
    assert 1.3 < wider['flops'] / backbone['flops'] < 1.55


def _require(type_name: str) -> None:
    if f'mmssm.{type_name}' not in MODELS:
        pytest.fail(f'backbone {type_name} is not registered by mmssm.models')


def _gflops(spec: str, backbone_kwargs: dict = None) -> float:
    _require(spec.split(':')[0])
    result = load_tool(TOOL).get_flops(
        spec, max_depth=0, backbone_kwargs=backbone_kwargs)
    return result['flops'] / 1e9


# The published 224x224 counts that mmssm reproduces within 3 %: VMamba's
# (paper Table 1; equal to the authors' own fvcore count, whose scan handle
# is the rule of mmssm.models.utils.flops).
@pytest.mark.parametrize('spec,published', [
    ('VMamba:tiny', 4.9),
    pytest.param('VMamba:small', 8.7, marks=pytest.mark.slow),
    pytest.param('VMamba:base', 15.4, marks=pytest.mark.slow),
])
def test_published_vmamba_flops(spec, published):
    flops = _gflops(spec)
    assert abs(flops - published) / published < 0.03, flops


PLAIN_CLASSIFIER = dict(out_indices=[-1], pyramid_strides=None)


def _vim_flops_by_rule(embed_dims: int, depth: int = 24) -> float:
    """Vim's count under mmssm's rule, written out (G), 224x224 input.

    Published (LocalMamba's Table, copied by V2M's): Vim-T 1.5 G, Vim-S
    5.1 G. Those come from LocalMamba's analytic count, which takes
    5·L·D·N per scan (not 9) and only one direction's x_proj/dt_proj; with
    that formula the same sizes give 1.475 G / 5.118 G. Under the rule of
    VMamba's authors used here Vim-T/S count 1.823 / 5.912 G (+22 % / +16 %;
    the fused causal convolution counts one multiply-add per tap).
    """
    tokens, inner, state, taps = 197, 2 * embed_dims, 16, 4
    rank = -(-embed_dims // 16)
    per_token = (embed_dims * 2 * inner + inner * embed_dims + 2 *
                 (taps * inner + inner * (rank + 2 * state) + rank * inner +
                  9 * inner * state + 2 * inner))
    patch_embed = 16 * 16 * 3 * embed_dims * 196
    head = embed_dims * 1000
    return (per_token * tokens * depth + patch_embed + head) / 1e9


@pytest.mark.parametrize('spec,embed_dims', [
    ('Vim:tiny', 192),
    pytest.param('Vim:small', 384, marks=pytest.mark.slow),
])
def test_vim_flops_follow_the_rule(spec, embed_dims):
    flops = _gflops(spec, PLAIN_CLASSIFIER)
    assert flops == pytest.approx(_vim_flops_by_rule(embed_dims), rel=1e-6)


# Families whose published counts mmssm cannot reproduce; pinned to catch
# changes. V2M* (pyramid): the authors released no pyramid code; mmssm's
# design (VMamba v2 with the 2D scan, projections of SS2D's size) counts
# 4.96 / 8.87 G against the published 5.4 / 9.6 G (-8.1 % / -7.6 %).
# V2M (plain, 'corrected' layout; the released 'official' one counts 3.76 /
# 10.29 G) counts 3.09 / 8.77 G against 1.9 / 5.9 G: the published figures
# follow no rule that reproduces them from the released code.
@pytest.mark.parametrize('spec,kwargs,pinned', [
    ('V2MPyramid:small', dict(out_indices=[3]), 4.962),
    pytest.param(
        'V2MPyramid:base', dict(out_indices=[3]), 8.867,
        marks=pytest.mark.slow),
    pytest.param(
        'V2M:tiny',
        PLAIN_CLASSIFIER,
        3.085,
        marks=pytest.mark.slow),
    pytest.param(
        'V2M:small',
        PLAIN_CLASSIFIER,
        8.772,
        marks=pytest.mark.slow),
])
def test_pinned_flops(spec, kwargs, pinned):
    assert _gflops(spec, kwargs) == pytest.approx(pinned, rel=0.01)
