"""Tests of the Mamba2D backbone, its converters and its official parity."""
import copy
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmssm.models.backbones.mamba2d import (Mamba2D, Mamba2DClsHead,
                                            SSM2DMixer,
                                            convert_backbone_checkpoint,
                                            convert_official_classifier)
from mmssm.models.official import SSMClassifier, from_official
from mmssm.models.utils.checkpoint import CheckpointError
from mmssm.registry import MODELS

# The micro_T fixture's shape: every code path of the released models.
MICRO = dict(embed_dims=(16, 32, 48, 64), depths=(2, 2, 2, 1))
# Cheaper, same code paths (attention width 32 differs from C = 40).
SMALL = dict(embed_dims=(8, 16, 32, 40), depths=(2, 2, 1, 1))
ARCH_MANIFEST = {'nano': 'M2D-N', 'tiny': 'M2D-T', 'small': 'M2D-S'}
CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'imagenet'


def _close(actual: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5):
    assert actual.shape == ref.shape
    err = (actual.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= rel * scale, (err, scale)


def _small(**kwargs) -> Mamba2D:
    torch.manual_seed(0)
    return Mamba2D(arch=SMALL, d_state=4, **kwargs)


@pytest.fixture(scope='module')
def micro_t(fixtures_dir):
    folder = fixtures_dir / 'mamba2d' / 'micro_T'
    meta = json.loads((folder / 'meta.json').read_text())
    inputs = torch.load(folder / 'inputs.pt', weights_only=True)
    outputs = torch.load(folder / 'outputs.pt', weights_only=True)
    return folder, meta, inputs, outputs


@pytest.fixture(scope='module')
def manifests(fixtures_dir):
    path = fixtures_dir / 'manifests' / 'mamba2d_key_manifests.json'
    return json.loads(path.read_text())['models']


def _official_kwargs(meta: dict) -> dict:
    return {
        **meta['constructor_kwargs_backbone'], 'head':
        meta['constructor_kwargs_MlpHead']
    }


def test_official_parity_logits_and_features(micro_t):
    folder, meta, inputs, outputs = micro_t
    model = from_official('mamba2d', _official_kwargs(meta),
                          str(folder / 'checkpoint.ckpt'))
    assert isinstance(model, SSMClassifier)
    assert model.backbone.out_indices == (0, 1, 2, 3)
    model = model.double().eval()
    with torch.no_grad():
        for name, x in inputs.items():
            # SSMClassifier.forward is head(backbone(x)): run the backbone once
            feats = model.backbone(x.double())
            for i in range(4):
                _close(feats[i], outputs[f'{name}/features.{i}'])
            _close(model.head(feats), outputs[f'{name}/logits'])


def test_pretrained_init_cfg_gives_fixture_features(micro_t):
    folder, _, inputs, outputs = micro_t
    backbone = Mamba2D(
        arch=MICRO,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(folder / 'checkpoint.ckpt')))
    backbone.init_weights()
    report = backbone.last_load_report
    assert report.ok and not report.unexpected
    assert len(report.loaded) == len(backbone.state_dict())
    backbone = backbone.double().eval()
    name = 'img_1x3x64x96'
    with torch.no_grad():
        feats = backbone(inputs[name].double())
    for i in range(4):
        _close(feats[i], outputs[f'{name}/features.{i}'])


@pytest.mark.parametrize('arch', sorted(ARCH_MANIFEST))
def test_manifests_convert_cleanly(manifests, arch):
    spec = manifests[ARCH_MANIFEST[arch]]
    official = {
        k: torch.empty(shape, device='meta')
        for k, shape in spec['checkpoint_state_dict_keys'].items()
    }
    with torch.device('meta'):
        classifier = from_official('mamba2d', {
            **spec['backbone_init_args'], 'head': spec['head_init_args']
        })
        backbone = Mamba2D(arch)
    # The manifests count parameters (no buffers), as the authors' summary.
    assert sum(p.numel() for p in classifier.parameters()
               ) == spec['num_params_with_head']
    assert sum(p.numel()
               for p in backbone.parameters()) == spec['num_params_backbone']
    for module, converted in ((classifier,
                               convert_official_classifier(official)),
                              (backbone,
                               backbone.convert_checkpoint(official))):
        own = module.state_dict()
        assert set(converted) == set(own)
        for key, value in converted.items():
            assert value.shape == own[key].shape, key


def test_convert_checkpoint_accepts_every_format():
    backbone = _small()
    own = backbone.state_dict()
    # mmssm keys are kept, with or without an mmdet/mmseg 'backbone.' prefix.
    assert backbone.convert_checkpoint(dict(own)).keys() == own.keys()
    prefixed = {f'backbone.{k}': v for k, v in own.items()}
    prefixed.update({
        'head.fc2.weight': torch.zeros(1),
        'norm.bias': torch.zeros(1)
    })
    converted = backbone.convert_checkpoint(prefixed)
    assert converted.keys() == own.keys()
    assert all(converted[k] is own[k] for k in own)
    # The authors' downstream names (no prefix) map onto ours.
    official = {
        'ds.stem.post_norm.norm.weight': 'stem.norm.weight',
        'ds.ds2.conv.bias': 'stages.2.downsample.bias',
        'stages.1.2.weight': 'stages.1.norm.weight',
        'stages.0.1.token_mixer.AL_log': 'stages.0.blocks.1.mixer.A_log_left',
        'stages.0.0.token_mixer.local_path.pwconv2.weight':
        'stages.0.blocks.0.mixer.local_path.pw_project.weight',
        'stages.2.1.token_mixer.q_norm.bias':
        'stages.2.blocks.1.mixer.q_norm.bias',
        'stages.3.0.res_scale2.scale': 'stages.3.blocks.0.res_scale2',
        'stages.3.0.MLP.fc1.weight': 'stages.3.blocks.0.mlp.fc1.weight',
    }
    tensors = {k: torch.full((1, ), float(i)) for i, k in enumerate(official)}
    converted = convert_backbone_checkpoint(tensors)
    assert list(converted) == [official[k] for k in tensors]
    assert all(converted[official[k]] is v for k, v in tensors.items())
    classifier = convert_official_classifier({
        'backbone.stages.0.0.token_mixer.D': tensors['ds.ds2.conv.bias'],
        'norm.weight': tensors['stages.1.2.weight'],
        'head.norm.bias': tensors['ds.stem.post_norm.norm.weight'],
    })
    assert list(classifier) == [
        'backbone.stages.0.blocks.0.mixer.D', 'head.pool_norm.weight',
        'head.norm.bias'
    ]


def test_whole_detector_checkpoint_loads(tmp_path):
    source = _small()
    for param in source.parameters():
        param.data.normal_()
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['neck.lateral.weight'] = torch.zeros(2)
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 1}}, path)
    pretrained = dict(type='Pretrained', checkpoint=str(path))
    target = Mamba2D(arch=SMALL, d_state=4, init_cfg=pretrained)
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    missing_norm = {k: v for k, v in state.items() if 'stages.3.norm' not in k}
    torch.save({'state_dict': missing_norm}, path)
    with pytest.raises(CheckpointError, match='stages.3.norm.weight'):
        Mamba2D(arch=SMALL, d_state=4, init_cfg=pretrained).init_weights()


def test_out_indices_subsets_and_metadata():
    full = _small().eval()
    partial = _small(out_indices=(-1, 1)).eval()
    partial.load_state_dict(full.state_dict())
    assert full.out_channels == (8, 16, 32, 40)
    assert full.out_strides == (4, 8, 16, 32)
    assert partial.out_indices == (1, 3)
    assert partial.out_channels == (16, 40)
    assert partial.out_strides == (8, 32)
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        all_feats = full(x)
        feats = partial(x)
    assert len(feats) == 2
    assert torch.equal(feats[0], all_feats[1])
    assert torch.equal(feats[1], all_feats[3])
    with pytest.raises(ValueError, match='out_indices'):
        _small(out_indices=(4, ))


def test_odd_size_single_image():
    model = _small().eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 97, 131))
    # stem floor((H - 3) / 4) + 1, then ceil(H / 2)
    sizes = [(24, 33), (12, 17), (6, 9), (3, 5)]
    for i, feat in enumerate(feats):
        assert feat.shape == (1, SMALL['embed_dims'][i], *sizes[i])
        assert feat.is_contiguous()
        assert torch.isfinite(feat).all()
        # the stage-closing LayerNorm: unit variance up to its affine
        assert 0.1 < feat.std() < 10


def test_batch_independence_at_odd_sizes():
    model = _small().double().eval()
    x = torch.randn(2, 3, 29, 35, dtype=torch.float64)
    with torch.no_grad():
        pair = model(x)
        single = model(x[1:])
    for both, one in zip(pair, single):
        _close(one, both[1:], rel=1e-12)
    assert (pair[0][0] - pair[0][1]).abs().max() > 1e-3


def test_bottom_right_origin_is_the_flipped_top_left_scan():
    # The authors flip the SSM path (not the local path) on H and W for odd
    # blocks: with a flipped depthwise kernel, the whole mixer commutes.
    torch.manual_seed(1)
    br = SSM2DMixer(8, d_state=4, origin='br').double()
    for param in br.parameters():
        param.data.add_(0.1 * torch.randn_like(param))
    tl = SSM2DMixer(8, d_state=4, origin='tl').double()
    tl.load_state_dict(br.state_dict())
    tl.local_path.dw_conv.weight.data = br.local_path.dw_conv.weight.flip(
        2, 3)
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    expected = tl(x.flip(1, 2)).flip(1, 2)
    _close(br(x), expected, rel=1e-12)
    assert (br(x) - tl(x)).abs().max() > 1e-3


def test_frozen_stages():
    model = _small(frozen_stages=1)
    model.train()
    frozen = [model.stem, model.stages[0]]
    for module in frozen:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    for stage in model.stages[1:]:
        assert stage.training
        assert all(p.requires_grad for p in stage.parameters())
    assert all(p.requires_grad for p in _small().parameters())
    stem_only = _small(frozen_stages=0).train()
    assert not any(p.requires_grad for p in stem_only.stem.parameters())
    assert all(p.requires_grad for p in stem_only.stages.parameters())
    with pytest.raises(ValueError, match='frozen_stages'):
        _small(frozen_stages=5)


def test_with_cp_gives_identical_outputs_and_grads():
    plain = _small(drop_path_rate=0.2).train()
    checkpointed = _small(drop_path_rate=0.2, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 35, 29)
    results = []
    for model in (plain, checkpointed):
        # checkpointing must replay the same drop-path draws
        torch.manual_seed(3)
        feats = model(x)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum()
            for f in feats).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((feats, grads))
    (feats_a, grads_a), (feats_b, grads_b) = results
    for a, b in zip(feats_a, feats_b):
        assert torch.equal(a, b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        _close(grads_b[name], grads_a[name], rel=1e-6)
    assert grads_a['stages.0.blocks.1.mixer.A_log_top'].abs().max() > 0


def test_bf16_autocast_is_finite():
    model = _small().eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        feats = model(x)
    with torch.no_grad():
        ref = model(x)
    for feat, expected in zip(feats, ref):
        assert torch.isfinite(feat).all()
        # bf16 keeps ~3 significant digits; the maps are LayerNorm outputs.
        assert (feat.float() - expected).abs().mean() < 0.1


@pytest.mark.parametrize(
    'arch, message',
    [('huge', 'arch must be one of'),
     (dict(embed_dims=(8, 16)), "'depths'"),
     (dict(embed_dims=(8, 16), depths=(1, )), 'one entry per stage'),
     (dict(embed_dims=(8, ), depths=(1, ), mixers=('mamba', )),
      "'mixers' must be"),
     (dict(embed_dims=(8, ), depths=(1, ), width=2), 'unknown keys')])
def test_bad_arch_raises(arch, message):
    with pytest.raises(ValueError, match=message):
        Mamba2D(arch=arch)


def test_bad_input_raises():
    model = _small()
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match='H and W >= 3'):
        model(torch.randn(1, 3, 2, 32))


def test_get_layer_depth():
    with torch.device('meta'):
        model = Mamba2D('tiny')
    # depths (3, 3, 9, 3): 18 blocks + stem + everything after the backbone
    assert model.get_layer_depth('backbone.stem.conv.weight',
                                 'backbone.') == (0, 20)
    cases = {
        'stages.0.blocks.0.norm1.weight': 1,
        'stages.0.norm.bias': 3,
        'stages.1.downsample.weight': 3,
        'stages.1.blocks.0.mixer.D': 4,
        'stages.2.blocks.8.mlp.fc2.bias': 15,
        'stages.3.blocks.2.res_scale2': 18,
        'stages.3.norm.weight': 18,
    }
    for name, layer in cases.items():
        assert model.get_layer_depth(name) == (layer, 20), name
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (19, 20)
    depths = [model.get_layer_depth(n)[0] for n, _ in model.named_parameters()]
    assert depths == sorted(depths) and 0 == depths[0] and depths[-1] == 18
    with pytest.raises(ValueError, match='not a Mamba2D parameter'):
        model.get_layer_depth('backbone.blocks.0.weight', 'backbone.')


def test_registry_build_and_classifier_head():
    with torch.device('meta'):
        backbone = MODELS.build(
            dict(type='mmssm.Mamba2D', arch='nano', out_indices=(2, 3)))
    assert backbone.out_channels == (160, 256)
    head = Mamba2DClsHead(64, num_classes=7).double()
    feats = (torch.randn(2, 64, 3, 5, dtype=torch.float64), )
    pooled = torch.nn.functional.layer_norm(
        feats[0].mean((2, 3)), (64, ), head.pool_norm.weight,
        head.pool_norm.bias)
    hidden = head.norm(torch.nn.functional.gelu(head.fc1(pooled)))
    _close(head.eval()(feats), head.fc2(hidden), rel=1e-12)


def test_from_official_rejects_unsupported_arguments():
    kwargs = dict(
        n_blocks=[1, 1],
        embed_dim=[8, 16],
        ds_stages=['mf_stem', 'mf_2'],
        token_mixer=['2D_local', 'RopeAttention'],
        res_scale_init_values=[1.0, 1.0])
    model = from_official('mamba2d', copy.deepcopy(kwargs))
    assert model.head.fc2.out_features == 1000
    bad = {
        'featmaps_out': True,
        'token_mixer': ['2D', 'RopeAttention'],
        'ds_stages': [4, 'mf_2'],
        'res_scale_init_values': [None, 1.0],
        'head': dict(dim=9),
    }
    for key, value in bad.items():
        with pytest.raises(ValueError):
            from_official('mamba2d', {**kwargs, key: value})


@pytest.mark.parametrize('arch', sorted(ARCH_MANIFEST))
def test_imagenet_configs_build(manifests, arch):
    pytest.importorskip('mmpretrain')
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    cfg = Config.fromfile(CONFIG_DIR / f'mamba2d_{arch}_8xb128_in1k.py')
    with torch.device('meta'):
        model = PRETRAIN_MODELS.build(cfg.model)
    spec = manifests[ARCH_MANIFEST[arch]]
    assert isinstance(model.backbone, Mamba2D)
    assert list(model.backbone.embed_dims) == spec['backbone_init_args'][
        'embed_dim']
    # mmssm.MlpClsHead is the authors' head: the counts are equal.
    assert sum(p.numel() for p in model.parameters()
               ) == spec['num_params_with_head']
    assert cfg.model.backbone.drop_path_rate == spec['backbone_init_args'][
        'drop_path_rate']
    assert cfg.model.head.dropout_rate == spec['head_init_args'][
        'head_dropout']
