"""Tests of tools/analysis/visualize_erf.py on the CPU."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from mmssm.models.utils.flops import build_analysis_model
from tool_runs import load_tool

TOOL = 'analysis/visualize_erf'

# A 2-block Vim: no convolution mixes tokens, only the bidirectional scan.
TINY_VIM = dict(
    arch=dict(embed_dims=16, num_layers=2, d_state=4),
    img_size=48,
    patch_size=8,
    stride=8,
    out_indices=[-1],
    pyramid_strides=None)


class _LocalConv(nn.Module):
    """A single 3x3 convolution: its ERF is the 3x3 window at the centre."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 0.1)
        nn.init.constant_(self.conv.bias, 1.0)

    def forward(self, x: torch.Tensor):
        return (self.conv(x), )


def test_erf_of_a_local_conv_is_its_window():
    tool = load_tool(TOOL)
    erf = tool.compute_erf(_LocalConv(),
                           tool.random_images(3, 2, (9, 11), seed=1))
    assert erf.shape == (9, 11)
    nonzero = np.argwhere(erf > 0)
    assert nonzero.min(0).tolist() == [3, 4]
    assert nonzero.max(0).tolist() == [5, 6]
    # relu(0.1 * sum) has gradient 0.1 per weight, 4 output channels, 3 in.
    np.testing.assert_allclose(erf[3:6, 4:7], 0.1 * 4 * 3)


def test_area_ratio():
    tool = load_tool(TOOL)
    point = np.zeros((9, 9))
    point[4, 4] = 1.0
    assert tool.high_contribution_area_ratio(point, 0.99) == 1 / 81
    uniform = np.ones((9, 9))
    assert tool.high_contribution_area_ratio(uniform, 0.3) == 25 / 81
    assert tool.high_contribution_area_ratio(uniform, 0.99) == 1.0
    with pytest.raises(ValueError, match='threshold'):
        tool.high_contribution_area_ratio(uniform, 0.0)
    with pytest.raises(ValueError, match='zero everywhere'):
        tool.high_contribution_area_ratio(np.zeros((3, 3)), 0.5)


def test_main_random_init_scan_only_model_is_global(tmp_path):
    out = tmp_path / 'maps' / 'erf.png'
    result = load_tool(TOOL).main([
        'Vim', '--backbone-kwargs',
        json.dumps(TINY_VIM), '--shape', '48', '--num-images', '3',
        '--batch-size', '2', '--out',
        str(out)
    ])
    erf = result['erf']
    assert erf.shape == (48, 48)
    assert np.isfinite(erf).all()
    # Only the scan mixes the 6 x 6 patches: the central token must still
    # see (nearly) every patch, not just its own 8 x 8 one.
    per_patch = erf.reshape(6, 8, 6, 8).sum(axis=(1, 3))
    assert (per_patch > 0).mean() >= 0.9
    assert result['area_ratios'][0.99] > 0.5
    image = __import__('matplotlib.image').image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05


def test_main_loads_checkpoint_and_real_images(tmp_path):
    import mmcv
    tool = load_tool(TOOL)
    backbone = build_analysis_model(
        'Vim', num_classes=None, backbone_kwargs=TINY_VIM)
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    checkpoint = tmp_path / 'tiny_vim.pth'
    torch.save({'state_dict': backbone.state_dict()}, checkpoint)
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        mmcv.imwrite(
            rng.integers(0, 255, (40, 56, 3), dtype=np.uint8),
            str(folder / f'{i}.png'))
    result = tool.main([
        'Vim', '--backbone-kwargs',
        json.dumps(TINY_VIM), '--shape', '48', '--num-images', '2',
        '--images',
        str(folder), '--checkpoint',
        str(checkpoint), '--out',
        str(tmp_path / 'erf.png')
    ])
    expected = tool.compute_erf(
        backbone, tool.folder_images(str(folder), 2, 1, (48, 48)))
    np.testing.assert_allclose(result['erf'], expected, rtol=1e-6)
    with pytest.raises(ValueError, match='fewer than --num-images'):
        next(tool.folder_images(str(folder), 3, 1, (48, 48)))
