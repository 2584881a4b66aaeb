"""Tests of mmssm/models/backbones/vim.py (Vim backbone, converter, parity)."""
import json

import pytest
import torch
import torch.nn.functional as F

from mmssm.models import from_official
from mmssm.models.backbones.vim import (BidirectionalMambaMixer, Vim,
                                        VimClsHead,
                                        convert_official_classifier)
from mmssm.models.layers.plain import RMSNorm, resize_pos_embed
from mmssm.models.utils.checkpoint import CheckpointError
from mmssm.ops.reference import selective_scan_reference
from mmssm.registry import MODELS

MICRO_ARCH = dict(embed_dims=16, num_layers=4, d_state=4)


def _micro_vim(**kwargs) -> Vim:
    options = dict(arch=MICRO_ARCH, img_size=64, out_indices=(0, 1, 2, 3))
    options.update(kwargs)
    return Vim(**options)


def _tol(ref: torch.Tensor) -> float:
    return 1e-5 * max(1.0, ref.abs().max().item())


@pytest.fixture(scope='module')
def vim_fixture(fixtures_dir):
    folder = fixtures_dir / 'vim' / 'micro_midcls'
    meta = json.loads((folder / 'meta.json').read_text())
    return dict(
        folder=folder,
        meta=meta,
        checkpoint=folder / 'checkpoint.pth',
        inputs=torch.load(folder / 'inputs.pt', weights_only=True),
        outputs=torch.load(folder / 'outputs.pt', weights_only=True))


def test_parity_with_official_classifier(vim_fixture):
    kwargs = vim_fixture['meta']['constructor_kwargs_VisionMamba']
    model = from_official('vim', kwargs,
                          str(vim_fixture['checkpoint'])).double().eval()
    outputs = vim_fixture['outputs']
    for name, images in vim_fixture['inputs'].items():
        with torch.no_grad():
            tokens, grid = model.backbone.forward_tokens(images.double())
            logits = model(images.double())
            final_norm = model.head.norm_f(tokens[-1])
        assert grid == tuple(vim_fixture['meta']['tokens']['grid_hw'])
        checks = {'logits': logits, 'final_norm': final_norm}
        checks.update(
            {f'layers.{i}.tokens': t for i, t in enumerate(tokens)})
        assert len(tokens) == kwargs['depth']
        for key, ours in checks.items():
            ref = outputs[f'{name}/{key}']
            assert ours.shape == ref.shape, key
            err = (ours - ref).abs().max().item()
            assert err <= _tol(ref), (key, err)


def test_backbone_loads_official_checkpoint_and_returns_block_maps(
        vim_fixture, tmp_path):
    ref_outputs = vim_fixture['outputs']
    name, images = next(iter(vim_fixture['inputs'].items()))
    backbone = Vim(
        arch=dict(embed_dims=64, num_layers=4, d_state=16),
        img_size=64,
        out_indices=(0, 1, 2, 3),
        pyramid_strides=None,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(vim_fixture['checkpoint'])))
    backbone.init_weights()
    report = backbone.last_load_report
    assert report.ok and not report.unexpected and not report.fresh
    backbone = backbone.double().eval()
    with torch.no_grad():
        maps = backbone(images.double())
    assert backbone.out_strides == (16, ) * 4
    for i, fmap in enumerate(maps):
        tokens = ref_outputs[f'{name}/layers.{i}.tokens']
        patches = torch.cat([tokens[:, :8], tokens[:, 9:]], dim=1)
        expected = patches.transpose(1, 2).reshape(2, 64, 4, 4)
        assert (fmap - expected).abs().max().item() <= _tol(expected)

    # An mmdet/mmseg whole-model checkpoint with ``backbone.`` keys and a
    # final-norm backbone reading the authors' norm_f.
    official = torch.load(vim_fixture['checkpoint'], weights_only=True)
    whole = {'backbone.' + k: v for k, v in official['model'].items()}
    whole['neck.lateral.weight'] = torch.zeros(3)
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': whole, 'meta': {}}, path)
    normed = Vim(
        arch=dict(embed_dims=64, num_layers=4, d_state=16),
        img_size=64,
        out_indices=(-1, ),
        pyramid_strides=None,
        out_type='raw',
        final_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    normed.init_weights()
    assert normed.last_load_report.ok
    assert normed.last_load_report.unexpected == []
    with torch.no_grad():
        (final, ) = normed.double().eval()(images.double())
    ref = ref_outputs[f'{name}/final_norm']
    assert (final - ref).abs().max().item() <= _tol(ref)


def test_convert_resizes_pos_embed_to_model_grid(vim_fixture):
    official = torch.load(vim_fixture['checkpoint'], weights_only=True)
    backbone = Vim(
        arch=dict(embed_dims=64, num_layers=4, d_state=16), img_size=96)
    converted = backbone.convert_checkpoint(dict(official['model']))
    assert not any(k.startswith(('head.', 'norm_f.')) for k in converted)
    pos = converted['pos_embed']
    assert pos.shape == (1, 37, 64)
    source = official['model']['pos_embed']
    torch.testing.assert_close(
        pos, resize_pos_embed(source, (4, 4), (6, 6), with_mid_cls_token=True))
    assert torch.equal(pos[:, 18], source[:, 8])
    bad = dict(official['model'], pos_embed=torch.zeros(1, 13, 64))
    with pytest.raises(ValueError, match='cannot infer the grid'):
        backbone.convert_checkpoint(bad)


OFFICIAL_SIZES = {'Vim-Ti': 192, 'Vim-S': 384, 'Vim-B': 768}
# The authors' published parameter counts (with the ImageNet head).
PUBLISHED_COUNTS = {'Vim-Ti': 7_148_008, 'Vim-S': 25_796_584,
                    'Vim-B': 97_598_440}


def _check_converted(module, converted, allowed_missing_prefix=None):
    own = module.state_dict()
    assert set(converted) <= set(own)
    mismatched = [
        k for k, v in converted.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    assert mismatched == []
    missing = set(own) - set(converted)
    if allowed_missing_prefix is None:
        assert missing == set()
    else:
        assert missing and all(
            k.startswith(allowed_missing_prefix) for k in missing)


def test_full_size_manifests_convert_cleanly_on_meta(fixtures_dir):
    manifests = json.loads(
        (fixtures_dir / 'manifests' /
         'vim_key_manifests.json').read_text())['models']
    assert len(manifests) == 5
    for name, entry in manifests.items():
        family = name.split(' ')[0].rstrip('+')
        stride = 8 if 'stride8' in entry['factory'] else 16
        assert ('stride 8' in name) == (stride == 8)
        official_keys = {
            k: torch.empty(shape, device='meta')
            for k, shape in entry['checkpoint_model_keys'].items()
        }
        with torch.device('meta'):
            classifier = from_official(
                'vim',
                dict(embed_dim=OFFICIAL_SIZES[family], depth=24,
                     stride=stride))
        num_params = sum(p.numel() for p in classifier.parameters())
        assert num_params == entry['num_params_with_head'], name
        if stride == 16:
            assert num_params == PUBLISHED_COUNTS[family], name
        _check_converted(classifier,
                         convert_official_classifier(dict(official_keys)))
        backbone = classifier.backbone
        _check_converted(backbone,
                         backbone.convert_checkpoint(dict(official_keys)))
        if family == 'Vim-Ti':
            # The detection backbone: only the pyramid adapter is new.
            with torch.device('meta'):
                detection = Vim(arch='tiny', stride=stride)
            _check_converted(detection,
                             detection.convert_checkpoint(dict(official_keys)),
                             allowed_missing_prefix='adapter.')


def test_official_kwargs_are_validated():
    with pytest.raises(ValueError, match='if_rope=True is not supported'):
        from_official('vim', dict(if_rope=True, depth=1, embed_dim=16))
    with pytest.raises(ValueError, match=r"unsupported VisionMamba arguments "
                       r"\['not_an_argument'\]"):
        from_official('vim', dict(not_an_argument=1))
    with pytest.raises(ValueError, match='final_pool_type'):
        from_official('vim', dict(final_pool_type='max', depth=1,
                                  embed_dim=16))


def _mixer_reference(mixer: BidirectionalMambaMixer,
                     tokens: torch.Tensor) -> torch.Tensor:
    """The authors' bimamba-v2 mixer written with the naive scan."""
    xz = mixer.in_proj(tokens).transpose(1, 2)
    outputs = []
    for suffix, seq in (('', xz), ('_b', xz.flip(-1))):
        x, z = seq.chunk(2, dim=1)
        conv = getattr(mixer, 'conv1d' + suffix)
        u = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=3,
                            groups=x.shape[1])[..., :x.shape[-1]])
        proj = u.transpose(1, 2) @ getattr(mixer, 'x_proj' + suffix).weight.T
        rank, n = mixer.dt_rank, mixer.d_state
        dt_proj = getattr(mixer, 'dt_proj' + suffix)
        delta = (proj[..., :rank] @ dt_proj.weight.T).transpose(1, 2)
        y = selective_scan_reference(
            u, delta, -torch.exp(getattr(mixer, 'A' + suffix + '_log')),
            proj[..., rank:rank + n].transpose(1, 2),
            proj[..., rank + n:].transpose(1, 2),
            D=getattr(mixer, 'D' + suffix), z=z, delta_bias=dt_proj.bias,
            delta_softplus=True)
        outputs.append(y)
    mixed = (outputs[0] + outputs[1].flip(-1)) / 2
    return mixer.out_proj(mixed.transpose(1, 2))


def test_mixer_matches_naive_reference():
    torch.manual_seed(0)
    mixer = BidirectionalMambaMixer(8, d_state=3, num_layers=2).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
    tokens = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    ours, ref = mixer(tokens), _mixer_reference(mixer, tokens)
    torch.testing.assert_close(ours, ref)
    weight = torch.randn_like(ours)
    params = [tokens] + list(mixer.parameters())
    grads = torch.autograd.grad((ours * weight).sum(), params)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)


def test_pyramid_shapes_odd_size_and_padding():
    torch.manual_seed(0)
    model = _micro_vim().eval()
    assert model.out_strides == (4, 8, 16, 32)
    assert model.out_channels == (16, ) * 4
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        outs = model(x)
        padded = model(F.pad(x, (0, 144 - 131, 0, 112 - 97)))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 28, 36), (2, 16, 14, 18),
                                              (2, 16, 7, 9), (2, 16, 4, 5)]
    for out, ref in zip(outs, padded):
        torch.testing.assert_close(out, ref)


def test_out_indices_subsets_match_full_model():
    torch.manual_seed(0)
    full = _micro_vim(pyramid_strides=None).eval()
    subset = _micro_vim(out_indices=(-1, 1), pyramid_strides=None).eval()
    subset.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        all_maps = full(x)
        maps = subset(x)
    assert subset.out_indices == (1, 3)
    assert len(maps) == 2
    assert torch.equal(maps[0], all_maps[1])
    assert torch.equal(maps[1], all_maps[3])
    pyramid = _micro_vim(out_indices=(1, 3), pyramid_strides=(8, 32))
    with torch.no_grad():
        shapes = [tuple(o.shape[-2:]) for o in pyramid(x)]
    assert shapes == [(6, 10), (2, 3)]
    assert pyramid.out_strides == (8, 32)


def test_default_out_indices_and_stride8_pyramid():
    assert Vim(arch=dict(embed_dims=8, num_layers=24, d_state=2)).out_indices \
        == (5, 11, 17, 23)
    model = _micro_vim(stride=8).eval()
    with torch.no_grad():
        tokens, grid = model.forward_tokens(torch.randn(1, 3, 64, 64), 1)
        outs = model(torch.randn(1, 3, 64, 64))
    # The authors' grid formula (64 - 16) // 8 + 1 = 7.
    assert grid == (7, 7) and tokens[0].shape == (1, 50, 16)
    assert [tuple(o.shape[-2:]) for o in outs] == [(14, 14), (7, 7), (4, 4),
                                                   (2, 2)]


def test_batch_of_one_equals_batch_member():
    torch.manual_seed(0)
    model = _micro_vim().double().eval()
    x = torch.randn(3, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        batch = model(x)
        single = model(x[1:2])
    for b, s in zip(batch, single):
        torch.testing.assert_close(b[1:2], s)


def test_cls_token_and_raw_outputs():
    torch.manual_seed(0)
    model = _micro_vim(out_type='raw', pyramid_strides=None,
                       out_indices=(2, )).eval()
    cls_model = _micro_vim(out_type='cls_token', pyramid_strides=None,
                           out_indices=(2, ), final_norm=True).eval()
    cls_model.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        (raw, ) = model(x)
        (cls_token, ) = cls_model(x)
    # 4 x 3 grid: the class token sits at index 12 // 2 = 6.
    assert raw.shape == (2, 13, 16)
    torch.testing.assert_close(cls_token, cls_model.norm_f(raw[:, 6]))


def test_embedding_interpolates_pos_embed_and_keeps_cls_position():
    torch.manual_seed(0)
    model = _micro_vim().double()
    x = torch.randn(1, 3, 48, 80, dtype=torch.float64)
    stream, grid = model.embed(x)
    assert grid == (3, 5)
    patches, _ = model.patch_embed(x)
    pos = resize_pos_embed(model.pos_embed, (4, 4), (3, 5), True)
    torch.testing.assert_close(stream[:, 7], (model.cls_token + pos[:, 7])[0])
    torch.testing.assert_close(stream[:, :7], patches[:, :7] + pos[:, :7])
    torch.testing.assert_close(stream[:, 8:], patches[:, 7:] + pos[:, 8:])


def test_frozen_stages():
    model = _micro_vim(frozen_stages=2)
    model.train()
    frozen = {'cls_token', 'pos_embed'}
    for name, param in model.named_parameters():
        expect_frozen = (name in frozen or name.startswith(
            ('patch_embed.', 'layers.0.', 'layers.1.')))
        assert param.requires_grad != expect_frozen, name
    assert not model.layers[1].training and model.layers[2].training
    outs = model(torch.randn(1, 3, 32, 32))
    sum(o.sum() for o in outs).backward()
    assert model.layers[0].mixer.in_proj.weight.grad is None
    assert model.layers[2].mixer.in_proj.weight.grad is not None
    with pytest.raises(ValueError, match='frozen_stages'):
        _micro_vim(frozen_stages=5)


def test_with_cp_identical_outputs_and_grads():
    torch.manual_seed(0)
    plain = _micro_vim().train()
    checkpointed = _micro_vim(with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 48)
    results = []
    for model in (plain, checkpointed):
        outs = model(x)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
                   for o in outs)
        loss.backward()
        results.append((outs, {
            n: p.grad.clone()
            for n, p in model.named_parameters()
        }))
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.equal(a, b)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=0, atol=0)


def test_bf16_autocast_is_finite():
    model = _micro_vim().train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.randn(2, 3, 48, 48))
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.float().sum() for o in outs).backward()
    assert torch.isfinite(model.layers[0].mixer.A_b_log.grad).all()


def test_bf16_autocast_matches_float32(bf16_autocast_errors):
    # The block norms store bfloat16 under autocast while the residual
    # stream stays float32: outputs stay within bfloat16 error of float32.
    errors = bf16_autocast_errors(_micro_vim(), torch.randn(2, 3, 48, 48))
    assert max(errors) < 1.5e-2, errors


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"arch 'huge' is not one of"):
        Vim(arch='huge')
    with pytest.raises(ValueError, match='exactly the keys'):
        Vim(arch=dict(embed_dims=16, num_layers=2))
    with pytest.raises(ValueError, match='out_type must be one of'):
        _micro_vim(out_type='tokens')
    with pytest.raises(ValueError, match='one stride per out_indices'):
        _micro_vim(out_indices=(1, 3))
    with pytest.raises(ValueError, match="needs out_type='featmap'"):
        _micro_vim(out_type='raw')
    with pytest.raises(ValueError, match='out of range'):
        _micro_vim(out_indices=(4, ), pyramid_strides=None)


def test_get_layer_depth_and_registry_build():
    model = MODELS.build(
        dict(type='mmssm.Vim', arch=MICRO_ARCH, out_indices=(0, 1, 2, 3)))
    assert isinstance(model, Vim)
    assert model.get_layer_depth('backbone.pos_embed', 'backbone.') == (0, 6)
    assert model.get_layer_depth('backbone.layers.3.mixer.D',
                                 'backbone.') == (4, 6)
    assert model.get_layer_depth('backbone.adapter.branches.0.0.weight',
                                 'backbone.') == (5, 6)


def test_classifier_head_and_converter_names():
    head = VimClsHead(8, 5)
    tokens = torch.randn(2, 17, 8)
    torch.testing.assert_close(head([tokens]),
                               head.fc(head.norm_f(tokens[:, 8])))
    assert isinstance(head.norm_f, RMSNorm)
    with pytest.raises(ValueError, match="out_type='raw'"):
        head([torch.randn(2, 8, 4, 4)])
    renamed = convert_official_classifier({
        'norm_f.weight': torch.ones(1),
        'head.weight': torch.ones(1),
        'head.bias': torch.ones(1),
        'layers.0.mixer.D': torch.ones(1),
        'backbone.cls_token': torch.ones(1),
    })
    assert set(renamed) == {
        'head.norm_f.weight', 'head.fc.weight', 'head.fc.bias',
        'backbone.layers.0.mixer.D', 'backbone.cls_token'
    }


def test_pretrained_load_reports_missing_keys(vim_fixture):
    wrong_depth = Vim(
        arch=dict(embed_dims=64, num_layers=5, d_state=16),
        img_size=64,
        pyramid_strides=None,
        out_indices=(0, ),
        init_cfg=dict(
            type='Pretrained', checkpoint=str(vim_fixture['checkpoint'])))
    with pytest.raises(CheckpointError, match='layers.4.mixer'):
        wrong_depth.init_weights()


def test_imagenet_configs_build_an_mmpretrain_classifier():
    from pathlib import Path

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

    config_dir = Path(__file__).resolve().parents[2] / 'configs' / 'imagenet'
    files = sorted(config_dir.glob('vim_*.py'))
    assert len(files) == 5
    fine_tune = Config.fromfile(config_dir /
                                'vim_tiny_stride8_8xb128_in1k_ft.py')
    assert fine_tune.model.backbone.stride == 8
    assert fine_tune.model.backbone.init_cfg.type == 'Pretrained'
    cfg = Config.fromfile(config_dir / 'vim_tiny_8xb128_in1k.py')
    cfg.model.backbone.arch = MICRO_ARCH
    cfg.model.backbone.img_size = 32
    cfg.model.head.in_channels = MICRO_ARCH['embed_dims']
    cfg.model.head.num_classes = 7
    init_default_scope('mmpretrain')
    classifier = MMPRETRAIN_MODELS.build(cfg.model)
    classifier.init_weights()
    # The classifier's init must not overwrite the backbone's own init.
    assert torch.equal(
        classifier.backbone.layers[0].mixer.A_log[0],
        torch.log(torch.arange(1.0, 5.0)))
    logits = classifier(torch.randn(2, 3, 32, 32), mode='tensor')
    assert logits.shape == (2, 7)
