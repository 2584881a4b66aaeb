"""Tests of the VMamba backbone, its converters and its official parity."""
import json
from pathlib import Path

import pytest
import torch

from mmssm.models.backbones.vmamba import (ARCH_ZOO, VMamba,
                                           VMambaClassifierHead,
                                           convert_official_classifier)
from mmssm.models.official import SSMClassifier, from_official
from mmssm.models.utils.checkpoint import CheckpointError
from mmssm.registry import MODELS

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_CONFIGS = ('micro_v2_s1', 'micro_v2_s2', 'micro_v0')
MICRO_V2 = dict(
    embed_dims=8, depths=(1, 1, 2, 1), d_state=2, ssm_ratio=2.0,
    mlp_ratio=2.0, version='v2')
MICRO_V0 = dict(
    embed_dims=8, depths=(1, 1, 2, 1), d_state=3, ssm_ratio=2.0,
    mlp_ratio=0.0, version='v0')
# Published parameter counts with a 1000-class head.
ARCH_PARAMS = {
    'tiny': 30_249_064,
    'small': 50_147_752,
    'base': 88_557_800,
    'vanilla-tiny': 22_893_448,
    'vanilla-small': 44_417_416,
    'vanilla-base': 76_254_056,
}
ARCH_MANIFEST = {
    'tiny': 'vssm1_tiny_0230s',
    'small': 'vssm1_small_0229',
    'base': 'vssm1_base_0229',
    'tiny-s2l5': 'vssm1_tiny_0230',
    'small-s1l20': 'vssm1_small_0229s',
    'base-s1l20': 'vssm1_base_0229s',
    'vanilla-tiny': 'vssm_tiny',
    'vanilla-small': 'vssm_small',
    'vanilla-base': 'vssm_base',
}


def _close(actual: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    err = (actual.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert actual.shape == ref.shape
    assert err <= rel * scale, (err, scale)


def _fixture(fixtures_dir, config):
    folder = fixtures_dir / 'vmamba' / config
    meta = json.loads((folder / 'meta.json').read_text())
    inputs = torch.load(folder / 'inputs.pt', weights_only=True)
    outputs = torch.load(folder / 'outputs.pt', weights_only=True)
    # micro_v0's reference is fp32 (the official v0 scan cannot run fp64)
    dtype, rel = ((torch.float32, 2e-4) if config == 'micro_v0' else
                  (torch.float64, 1e-5))
    return folder, meta, inputs, outputs, dtype, rel


@pytest.fixture(scope='module')
def manifests(fixtures_dir):
    path = fixtures_dir / 'manifests' / 'vmamba_key_manifests.json'
    return json.loads(path.read_text())['models']


def _meta_state(shapes: dict) -> dict:
    return {k: torch.empty(s, device='meta') for k, s in shapes.items()}


def _shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize('config', FIXTURE_CONFIGS)
def test_official_classifier_logits(fixtures_dir, config):
    folder, meta, inputs, outputs, dtype, rel = _fixture(fixtures_dir, config)
    model = from_official('vmamba', meta['constructor_kwargs_VSSM'],
                          str(folder / 'checkpoint.pth'))
    model = model.to(dtype).eval()
    for name, image in inputs.items():
        with torch.no_grad():
            logits = model(image.to(dtype))
        _close(logits, outputs[f'{name}/logits'], rel)


def _backbone_from(meta, checkpoint, **kwargs) -> VMamba:
    classifier = from_official('vmamba', meta['constructor_kwargs_VSSM'])
    backbone = VMamba(
        arch=classifier.backbone.arch,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint),
                      **kwargs))
    backbone.init_weights()
    return backbone


@pytest.mark.parametrize('config', FIXTURE_CONFIGS)
def test_backbone_from_classification_checkpoint(fixtures_dir, config):
    folder, meta, inputs, outputs, dtype, rel = _fixture(fixtures_dir, config)
    backbone = _backbone_from(meta, folder / 'checkpoint.pth')
    report = backbone.last_load_report
    assert not report.missing and not report.unexpected
    assert sorted(report.fresh) == sorted(
        f'out_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    backbone = backbone.to(dtype).eval()
    for name, image in inputs.items():
        with torch.no_grad():
            feats = backbone(image.to(dtype))
        assert len(feats) == 4
        for i, feat in enumerate(feats):
            _close(feat, outputs[f'{name}/features_ckpt_init.{i}'], rel)


@pytest.mark.parametrize('config', FIXTURE_CONFIGS)
def test_backbone_from_downstream_checkpoint(fixtures_dir, tmp_path, config):
    """An mmdet/mmseg checkpoint of the authors' backbone (+ outnorm.pth)."""
    folder, meta, inputs, outputs, dtype, rel = _fixture(fixtures_dir, config)
    model = torch.load(folder / 'checkpoint.pth', weights_only=True)['model']
    outnorm = torch.load(folder / 'outnorm.pth', weights_only=True)
    whole = {
        f'backbone.{k}': v
        for k, v in model.items() if not k.startswith('classifier.')
    }
    whole.update(outnorm['state_dict'])
    whole['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': whole, 'meta': {}}, tmp_path / 'det.pth')
    backbone = _backbone_from(meta, tmp_path / 'det.pth')
    assert backbone.last_load_report.ok
    assert not backbone.last_load_report.fresh
    backbone = backbone.to(dtype).eval()
    # one input suffices here: both run in test_backbone_from_classification_
    # checkpoint, and the loaded output norms act per pixel
    name = 'img_1x3x64x96'
    with torch.no_grad():
        feats = backbone(inputs[name].to(dtype))
    for i, feat in enumerate(feats):
        _close(feat, outputs[f'{name}/features.{i}'], rel)
    # the authors' downstream keys without the prefix load the same way
    torch.save({'model': {k[len('backbone.'):]: v for k, v in whole.items()
                          if k.startswith('backbone.')}},
               tmp_path / 'backbone_vssm.pth')
    again = _backbone_from(meta, tmp_path / 'backbone_vssm.pth')
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, again.state_dict()[key].to(dtype)), key


def test_linear_weights_saved_as_1x1_convs_convert(fixtures_dir):
    """The authors' Linear2d also loads (out, in, 1, 1) weights."""
    folder = fixtures_dir / 'vmamba' / 'micro_v2_s1'
    model = torch.load(folder / 'checkpoint.pth', weights_only=True)['model']
    as_conv = {
        k: (v[:, :, None, None] if k.endswith(
            ('in_proj.weight', 'out_proj.weight', 'fc1.weight',
             'fc2.weight')) else v)
        for k, v in model.items()
    }
    assert sum(v.dim() == 4 for v in as_conv.values()) > sum(
        v.dim() == 4 for v in model.values())
    backbone = VMamba(arch=dict(
        embed_dims=32, depths=(1, 1, 2, 1), d_state=1, ssm_ratio=1.0,
        mlp_ratio=4.0, version='v2'))
    expected = backbone.convert_checkpoint(model)
    converted = backbone.convert_checkpoint(as_conv)
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key
    assert converted['stages.0.blocks.0.mixer.in_proj.weight'].dim() == 2


@pytest.mark.parametrize('name', sorted(ARCH_MANIFEST))
def test_manifests_convert_cleanly(manifests, name):
    manifest = manifests[ARCH_MANIFEST[name]]
    with torch.device('meta'):
        classifier = from_official('vmamba', manifest['vssm_kwargs'])
        backbone = VMamba(arch=name)
    classification = manifest[
        'classification_checkpoint_model_keys_HEAD_names']
    converted = convert_official_classifier(_meta_state(classification))
    assert {k: tuple(v.shape)
            for k, v in converted.items()} == _shapes(classifier)
    assert sum(p.numel() for p in classifier.parameters()) == manifest[
        'num_params_with_head']
    # the arch zoo entry is the same network as the authors' config
    assert _shapes(backbone) == {
        **{k[len('backbone.'):]: v
           for k, v in _shapes(classifier).items()
           if k.startswith('backbone.')},
        **{k: v for k, v in _shapes(backbone).items()
           if k.startswith('out_norms.')}
    }
    downstream = backbone.convert_checkpoint(
        _meta_state(manifest['downstream_Backbone_VSSM_keys']))
    assert {k: tuple(v.shape) for k, v in downstream.items()} == _shapes(
        backbone)
    legacy = manifest.get('released_checkpoint_model_keys_LEGACY_names')
    if legacy is not None:
        converted = convert_official_classifier(_meta_state(legacy))
        assert {k: tuple(v.shape)
                for k, v in converted.items()} == _shapes(classifier)
        stripped = backbone.convert_checkpoint(_meta_state(legacy))
        assert set(stripped) == {
            k for k in _shapes(backbone) if not k.startswith('out_norms.')
        }


@pytest.mark.parametrize('arch', sorted(ARCH_PARAMS))
def test_arch_zoo_parameter_counts(arch):
    with torch.device('meta'):
        backbone = VMamba(arch=arch, out_indices=(3, ), with_out_norm=False)
        model = SSMClassifier(backbone, VMambaClassifierHead(
            backbone.out_channels[-1], 1000))
    assert sum(p.numel() for p in model.parameters()) == ARCH_PARAMS[arch]


@pytest.mark.parametrize('arch', [MICRO_V2, MICRO_V0])
def test_output_shapes_odd_sizes_and_batch_one(arch):
    backbone = MODELS.build(dict(type='mmssm.VMamba', arch=arch)).eval()
    assert backbone.out_channels == (8, 16, 32, 64)
    assert backbone.out_strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 97, 131))
    if arch['version'] == 'v2':
        sizes = [(25, 33), (13, 17), (7, 9), (4, 5)]  # ceil(H / 2) each step
    else:
        sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]  # floor(H / 4), ceil
    assert [tuple(f.shape) for f in feats] == [
        (1, c, h, w) for c, (h, w) in zip(backbone.out_channels, sizes)]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize('out_indices', [(0, ), (1, ), (2, ), (3, ), (0, 2),
                                         (1, 3), (-1, )])
def test_out_indices_subsets(out_indices):
    torch.manual_seed(0)
    full = VMamba(arch=MICRO_V2).eval()
    part = VMamba(arch=MICRO_V2, out_indices=out_indices).eval()
    part.load_state_dict(
        {k: v for k, v in full.state_dict().items() if k in
         part.state_dict()})
    image = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        all_feats, feats = full(image), part(image)
    indices = [i % 4 for i in out_indices]
    assert part.out_channels == tuple(full.embed_dims[i] for i in indices)
    assert part.out_strides == tuple(4 * 2**i for i in indices)
    assert len(feats) == len(indices)
    for i, feat in zip(indices, feats):
        torch.testing.assert_close(feat, all_feats[i])


def test_frozen_stages():
    backbone = VMamba(arch=MICRO_V2, frozen_stages=2)
    backbone.train()
    frozen = ('patch_embed.', 'stages.0.', 'stages.1.', 'out_norms.0.',
              'out_norms.1.')
    for name, param in backbone.named_parameters():
        assert param.requires_grad != name.startswith(frozen), name
    assert not backbone.patch_embed.training
    assert not backbone.stages[1].training
    assert backbone.stages[2].training
    feats = backbone(torch.randn(1, 3, 32, 32))
    sum(f.sum() for f in feats).backward()
    assert backbone.stages[0].blocks[0].mixer.A_log.grad is None
    assert backbone.stages[2].blocks[0].mixer.A_log.grad is not None
    with pytest.raises(ValueError, match='frozen_stages'):
        VMamba(arch=MICRO_V2, frozen_stages=5)


@pytest.mark.parametrize('arch', [MICRO_V2, MICRO_V0])
def test_with_cp_gives_identical_outputs_and_grads(arch):
    torch.manual_seed(0)
    plain = VMamba(arch=arch).train()
    checkpointed = VMamba(arch=arch, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 32, 40)
    outs = []
    for model in (plain, checkpointed):
        feats = model(image)
        weights = [torch.linspace(-1, 1, f.numel(), dtype=f.dtype).view_as(f)
                   for f in feats]
        sum((f * w).sum() for f, w in zip(feats, weights)).backward()
        outs.append((feats, {n: p.grad for n, p in model.named_parameters()}))
    for a, b in zip(outs[0][0], outs[1][0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, grad in outs[0][1].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-5,
                                   atol=1e-7)


@pytest.mark.parametrize('arch', [MICRO_V2, MICRO_V0])
def test_bf16_autocast_is_finite(arch):
    backbone = VMamba(arch=arch, drop_path_rate=0.1).train()
    # 64x64: every stage has lines longer than 1 pixel, so A gets a gradient
    image = torch.randn(2, 3, 64, 64, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feats = backbone(image)
    assert all(torch.isfinite(f.float()).all() for f in feats)
    sum(f.float().mean() for f in feats).backward()
    assert torch.isfinite(image.grad).all()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), \
            name


@pytest.mark.parametrize('arch', [MICRO_V2, MICRO_V0])
def test_bf16_autocast_matches_float32(arch, bf16_autocast_errors):
    # The block norms and out_norm store bfloat16 under autocast while the
    # residual stream stays float32: features stay within bfloat16 error.
    errors = bf16_autocast_errors(VMamba(arch=arch),
                                  torch.randn(2, 3, 64, 64))
    assert max(errors) < 2e-2, errors


def test_get_layer_depth():
    backbone = VMamba(arch=dict(MICRO_V2, depths=(2, 2, 3, 2)))
    num_layers = 2 + 2 + 3 + 2 + 2
    cases = {
        'patch_embed.conv1.weight': 0,
        'stages.0.blocks.0.norm1.weight': 1,
        'stages.0.blocks.1.mixer.A_log': 2,
        'stages.1.downsample.conv.weight': 2,
        'stages.1.blocks.0.mlp.fc1.weight': 3,
        'stages.2.blocks.2.mixer.D': 7,
        'stages.3.downsample.norm.bias': 7,
        'stages.3.blocks.1.norm2.weight': 9,
        'out_norms.3.weight': 10,
    }
    for name, depth in cases.items():
        assert backbone.get_layer_depth(f'backbone.{name}',
                                        'backbone.') == (depth, num_layers)
    assert backbone.get_layer_depth('head.fc.weight',
                                    'backbone.') == (10, num_layers)
    names = {n for n, _ in backbone.named_parameters()}
    assert set(cases) - {'stages.3.blocks.1.norm2.weight'} <= names


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    source = VMamba(arch=MICRO_V0).eval()
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'own.pth')
    assert source.convert_checkpoint(source.state_dict()).keys() == (
        source.state_dict().keys())
    target = VMamba(
        arch=MICRO_V0,
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'own.pth')))
    target.init_weights()
    target.eval()
    image = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        for a, b in zip(source(image), target(image)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_wrong_checkpoint_is_reported(tmp_path):
    torch.save({'model': VMamba(arch=MICRO_V0).state_dict()},
               tmp_path / 'v0.pth')
    backbone = VMamba(
        arch=MICRO_V2,
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'v0.pth')))
    with pytest.raises(CheckpointError, match='MISSING'):
        backbone.init_weights()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="arch 'huge'"):
        VMamba(arch='huge')
    with pytest.raises(ValueError, match='missing keys'):
        VMamba(arch=dict(embed_dims=8, depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="arch\\['version'\\]"):
        VMamba(arch=dict(MICRO_V2, version='v3'))
    with pytest.raises(ValueError, match="arch\\['depths'\\]"):
        VMamba(arch=dict(MICRO_V2, depths=(1, 1, 1)))
    with pytest.raises(ValueError, match='out_indices'):
        VMamba(arch=MICRO_V2, out_indices=(4, ))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        VMamba(arch=MICRO_V2)(torch.randn(3, 32, 32))
    kwargs = dict(dims=8, depths=[1, 1, 1, 1], ssm_d_state=1, ssm_ratio=1.0,
                  forward_type='v05_noz', mlp_ratio=4.0, norm_layer='ln2d',
                  downsample_version='v3', patchembed_version='v2')
    assert set(ARCH_ZOO) >= set(ARCH_PARAMS)
    from_official('vmamba', kwargs)
    with pytest.raises(ValueError, match='not a released VMamba variant'):
        from_official('vmamba', dict(kwargs, forward_type='v2'))
    with pytest.raises(ValueError, match='gmlp'):
        from_official('vmamba', dict(kwargs, gmlp=True))
    with pytest.raises(ValueError, match='unsupported'):
        from_official('vmamba', dict(kwargs, mystery=1))


@pytest.mark.parametrize('name,params', [('tiny', ARCH_PARAMS['tiny']),
                                         ('small', ARCH_PARAMS['small']),
                                         ('base', ARCH_PARAMS['base'])])
def test_imagenet_configs_build(name, params):
    """The mmpretrain configs build the published network sizes."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    cfg = Config.fromfile(
        str(REPO_ROOT / 'configs' / 'imagenet' /
            f'vmamba_{name}_8xb128_in1k.py'))
    init_default_scope('mmpretrain')
    with torch.device('meta'):
        model = PRETRAIN_MODELS.build(cfg.model)
    assert isinstance(model.backbone, VMamba)
    # out_norms.3 -> pool -> fc is the authors' classifier
    assert sum(p.numel() for p in model.parameters()) == params
    micro = PRETRAIN_MODELS.build(
        dict(cfg.model, backbone=dict(cfg.model.backbone, arch=MICRO_V2),
             head=dict(cfg.model.head, in_channels=64, num_classes=5)))
    with torch.no_grad():
        logits = micro.head(micro.extract_feat(torch.randn(2, 3, 32, 32)))
    assert logits.shape == (2, 5)


@pytest.mark.cuda
@pytest.mark.parametrize('config', FIXTURE_CONFIGS)
def test_cuda_float32_matches_fixture_and_fp16_is_finite(fixtures_dir,
                                                         config):
    folder, meta, inputs, outputs, _, _ = _fixture(fixtures_dir, config)
    model = from_official('vmamba', meta['constructor_kwargs_VSSM'],
                          str(folder / 'checkpoint.pth')).cuda().eval()
    for name, image in inputs.items():
        with torch.no_grad():
            logits = model(image.cuda())
        _close(logits.cpu(), outputs[f'{name}/logits'], 2e-4)
    image = next(iter(inputs.values())).cuda().requires_grad_()
    with torch.autocast('cuda', dtype=torch.float16):
        logits = model.train()(image)
    assert torch.isfinite(logits.float()).all()
    logits.float().sum().backward()
    assert torch.isfinite(image.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
