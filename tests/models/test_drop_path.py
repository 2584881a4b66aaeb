"""Tests of DropPath."""
import pytest
import torch

from mmssm.models.layers.drop_path import DropPath


def test_drop_path_eval_is_identity_and_train_keeps_expectation():
    torch.manual_seed(0)
    layer = DropPath(0.25)
    x = torch.randn(4000, 3, 2)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    kept = (y != 0).flatten(1).all(dim=1)
    assert 0.7 < kept.float().mean() < 0.8
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert (y[~kept] == 0).all()


def test_drop_path_rejects_bad_probability():
    with pytest.raises(ValueError, match='drop_prob'):
        DropPath(1.0)
