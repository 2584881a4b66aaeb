"""Tests of safe checkpoint loading and the load report."""
import argparse
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from mmssm.models.utils.checkpoint import (CheckpointError, OpaqueObject,
                                           find_state_dict,
                                           load_state_dict_with_report,
                                           safe_load)


class _Marker:
    """A class whose unpickling would run code if the loader executed it."""

    def __reduce__(self):
        return (print, ('pickled code was executed', ))


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def test_safe_load_plain_file(tmp_path):
    state = _tiny().state_dict()
    path = tmp_path / 'plain.pth'
    torch.save({'model': state}, path)
    loaded = find_state_dict(safe_load(path))
    assert list(loaded) == list(state)
    for key in state:
        assert torch.equal(loaded[key], state[key])


def test_safe_load_replaces_foreign_objects_without_running_them(
        tmp_path, capsys):
    state = _tiny().state_dict()
    path = tmp_path / 'official.pth'
    torch.save(
        {
            'model': state,
            'config': argparse.Namespace(lr=0.1),
            'hook': _Marker(),
        }, path)
    loaded = safe_load(path)
    assert 'pickled code was executed' not in capsys.readouterr().out
    assert isinstance(loaded['config'], OpaqueObject)
    assert loaded['config'].qualified_name == 'argparse.Namespace'
    assert isinstance(loaded['hook'], OpaqueObject)
    assert loaded['hook'].qualified_name.endswith('.print')
    assert torch.equal(find_state_dict(loaded)['0.weight'], state['0.weight'])


def test_safe_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        safe_load(tmp_path / 'nope.pth')


def test_safe_load_truncated_file(tmp_path):
    path = tmp_path / 'full.pth'
    torch.save({'model': _tiny().state_dict()}, path)
    data = path.read_bytes()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated, corrupted'):
        safe_load(truncated)


def test_safe_load_garbage_file(tmp_path):
    path = tmp_path / 'garbage.pth'
    path.write_bytes(pickle.dumps('not a checkpoint')[:3] + b'\x00' * 50)
    with pytest.raises(CheckpointError):
        safe_load(path)


def test_find_state_dict_strips_ddp_prefix_and_rejects_non_tensors():
    weight = torch.ones(2)
    assert list(find_state_dict({'module.a': weight})) == ['a']
    assert list(find_state_dict({'state_dict': {'b': weight}})) == ['b']
    with pytest.raises(CheckpointError, match='not tensors'):
        find_state_dict({'model': {'a': weight, 'b': 'text'}})
    with pytest.raises(CheckpointError, match='holds no state dict'):
        find_state_dict({'epoch': 3})


def test_report_missing_unexpected_and_mismatched():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = OrderedDict(model.state_dict())
    state = {k: torch.randn_like(v) for k, v in state.items()}
    del state['1.bias']
    state['0.weight'] = torch.randn(5, 3)
    state['extra.weight'] = torch.randn(1)
    with pytest.raises(CheckpointError) as error:
        load_state_dict_with_report(model, state)
    message = str(error.value)
    assert "'1.bias'" in message and '0.weight' in message
    assert 'extra.weight' in message
    # A refused load leaves the module untouched.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    report = load_state_dict_with_report(model, state, allow_partial=True)
    assert report.missing == ['1.bias']
    assert report.unexpected == ['extra.weight']
    assert report.shape_mismatched == [('0.weight', (5, 3), (4, 3))]
    assert sorted(report.loaded) == ['0.bias', '1.weight']
    assert torch.equal(model.state_dict()['1.weight'], state['1.weight'])


def test_report_fresh_patterns_are_not_missing():
    model = _tiny()
    state = {k: v for k, v in model.state_dict().items() if k.startswith('0.')}
    report = load_state_dict_with_report(model, state, fresh_patterns=('1.*', ))
    assert report.ok
    assert sorted(report.fresh) == ['1.bias', '1.weight']
