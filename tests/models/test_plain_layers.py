"""Tests of mmssm/models/layers/plain.py (shared plain-backbone pieces)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmssm.models.layers.plain import (LayerNorm2d, MultiScaleAdapter,
                                       PaddedPatchEmbed, PlainResidualBlock,
                                       RMSNorm, drop_path_rates,
                                       plain_layer_depth, resize_pos_embed,
                                       tokens_to_map)


def _insert_middle(patch_tokens: torch.Tensor,
                   cls_token: torch.Tensor) -> torch.Tensor:
    """Vim's layout: the class token at index M // 2 of M patch tokens."""
    middle = patch_tokens.shape[1] // 2
    return torch.cat(
        [patch_tokens[:, :middle], cls_token, patch_tokens[:, middle:]], 1)


@pytest.mark.parametrize('size,patch,stride,grid', [
    ((97, 131), 16, 16, (7, 9)),
    ((40, 16), 16, 8, (4, 1)),
    ((10, 33), 16, 8, (1, 4)),
])
def test_patch_embed_pads_bottom_right(size, patch, stride, grid):
    embed = PaddedPatchEmbed(3, 5, patch, stride).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    tokens, out_grid = embed(x)
    assert out_grid == grid == embed.grid_size(size)
    assert tokens.shape == (2, grid[0] * grid[1], 5)
    weight, bias = embed.proj.weight, embed.proj.bias
    for i in range(grid[0]):
        for j in range(grid[1]):
            # Pixels beyond the image are zeros.
            window = torch.zeros(2, 3, patch, patch, dtype=torch.float64)
            rows = x[:, :, i * stride:i * stride + patch,
                     j * stride:j * stride + patch]
            window[:, :, :rows.shape[2], :rows.shape[3]] = rows
            expected = torch.einsum('bcyx,dcyx->bd', window, weight) + bias
            torch.testing.assert_close(tokens[:, i * grid[1] + j], expected)


def test_patch_embed_authors_grid_formula_and_errors():
    # The authors' grid: ((224 - 16) // 8 + 1) = 27 for the stride-8 models.
    assert PaddedPatchEmbed(3, 4, 16, 8).grid_size((224, 224)) == (27, 27)
    assert PaddedPatchEmbed(3, 4, 16, 16).grid_size((224, 224)) == (14, 14)
    with pytest.raises(ValueError, match='stride'):
        PaddedPatchEmbed(3, 4, 8, 16)
    with pytest.raises(ValueError, match=r'x must have shape \(B, 3, H, W\)'):
        PaddedPatchEmbed(3, 4, 16, 16)(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize('with_cls', [False, True])
def test_resize_pos_embed_is_identity_at_native_grid(with_cls):
    pos = torch.randn(1, 12 + int(with_cls), 6, dtype=torch.float64)
    out = resize_pos_embed(pos, (3, 4), (3, 4), with_mid_cls_token=with_cls)
    assert torch.equal(out, pos)


@pytest.mark.parametrize('src,dst', [((4, 4), (3, 5)), ((3, 5), (6, 2)),
                                     ((5, 3), (5, 3)), ((2, 2), (7, 4))])
def test_resize_pos_embed_keeps_middle_cls_token(src, dst):
    channels = 4
    grid = torch.randn(1, channels, *src, dtype=torch.float64)
    cls_token = torch.randn(1, 1, channels, dtype=torch.float64)
    pos = _insert_middle(grid.flatten(2).transpose(1, 2), cls_token)
    out = resize_pos_embed(pos, src, dst, with_mid_cls_token=True)
    expected_grid = grid if src == dst else F.interpolate(
        grid, size=dst, mode='bicubic', align_corners=False)
    expected = _insert_middle(
        expected_grid.flatten(2).transpose(1, 2), cls_token)
    assert out.shape == (1, dst[0] * dst[1] + 1, channels)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[:, dst[0] * dst[1] // 2], cls_token[:, 0])


def test_resize_pos_embed_without_cls_and_bad_shape():
    grid = torch.randn(1, 3, 4, 6, dtype=torch.float64)
    pos = grid.flatten(2).transpose(1, 2)
    out = resize_pos_embed(pos, (4, 6), (8, 3))
    expected = F.interpolate(grid, size=(8, 3), mode='bicubic',
                             align_corners=False)
    torch.testing.assert_close(out, expected.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match=r'pos_embed must have shape'):
        resize_pos_embed(pos, (4, 6), (8, 3), with_mid_cls_token=True)


def test_tokens_to_map_is_row_major():
    tokens = torch.randn(2, 12, 5)
    fmap = tokens_to_map(tokens, (3, 4))
    assert fmap.shape == (2, 5, 3, 4)
    assert torch.equal(fmap[1, :, 2, 1], tokens[1, 2 * 4 + 1])
    with pytest.raises(ValueError, match='tokens must have shape'):
        tokens_to_map(tokens, (4, 4))


def test_rms_norm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(7, eps=1e-5).double()
    nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 7, dtype=torch.float64) * 3
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected * norm.weight)
    norm32 = RMSNorm(7).float()
    half = x.to(torch.bfloat16)
    out = norm32(half)
    assert out.dtype == torch.bfloat16
    reference = norm32(half.float())
    torch.testing.assert_close(out.float(), reference, atol=0, rtol=1e-2)


def _authors_chain(x, blocks, norm_f):
    """The authors' ``Add -> Norm -> Mixer`` chain with the fused add+norm."""
    hidden, residual = x, None
    for block in blocks:
        residual = hidden if residual is None else residual + hidden
        hidden = block.mixer(block.norm(residual))
    return norm_f(residual + hidden)


def test_residual_block_equals_authors_fused_add_norm_chain():
    torch.manual_seed(0)
    blocks = nn.ModuleList(
        PlainResidualBlock(6, nn.Linear(6, 6)) for _ in range(3)).double()
    for block in blocks:
        nn.init.normal_(block.norm.weight)
    norm_f = RMSNorm(6).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    stream = x
    for block in blocks:
        stream = block(stream)
    torch.testing.assert_close(norm_f(stream),
                               _authors_chain(x, blocks, norm_f))


def test_residual_block_keeps_stream_in_float32():
    block = PlainResidualBlock(4, nn.Linear(4, 4).to(torch.bfloat16))
    block.norm.to(torch.bfloat16)
    stream = torch.randn(2, 3, 4)
    assert block(stream).dtype == torch.float32


def test_residual_block_with_cp_identical():
    torch.manual_seed(0)
    plain = PlainResidualBlock(6, nn.Sequential(nn.Linear(6, 6), nn.GELU()))
    checkpointed = PlainResidualBlock(
        6, nn.Sequential(nn.Linear(6, 6), nn.GELU()), with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 6, requires_grad=True)
    x_cp = x.detach().clone().requires_grad_()
    out, out_cp = plain.train()(x), checkpointed.train()(x_cp)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    (out_cp * weight).sum().backward()
    assert torch.equal(out, out_cp)
    assert torch.equal(x.grad, x_cp.grad)
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_drop_path_rates():
    assert drop_path_rates(0.0, 3) == [0.0, 0.0, 0.0]
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.2, 1) == [0.0]
    with pytest.raises(ValueError, match='drop_path_rate'):
        drop_path_rates(1.5, 4)


def _layer_norm_2d(x, norm):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), norm.weight,
                        norm.bias, norm.eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize('in_stride,sizes', [
    (16, [(28, 36), (14, 18), (7, 9), (4, 5)]),
    (8, [(14, 18), (7, 9), (4, 5), (2, 3)]),
])
def test_multi_scale_adapter_shapes(in_stride, sizes):
    adapter = MultiScaleAdapter(8, in_stride, (4, 8, 16, 32))
    maps = [torch.randn(2, 8, 7, 9) for _ in range(4)]
    outs = adapter(maps)
    assert [tuple(o.shape[-2:]) for o in outs] == sizes
    assert all(o.shape[:2] == (2, 8) for o in outs)


def test_multi_scale_adapter_branch_math():
    torch.manual_seed(0)
    adapter = MultiScaleAdapter(4, 16, (8, 16, 64)).double()
    for module in adapter.modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    maps = [torch.randn(1, 4, 5, 6, dtype=torch.float64) for _ in range(3)]
    up, same, down = adapter(maps)
    deconv, up_norm = adapter.branches[0]
    expected_up = _layer_norm_2d(
        F.conv_transpose2d(maps[0], deconv.weight, deconv.bias, stride=2),
        up_norm)
    torch.testing.assert_close(up, expected_up)
    torch.testing.assert_close(
        same, _layer_norm_2d(maps[1], adapter.branches[1][0]))
    pooled = F.max_pool2d(maps[2], 4, 4, ceil_mode=True)
    torch.testing.assert_close(
        down, _layer_norm_2d(pooled, adapter.branches[2][-1]))
    assert down.shape[-2:] == (2, 2)


def test_multi_scale_adapter_errors():
    with pytest.raises(ValueError, match='power of two'):
        MultiScaleAdapter(4, 16, (12, ))
    with pytest.raises(ValueError, match='expected 2 maps'):
        MultiScaleAdapter(4, 16, (8, 16))([torch.randn(1, 4, 2, 2)])
    assert isinstance(MultiScaleAdapter(4, 16, (16, )).branches[0][0],
                      LayerNorm2d)


def test_plain_layer_depth():
    assert plain_layer_depth('backbone.pos_embed', 'backbone.', 24) == (0, 26)
    assert plain_layer_depth('backbone.cls_token', 'backbone.', 24) == (0, 26)
    assert plain_layer_depth('backbone.patch_embed.proj.weight', 'backbone.',
                             24) == (0, 26)
    assert plain_layer_depth('backbone.layers.0.norm.weight', 'backbone.',
                             24) == (1, 26)
    assert plain_layer_depth('backbone.layers.23.mixer.D', 'backbone.',
                             24) == (24, 26)
    assert plain_layer_depth('backbone.adapter.branches.0.0.weight',
                             'backbone.', 24) == (25, 26)
    assert plain_layer_depth('decode_head.conv.weight', 'backbone.',
                             24) == (25, 26)
