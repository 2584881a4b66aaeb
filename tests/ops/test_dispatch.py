"""Tests of mmssm/ops/dispatch.py (CUDA paths simulated on CPU)."""
import warnings
from typing import Any, Callable, List, Optional, Tuple

import pytest
import torch

from mmssm.ops import (backend, compiled_ops_available, cross_selective_scan,
                       selective_scan, wavefront_scan_2d)
from mmssm.ops import dispatch


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that reports a CUDA device, to reach the CUDA branch."""

    @property
    def device(self) -> torch.device:
        return torch.device('cuda', 0)


def fake_cuda(tensor: torch.Tensor) -> FakeCudaTensor:
    return tensor.as_subclass(FakeCudaTensor)


@pytest.fixture
def clean_dispatch(monkeypatch):
    """No env switches, fresh warning memory; yields a compiled-op setter."""
    monkeypatch.delenv(dispatch.FORCE_PYTORCH_ENV, raising=False)
    monkeypatch.delenv(dispatch.REQUIRE_CUDA_ENV, raising=False)
    monkeypatch.setattr(dispatch, '_warned_ops', set())
    calls: List[Tuple[str, tuple]] = []

    def set_compiled(available: bool) -> List[Tuple[str, tuple]]:

        def load(op_name: str) -> Tuple[Optional[Callable], str]:
            if not available:
                return None, 'simulated missing build'

            def compiled(*args: Any, **kwargs: Any) -> str:
                calls.append((op_name, args))
                return 'compiled'

            return compiled, ''

        monkeypatch.setattr(dispatch, '_load_compiled_op', load)
        return calls

    return set_compiled


def pytorch_impl(*args: Any) -> str:
    return 'pytorch'


def test_cpu_input_always_uses_pytorch(clean_dispatch):
    clean_dispatch(True)
    assert dispatch.run_op('selective_scan', pytorch_impl,
                           torch.zeros(1)) == 'pytorch'


def test_cuda_input_uses_compiled_op(clean_dispatch):
    calls = clean_dispatch(True)
    tensor = fake_cuda(torch.zeros(1))
    assert dispatch.run_op('wavefront_scan_2d', pytorch_impl, tensor,
                           3) == 'compiled'
    assert calls[0][0] == 'wavefront_scan_2d' and calls[0][1][1] == 3
    assert backend('wavefront_scan_2d') == 'cuda'


def test_missing_compiled_op_warns_once(clean_dispatch):
    clean_dispatch(False)
    tensor = fake_cuda(torch.zeros(1))
    with pytest.warns(RuntimeWarning, match='cross_selective_scan.*simulated'):
        assert dispatch.run_op('cross_selective_scan', pytorch_impl,
                               tensor) == 'pytorch'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert dispatch.run_op('cross_selective_scan', pytorch_impl,
                               tensor) == 'pytorch'
    assert backend('cross_selective_scan') == 'pytorch'


def test_require_cuda_ops_raises(clean_dispatch, monkeypatch):
    clean_dispatch(False)
    monkeypatch.setenv(dispatch.REQUIRE_CUDA_ENV, '1')
    with pytest.raises(RuntimeError, match='selective_scan.*MMSSM_REQUIRE'):
        dispatch.run_op('selective_scan', pytorch_impl,
                        fake_cuda(torch.zeros(1)))
    # CPU inputs are unaffected by the requirement.
    assert dispatch.run_op('selective_scan', pytorch_impl,
                           torch.zeros(1)) == 'pytorch'


def test_force_pytorch_wins(clean_dispatch, monkeypatch):
    calls = clean_dispatch(True)
    monkeypatch.setenv(dispatch.FORCE_PYTORCH_ENV, '1')
    monkeypatch.setenv(dispatch.REQUIRE_CUDA_ENV, '1')
    assert dispatch.run_op('v2m_corner_scan', pytorch_impl,
                           fake_cuda(torch.zeros(1))) == 'pytorch'
    assert calls == []
    assert backend() == {name: 'pytorch' for name in dispatch.DISPATCHED_OPS}


def test_bad_names_and_env_values(clean_dispatch, monkeypatch):
    clean_dispatch(True)
    with pytest.raises(ValueError, match='op_name must be one of'):
        backend('cross_scan')
    with pytest.raises(ValueError, match='op_name must be one of'):
        dispatch.run_op('scan', pytorch_impl, torch.zeros(1))
    with pytest.raises(TypeError, match='first argument must be a Tensor'):
        dispatch.run_op('selective_scan', pytorch_impl, 3)
    monkeypatch.setenv(dispatch.FORCE_PYTORCH_ENV, 'yes')
    with pytest.raises(ValueError, match='MMSSM_FORCE_PYTORCH_OPS must be'):
        backend('selective_scan')


def test_real_loader_reports_missing_pieces():
    function, reason = dispatch._load_compiled_op('selective_scan')
    assert isinstance(compiled_ops_available(), bool)
    if not compiled_ops_available():
        assert function is None and 'mmssm._ext' in reason
    else:
        assert (function is None) == bool(reason)


def test_public_ops_forward_their_arguments(clean_dispatch):
    calls = clean_dispatch(True)
    batch, dim, state, height, width = 1, 2, 3, 2, 2
    u = fake_cuda(torch.randn(batch, dim, 4))
    A = fake_cuda(-torch.rand(dim, state))
    B = fake_cuda(torch.randn(batch, state, 4))
    assert selective_scan(
        u, u, A, B, B, return_last_state=True, reverse=True) == 'compiled'
    assert calls[-1] == ('selective_scan',
                         (u, u, A, B, B, None, None, None, False, True, True))
    u2d = fake_cuda(torch.randn(batch, dim, height, width))
    delta = fake_cuda(torch.randn(batch, 4, dim, height, width))
    A4 = fake_cuda(-torch.rand(4 * dim, state))
    B4 = fake_cuda(torch.randn(batch, 4, state, height, width))
    assert cross_selective_scan(
        u2d, delta, A4, B4, B4, delta_softplus=True) == 'compiled'
    assert calls[-1] == ('cross_selective_scan',
                         (u2d, delta, A4, B4, B4, None, None, True))
    x = fake_cuda(torch.randn(batch, height, width, dim))
    Bw = fake_cuda(torch.randn(batch, height, width, state))
    assert wavefront_scan_2d(
        x, x, x, A, A, Bw, Bw, Bw, origin='br') == 'compiled'
    assert calls[-1] == ('wavefront_scan_2d', (x, x, x, A, A, Bw, Bw, Bw,
                                               None, None, None, False, 'br'))
