"""Tests of mmssm/models/backbones/v2m.py: the plain V2M backbone."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmssm.models import from_official
from mmssm.models.backbones.v2m import V2M, V2MMixer
from mmssm.models.layers.plain import resize_pos_embed
from mmssm.models.utils.checkpoint import CheckpointError
from mmssm.ops.reference import selective_scan_reference
from mmssm.registry import MODELS

MICRO = dict(embed_dims=16, num_layers=4, d_state=4, dt_rank=2)


def _micro(**kwargs):
    kwargs.setdefault('arch', MICRO)
    kwargs.setdefault('img_size', 64)
    kwargs.setdefault('drop_path_rate', 0.0)
    kwargs.setdefault('pyramid_strides', None)
    return V2M(**kwargs)


def _perturb(module, seed):
    """Make every parameter random-ish so that no test passes by symmetry."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.mul_(1 + 0.1 * noise).add_(0.05 * noise.flip(0))


# --------------------------------------------------------------- parity


def _load_fixture(fixtures_dir, name='micro_2d'):
    folder = fixtures_dir / 'v2m' / name
    meta = json.loads((folder / 'meta.json').read_text())
    inputs = torch.load(folder / 'inputs.pt', weights_only=True)
    outputs = torch.load(folder / 'outputs.pt', weights_only=True)
    return folder, meta, inputs, outputs


def _assert_parity(ours, ref, what):
    err = (ours - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= 1e-5 * scale, (what, err, scale)


def test_official_parity_micro_2d(fixtures_dir):
    folder, meta, inputs, outputs = _load_fixture(fixtures_dir)
    model = from_official('v2m', meta['constructor_kwargs_VisionMamba'],
                          str(folder / 'checkpoint.pth'))
    model = model.double().eval()
    depth = meta['constructor_kwargs_VisionMamba']['depth']
    for name, image in inputs.items():
        with torch.no_grad():
            streams, grid = model.backbone.forward_tokens(image.double())
            feats = model.backbone(image.double())
            logits = model.head(feats)
        assert grid == tuple(meta['tokens']['grid_hw'])
        assert len(streams) == depth
        for i, stream in enumerate(streams):
            _assert_parity(stream, outputs[f'{name}/layers.{i}.tokens'],
                           f'layers.{i}.tokens')
        _assert_parity(model.head.final_norm(feats),
                       outputs[f'{name}/final_norm'], 'final_norm')
        _assert_parity(logits, outputs[f'{name}/logits'], 'logits')


def test_pretrained_init_cfg_loads_official_checkpoint(fixtures_dir):
    """A downstream backbone (with adapter) inits from the released layout."""
    folder, meta, inputs, outputs = _load_fixture(fixtures_dir)
    kwargs = meta['constructor_kwargs_VisionMamba']
    backbone = V2M(
        arch=dict(embed_dims=kwargs['embed_dim'], num_layers=kwargs['depth']),
        img_size=kwargs['img_size'],
        out_indices=(1, 3),
        pyramid_strides=(8, 16),
        layout='official',
        init_cfg=dict(type='Pretrained',
                      checkpoint=str(folder / 'checkpoint.pth')))
    backbone.init_weights()
    report = backbone.last_load_report
    assert not report.missing and not report.unexpected
    assert report.fresh and all(k.startswith('adapter.') for k in report.fresh)
    image = inputs['img_2x3x64x64'].double()
    backbone = backbone.double().eval()
    with torch.no_grad():
        streams, _ = backbone.forward_tokens(image)
    _assert_parity(streams[3], outputs['img_2x3x64x64/layers.3.tokens'],
                   'layers.3.tokens')


def test_final_norm_backbone_gives_the_authors_features(fixtures_dir):
    """final_norm=True + mean pooling = the authors' forward_features."""
    folder, meta, inputs, outputs = _load_fixture(fixtures_dir)
    kwargs = meta['constructor_kwargs_VisionMamba']
    backbone = V2M(
        arch=dict(embed_dims=kwargs['embed_dim'], num_layers=kwargs['depth']),
        img_size=kwargs['img_size'],
        out_indices=(-1, ),
        pyramid_strides=None,
        final_norm=True,
        layout='official',
        init_cfg=dict(type='Pretrained',
                      checkpoint=str(folder / 'checkpoint.pth')))
    backbone.init_weights()
    assert 'norm_f.weight' in backbone.last_load_report.loaded
    backbone = backbone.double().eval()
    with torch.no_grad():
        feats = backbone(inputs['img_2x3x64x64'].double())
    _assert_parity(feats[0].mean(dim=(2, 3)),
                   outputs['img_2x3x64x64/features'], 'features')


def _manifest(fixtures_dir):
    path = fixtures_dir / 'manifests' / 'v2m_key_manifests.json'
    return json.loads(path.read_text())['models']


_FACTORY_KWARGS = dict(
    patch_size=16, depth=24, rms_norm=True, residual_in_fp32=True,
    fused_add_norm=True, final_pool_type='mean', if_abs_pos_embed=True,
    if_rope=False, if_rope_residual=False, bimamba_type='2d',
    if_cls_token=True, if_devide_out=True, use_middle_cls_token=True)


@pytest.mark.parametrize('model_name,embed_dim,num_params', [
    ('V2M-T', 192, 6_852_712),
    ('V2M-S', 384, 25_205_992),
])
def test_manifests_convert_cleanly_and_param_counts(fixtures_dir, model_name,
                                                    embed_dim, num_params):
    manifest = _manifest(fixtures_dir)[model_name]
    assert manifest['num_params_with_head'] == num_params
    official = {
        key: torch.empty(shape, device='meta')
        for key, shape in manifest['checkpoint_model_keys'].items()
    }
    with torch.device('meta'):
        classifier = from_official('v2m',
                                   dict(_FACTORY_KWARGS, embed_dim=embed_dim))
        arch = {'T': 'tiny', 'S': 'small'}[model_name[-1]]
        backbone = V2M(arch=arch)
    assert sum(p.numel() for p in classifier.parameters()) == num_params
    converted = classifier.convert_fn(dict(official))
    own = classifier.state_dict()
    assert set(converted) == set(own)
    for key, value in converted.items():
        assert tuple(value.shape) == tuple(own[key].shape), key
    # The detection/segmentation backbone takes all but the classifier.
    converted = backbone.convert_checkpoint(dict(official))
    own = backbone.state_dict()
    assert set(own) - set(converted) == {
        k for k in own if k.startswith('adapter.')}
    assert set(converted) <= set(own)
    for key, value in converted.items():
        assert tuple(value.shape) == tuple(own[key].shape), key


def test_arch_base_follows_the_width_rule():
    with torch.device('meta'):
        backbone = V2M(arch='base', pyramid_strides=None, out_indices=(23, ))
    mixer = backbone.layers[0].mixer
    assert backbone.embed_dims == 768 and backbone.depth == 24
    assert mixer.in_proj.weight.shape == (2 * 1536, 768)
    assert mixer.x_proj.weight.shape == (48 + 16, 1536)


# --------------------------------------------------------------- mixer


def _causal_conv(seq, conv):
    """Mamba's causal depthwise conv1d of (N, E, L) sequences."""
    size = conv.weight.shape[-1]
    return F.conv1d(F.pad(seq, (size - 1, 0)), conv.weight, conv.bias,
                    groups=seq.shape[1])


def _top_left_path(mixer, x):
    """Rows left-to-right, then columns top-down, written with 1D ops only."""
    batch, height, width, _ = x.shape
    inner, gate = mixer.in_proj(x).chunk(2, dim=-1)  # (B, h, w, E)
    state, rank, channels = mixer.d_state, mixer.dt_rank, mixer.d_inner
    ones = torch.ones(channels, state, dtype=x.dtype)

    def scan(seq, z_seq, conv, x_proj, dt_proj, a_log, skip, second):
        # seq, z_seq: (lines, E, L)
        u = F.silu(_causal_conv(seq, conv))
        dbl = torch.einsum('nel,re->nrl', u, x_proj.weight)
        delta = torch.einsum('nrl,er->nel', dbl[:, :rank], dt_proj.weight)
        varying = dbl[:, rank:]
        B, C = (ones, varying) if second else (varying, ones)
        return selective_scan_reference(u, delta, -torch.exp(a_log), B, C,
                                        D=skip, z=z_seq,
                                        delta_bias=dt_proj.bias,
                                        delta_softplus=True)

    rows = inner.reshape(batch * height, width, channels).transpose(1, 2)
    z_rows = gate.reshape(batch * height, width, channels).transpose(1, 2)
    y1 = scan(rows, z_rows, mixer.conv1d, mixer.x_proj, mixer.dt_proj,
              mixer.A_log, mixer.D, False)
    y1 = y1.transpose(1, 2).reshape(batch, height, width, channels)
    cols = y1.permute(0, 2, 3, 1).reshape(batch * width, channels, height)
    z_cols = gate.permute(0, 2, 3, 1).reshape(batch * width, channels, height)
    y2 = scan(cols, z_cols, mixer.conv1d_2, mixer.x_proj_2, mixer.dt_proj_2,
              mixer.A_2_log, mixer.D_2, True)
    return y2.reshape(batch, width, channels, height).permute(0, 3, 1, 2)


def _corrected_reference(mixer, x):
    """Each corner = flip the grid so it is top-left, scan, flip back."""
    total = 0
    for dims in ([], [2], [1], [1, 2]):  # tl, tr, bl, br
        flipped = x.flip(dims) if dims else x
        out = _top_left_path(mixer, flipped)
        total = total + (out.flip(dims) if dims else out)
    return mixer.out_proj(total / 2)


@pytest.mark.parametrize('height,width', [(3, 5), (4, 1), (1, 3), (2, 2)])
def test_corrected_mixer_matches_four_flipped_top_left_scans(height, width):
    torch.manual_seed(0)
    mixer = V2MMixer(6, d_state=3, dt_rank=2).double()
    _perturb(mixer, 1)
    x = torch.randn(2, height, width, 6, dtype=torch.float64,
                    requires_grad=True)
    out = mixer(x)
    ref = _corrected_reference(mixer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    g_out = torch.autograd.grad(out, [x, *mixer.parameters()], grad)
    g_ref = torch.autograd.grad(ref, [x, *mixer.parameters()], grad)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_official_mixer_dependency_pattern_matches_fixture_probe():
    """Fixtures README 4.4: on a 5x5 grid, output (1, 3) depends on rows 0-3
    x cols 0-1, rows 0-1 x cols 1-4 and rows 3-4 x cols 0-3."""
    torch.manual_seed(0)
    mixer = V2MMixer(4, d_state=2, dt_rank=1, layout='official').double()
    x = torch.randn(1, 5, 5, 4, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(mixer(x)[0, 1, 3].sum(), x)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0:4, 0:2] = True
    expected[0:2, 1:5] = True
    expected[3:5, 0:4] = True
    assert torch.equal(grad[0].abs().sum(-1) > 0, expected)


def test_official_layout_rejects_non_square_grids():
    backbone = _micro(layout='official', out_indices=(3, ), pyramid_strides=None)
    with pytest.raises(ValueError, match='square'):
        backbone(torch.randn(1, 3, 64, 80))


# --------------------------------------------------------------- backbone


def test_odd_size_corrected_layout_pyramid():
    backbone = _micro(out_indices=(0, 1, 2, 3),
                      pyramid_strides=(4, 8, 16, 32)).eval()
    assert backbone.out_channels == (16, ) * 4
    assert backbone.out_strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 97, 131))
    # 97x131 is padded to 112x144: a 7x9 token grid.
    assert [tuple(f.shape) for f in feats] == [(2, 16, 28, 36),
                                              (2, 16, 14, 18),
                                              (2, 16, 7, 9), (2, 16, 4, 5)]
    assert all(torch.isfinite(f).all() for f in feats)


def test_batch_of_one_equals_batched_sample():
    torch.manual_seed(0)
    backbone = _micro(out_indices=(1, 3), pyramid_strides=None).double().eval()
    _perturb(backbone, 2)
    images = torch.randn(3, 3, 48, 80, dtype=torch.float64)
    with torch.no_grad():
        batched = backbone(images)
        single = backbone(images[1:2])
    for a, b in zip(batched, single):
        assert a.shape[0] == 3 and b.shape[0] == 1
        torch.testing.assert_close(a[1:2], b, rtol=1e-10, atol=1e-10)


def test_default_out_indices_and_registry():
    backbone = MODELS.build(
        dict(type='mmssm.V2M', arch=dict(embed_dims=8, num_layers=8), img_size=32))
    assert backbone.out_indices == (1, 3, 5, 7)
    assert len(backbone(torch.randn(1, 3, 32, 32))) == 4


def test_frozen_stages():
    backbone = _micro(frozen_stages=2, out_indices=(3, ), pyramid_strides=(16, ))
    backbone.train()
    assert not backbone.pos_embed.requires_grad
    assert not any(p.requires_grad for p in backbone.patch_embed.parameters())
    for i, layer in enumerate(backbone.layers):
        frozen = i < 2
        assert all(p.requires_grad != frozen for p in layer.parameters())
        assert layer.training != frozen
    assert all(p.requires_grad for p in backbone.adapter.parameters())
    with pytest.raises(ValueError, match='frozen_stages'):
        _micro(frozen_stages=5)


def test_with_cp_gives_identical_outputs_and_grads():
    torch.manual_seed(0)
    plain = _micro(out_indices=(1, 3), pyramid_strides=(8, 16))
    checkpointed = _micro(out_indices=(1, 3), pyramid_strides=(8, 16),
                          with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 48, 64)
    results = []
    for model in (plain, checkpointed):
        model.train()
        feats = model(images)
        loss = sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum()
                   for f in feats)
        loss.backward()
        results.append(
            (feats, {n: p.grad.clone()
                     for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


def test_bf16_autocast_outputs_and_grads_finite():
    backbone = _micro(out_indices=(3, ), pyramid_strides=(16, ))
    images = torch.randn(1, 3, 48, 48)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feats = backbone(images)
    feats[0].float().sum().backward()
    assert torch.isfinite(feats[0].float()).all()
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters()
               if p.grad is not None)


@pytest.mark.parametrize('kwargs,message', [
    (dict(arch='huge'), 'arch must be one of'),
    (dict(arch=dict(embed_dims=8)), 'missing keys'),
    (dict(arch=dict(embed_dims=8, num_layers=4, ratio=2)), 'unknown keys'),
    (dict(layout='rotated'), 'layout'),
    (dict(out_indices=(1, 3), pyramid_strides=(4, 8, 16)), 'pyramid_strides'),
    (dict(out_indices=(4, )), 'out_indices'),
])
def test_bad_config_raises_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _micro(**kwargs)


def test_get_layer_depth():
    backbone = _micro(out_indices=(3, ))
    assert backbone.get_layer_depth('backbone.pos_embed', 'backbone.') == (0,
                                                                           6)
    assert backbone.get_layer_depth(
        'backbone.patch_embed.proj.weight', 'backbone.') == (0, 6)
    assert backbone.get_layer_depth(
        'backbone.layers.2.mixer.A_2_log', 'backbone.') == (3, 6)
    assert backbone.get_layer_depth('backbone.adapter.branches.0.0.weight',
                                    'backbone.') == (5, 6)
    assert backbone.get_layer_depth('head.fc.weight', 'backbone.') == (5, 6)


# --------------------------------------------------------------- checkpoints


def test_convert_resizes_pos_embed_and_drops_classifier():
    source = _micro(img_size=64)  # 4x4 grid
    target = _micro(img_size=96)  # 6x6 grid
    state = dict(source.state_dict())
    state['norm_f.weight'] = torch.ones(16)
    state['head.weight'] = torch.zeros(10, 16)
    converted = target.convert_checkpoint(state)
    assert 'norm_f.weight' not in converted
    assert not any(k.startswith('head.') for k in converted)
    expected = resize_pos_embed(source.pos_embed.detach(), (4, 4), (6, 6))
    torch.testing.assert_close(converted['pos_embed'], expected)
    assert converted['pos_embed'].shape == target.pos_embed.shape
    report_target = target.state_dict()
    assert set(converted) == set(report_target)


def _vim_state_dict(embed_dims, depth, d_state, dt_rank, grid):
    """A random state dict with the keys/shapes of hustvl/Vim's models."""
    inner = 2 * embed_dims
    tokens = grid * grid
    state = {
        'cls_token': torch.randn(1, 1, embed_dims),
        'pos_embed': torch.randn(1, tokens + 1, embed_dims),
        'patch_embed.proj.weight': torch.randn(embed_dims, 3, 16, 16),
        'patch_embed.proj.bias': torch.randn(embed_dims),
        'norm_f.weight': torch.randn(embed_dims),
        'head.weight': torch.randn(10, embed_dims),
        'head.bias': torch.randn(10),
    }
    for i in range(depth):
        prefix = f'layers.{i}.'
        state[prefix + 'norm.weight'] = torch.randn(embed_dims)
        mixer = {
            'in_proj.weight': (2 * inner, embed_dims),
            'out_proj.weight': (embed_dims, inner),
            'A_log': (inner, d_state),
            'D': (inner, ),
            'A_b_log': (inner, d_state),
            'D_b': (inner, ),
        }
        for branch in ('', '_b'):
            mixer[f'conv1d{branch}.weight'] = (inner, 1, 4)
            mixer[f'conv1d{branch}.bias'] = (inner, )
            mixer[f'x_proj{branch}.weight'] = (dt_rank + 2 * d_state, inner)
            mixer[f'dt_proj{branch}.weight'] = (inner, dt_rank)
            mixer[f'dt_proj{branch}.bias'] = (inner, )
        for name, shape in mixer.items():
            state[f'{prefix}mixer.{name}'] = torch.randn(shape)
    return state


def test_partial_init_from_vim_checkpoint(tmp_path):
    vim = _vim_state_dict(16, 4, 4, 2, grid=4)
    path = tmp_path / 'vim.pth'
    torch.save({'model': vim}, path)
    cfg = dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(CheckpointError, match='allow_partial'):
        _micro(img_size=96, out_indices=(3, ), init_cfg=cfg).init_weights()

    backbone = _micro(img_size=96, out_indices=(3, ),
                      init_cfg=dict(cfg, allow_partial=True))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.init_weights()
    report = backbone.last_load_report
    second_pass = ('conv1d_2.weight', 'conv1d_2.bias', 'x_proj_2.weight',
                   'dt_proj_2.weight', 'dt_proj_2.bias', 'A_2_log', 'D_2')
    assert sorted(report.missing) == sorted(
        f'layers.{i}.mixer.{name}' for i in range(4) for name in second_pass)
    assert not report.unexpected and not report.shape_mismatched
    state = backbone.state_dict()
    for key in report.missing:
        torch.testing.assert_close(state[key], before[key])  # left fresh
    for name in ('in_proj.weight', 'out_proj.weight', 'conv1d.weight',
                 'conv1d.bias', 'dt_proj.weight', 'dt_proj.bias', 'A_log',
                 'D'):
        torch.testing.assert_close(state[f'layers.2.mixer.{name}'],
                                   vim[f'layers.2.mixer.{name}'])
    # x_proj keeps Vim's time-step and B rows, not its C rows.
    torch.testing.assert_close(state['layers.1.mixer.x_proj.weight'],
                               vim['layers.1.mixer.x_proj.weight'][:2 + 4])
    torch.testing.assert_close(state['layers.3.norm.weight'],
                               vim['layers.3.norm.weight'])
    torch.testing.assert_close(state['patch_embed.proj.weight'],
                               vim['patch_embed.proj.weight'])
    # Position embedding: class token (index M // 2) removed, then resized.
    pos = vim['pos_embed']
    patches = torch.cat([pos[:, :8], pos[:, 9:]], dim=1)
    torch.testing.assert_close(state['pos_embed'],
                               resize_pos_embed(patches, (4, 4), (6, 6)))
    assert len(report.loaded) == len(state) - len(report.missing)


@pytest.mark.parametrize('config,num_params', [
    ('v2m_tiny_8xb64_in1k.py', 6_852_712),
    ('v2m_small_8xb64_in1k.py', 25_205_992),
])
def test_imagenet_configs_build_the_authors_model_size(config, num_params):
    from mmengine.config import Config
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    root = Path(__file__).parents[2]
    cfg = Config.fromfile(str(root / 'configs' / 'imagenet' / config))
    with torch.device('meta'):
        model = PRETRAIN_MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == num_params
