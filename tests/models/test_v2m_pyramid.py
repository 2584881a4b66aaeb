"""Tests of the pyramid V2M backbone (V2M-S*, V2M-B*)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmssm.models.backbones.v2m_pyramid import (CORNERS, V2M2DMixer,
                                                V2MPyramid)
from mmssm.models.backbones.vmamba import VMamba, VMambaClassifierHead
from mmssm.models.official import SSMClassifier
from mmssm.ops import selective_scan
from mmssm.registry import MODELS

MICRO = dict(
    embed_dims=8, depths=(1, 1, 2, 1), d_state=2, ssm_ratio=2.0,
    mlp_ratio=2.0)


def _reference_mixer(mixer: V2M2DMixer, x: torch.Tensor) -> torch.Tensor:
    """The mixer written with flipped copies and 1D scans over lines."""
    batch, height, width, _ = x.shape
    d_inner, state = mixer.d_inner, mixer.d_state
    u = F.silu(mixer.dwconv(mixer.in_proj(x).permute(0, 3, 1, 2)))
    ones = u.new_ones(d_inner, state)
    rows_as_batch = (lambda t: t.permute(0, 2, 1, 3).reshape(
        batch * height, -1, width))
    cols_as_batch = (lambda t: t.permute(0, 3, 1, 2).reshape(
        batch * width, -1, height))
    total = 0
    for k, corner in enumerate(CORNERS):
        # a corner's scan is the top-left scan of the flipped map
        flips = [d for d, flip in ((3, corner[1] == 'r'),
                                   (2, corner[0] == 'b')) if flip]
        uk = u.flip(flips)
        part = slice(k * d_inner, (k + 1) * d_inner)
        proj = torch.einsum('bdhw,cd->bchw', uk, mixer.row_x_proj_weight[k])
        dt, matrix_b = proj.split([mixer.dt_rank, state], dim=1)
        delta = torch.einsum('brhw,dr->bdhw', dt,
                             mixer.row_dt_proj_weight[k])
        rows = selective_scan(
            rows_as_batch(uk), rows_as_batch(delta),
            -torch.exp(mixer.row_A_log[part]), rows_as_batch(matrix_b), ones,
            delta_bias=mixer.row_dt_proj_bias[k], delta_softplus=True)
        rows = rows.reshape(batch, height, d_inner, width).permute(0, 2, 1, 3)
        proj = torch.einsum('bdhw,cd->bchw', rows,
                            mixer.col_x_proj_weight[k])
        dt, matrix_c = proj.split([mixer.dt_rank, state], dim=1)
        delta = torch.einsum('brhw,dr->bdhw', dt,
                             mixer.col_dt_proj_weight[k])
        y = selective_scan(
            cols_as_batch(rows), cols_as_batch(delta),
            -torch.exp(mixer.col_A_log[part]), ones, cols_as_batch(matrix_c),
            D=mixer.col_D[part], delta_bias=mixer.col_dt_proj_bias[k],
            delta_softplus=True)
        y = y.reshape(batch, width, d_inner, height).permute(0, 2, 3, 1)
        total = total + y.flip(flips)
    norm = mixer.out_norm
    return mixer.out_proj(
        F.layer_norm(
            total.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight,
            norm.bias, norm.eps))


@pytest.mark.parametrize('size', [(5, 7), (6, 1), (1, 4)])
def test_mixer_matches_flipped_line_scans(size):
    torch.manual_seed(0)
    mixer = V2M2DMixer(8, d_state=3, ssm_ratio=1.5, conv_bias=True).double()
    with torch.no_grad():
        for name, param in mixer.named_parameters():
            if name.startswith(('row_', 'col_')):
                param.mul_(1 + 0.2 * torch.randn_like(param))
    x = torch.randn(2, *size, 8, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    ref = _reference_mixer(mixer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(out)
    inputs = [x, mixer.row_A_log, mixer.col_A_log, mixer.col_x_proj_weight]

    def gradients(result):
        # A of a pass along 1-pixel lines has no effect (no gradient)
        grads = torch.autograd.grad((result * weight).sum(), inputs,
                                    allow_unused=True)
        return [torch.zeros_like(t) if g is None else g
                for g, t in zip(grads, inputs)]

    for grad, ref_grad in zip(gradients(out), gradients(ref)):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-10)


def test_every_corner_reaches_every_pixel():
    torch.manual_seed(0)
    mixer = V2M2DMixer(4, d_state=1, ssm_ratio=1.0).double()
    x = torch.randn(1, 5, 6, 4, dtype=torch.float64, requires_grad=True)
    # dwconv couples 3x3 neighbourhoods: probe the corner pixels far apart
    for i, j in ((0, 0), (0, 5), (4, 0), (4, 5)):
        grad, = torch.autograd.grad(mixer(x)[0, i, j].sum(), x)
        assert (grad[0].abs().sum(-1) > 0).all(), (i, j)


@pytest.mark.parametrize('arch,millions', [('small', 30), ('base', 50)])
def test_parameter_counts_match_the_paper(arch, millions):
    with torch.device('meta'):
        backbone = V2MPyramid(arch=arch, out_indices=(3, ),
                              with_out_norm=False)
        model = SSMClassifier(backbone, VMambaClassifierHead(
            backbone.out_channels[-1], 1000))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - millions * 1e6) <= 0.01 * millions * 1e6, count
    assert count == {'small': 30_290_536, 'base': 50_273_704}[arch]


def test_output_shapes_odd_sizes_and_batch_one():
    backbone = MODELS.build(dict(type='mmssm.V2MPyramid', arch=MICRO)).eval()
    assert backbone.out_channels == (8, 16, 32, 64)
    assert backbone.out_strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 97, 131))
    sizes = [(25, 33), (13, 17), (7, 9), (4, 5)]
    assert [tuple(f.shape) for f in feats] == [
        (1, c, h, w) for c, (h, w) in zip(backbone.out_channels, sizes)]
    assert all(torch.isfinite(f).all() for f in feats)


def test_out_indices_frozen_stages_and_layer_depth():
    torch.manual_seed(0)
    full = V2MPyramid(arch=MICRO).eval()
    part = V2MPyramid(arch=MICRO, out_indices=(1, 2), frozen_stages=1)
    part.load_state_dict(
        {k: v for k, v in full.state_dict().items() if k in
         part.state_dict()})
    part.train()
    assert not part.stages[0].training and part.stages[1].training
    for name, param in part.named_parameters():
        assert param.requires_grad != name.startswith(
            ('patch_embed.', 'stages.0.')), name
    image = torch.randn(1, 3, 32, 24)
    with torch.no_grad():
        all_feats = full(image)
        feats = part.eval()(image)
    assert part.out_channels == (16, 32)
    for got, want in zip(feats, all_feats[1:3]):
        torch.testing.assert_close(got, want)
    assert part.get_layer_depth('stages.2.blocks.1.mixer.col_D') == (4, 7)
    assert part.get_layer_depth('stages.2.downsample.conv.weight') == (2, 7)


def test_with_cp_gives_identical_outputs_and_grads():
    torch.manual_seed(0)
    plain = V2MPyramid(arch=MICRO).train()
    checkpointed = V2MPyramid(arch=MICRO, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    # stage 3 is 2x2: a 1-pixel line would give A no gradient
    image = torch.randn(1, 3, 48, 64)
    results = []
    for model in (plain, checkpointed):
        feats = model(image)
        sum((f * torch.cos(torch.arange(f.numel()).view_as(f))).sum()
            for f in feats).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((feats, grads))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, grad in results[0][1].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5,
                                   atol=1e-7)


def test_bf16_autocast_is_finite():
    backbone = V2MPyramid(arch=MICRO, drop_path_rate=0.1).train()
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


def test_partial_init_from_official_vmamba_checkpoint(fixtures_dir):
    """VMamba v2 weights fill all but the column pass (module docstring)."""
    checkpoint = fixtures_dir / 'vmamba' / 'micro_v2_s1' / 'checkpoint.pth'
    source = torch.load(checkpoint, weights_only=True)['model']
    arch = dict(embed_dims=32, depths=(1, 1, 2, 1), d_state=1, ssm_ratio=1.0,
                mlp_ratio=4.0)
    torch.manual_seed(0)
    backbone = V2MPyramid(
        arch=arch,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.init_weights()
    report = backbone.last_load_report
    assert not report.missing and not report.unexpected
    assert sorted(report.fresh) == sorted(
        k for k in before
        if k.startswith('out_norms.') or '.mixer.col_' in k)
    state = backbone.state_dict()
    for key in report.fresh:
        assert torch.equal(state[key], before[key]), key
    # copied as is
    assert torch.equal(state['patch_embed.conv2.weight'],
                       source['patch_embed.5.weight'])
    assert torch.equal(state['stages.2.downsample.norm.bias'],
                       source['layers.1.downsample.3.bias'])
    assert torch.equal(state['stages.2.blocks.1.mlp.fc2.weight'],
                       source['layers.2.blocks.1.mlp.fc2.weight'])
    assert torch.equal(state['stages.3.blocks.0.mixer.out_proj.weight'],
                       source['layers.3.blocks.0.op.out_proj.weight'])
    # row pass: VMamba's first Δ-rank components, its B rows, A and Δ bias
    mixer = backbone.stages[1].blocks[0].mixer
    vmamba = 'layers.1.blocks.0.op.'
    rank = mixer.dt_rank
    vmamba_rank = source[vmamba + 'dt_projs_weight'].shape[-1]
    assert rank == 2 and vmamba_rank == 4
    x_proj = source[vmamba + 'x_proj_weight']
    assert torch.equal(mixer.row_x_proj_weight[:, :rank], x_proj[:, :rank])
    assert torch.equal(mixer.row_x_proj_weight[:, rank:],
                       x_proj[:, vmamba_rank:vmamba_rank + 1])
    assert torch.equal(mixer.row_dt_proj_weight,
                       source[vmamba + 'dt_projs_weight'][..., :rank])
    assert torch.equal(mixer.row_dt_proj_bias,
                       source[vmamba + 'dt_projs_bias'])
    assert torch.equal(mixer.row_A_log, source[vmamba + 'A_logs'])
    with torch.no_grad():
        assert all(torch.isfinite(f).all()
                   for f in backbone.eval()(torch.randn(1, 3, 32, 32)))


def test_mmssm_vmamba_and_own_checkpoints(tmp_path):
    torch.manual_seed(0)
    vmamba_arch = dict(MICRO, version='v2', dt_rank=2)
    vmamba = VMamba(arch=vmamba_arch)
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in vmamba.state_dict().items()},
                'neck': {}}, tmp_path / 'vmamba.pth')
    pyramid = V2MPyramid(arch=MICRO, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'vmamba.pth'),
        prefix='backbone.'))
    pyramid.init_weights()
    report = pyramid.last_load_report
    assert report.ok and not report.unexpected
    assert sorted(report.fresh) == sorted(
        k for k in pyramid.state_dict() if '.mixer.col_' in k)
    assert torch.equal(pyramid.stages[0].blocks[0].mixer.row_A_log,
                       vmamba.stages[0].blocks[0].mixer.A_log)
    torch.save({'state_dict': pyramid.state_dict()}, tmp_path / 'own.pth')
    again = V2MPyramid(arch=MICRO, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'own.pth')))
    again.init_weights()
    assert not again.last_load_report.fresh
    for key, value in pyramid.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="arch 'tiny' is not a V2MPyramid"):
        V2MPyramid(arch='tiny')
    with pytest.raises(ValueError, match="no 'version'"):
        V2MPyramid(arch=dict(MICRO, version='v0'))
    with pytest.raises(ValueError, match='dt_rank'):
        V2MPyramid(arch=dict(MICRO, dt_rank=0))


@pytest.mark.parametrize('name,params', [('small', 30_290_536),
                                         ('base', 50_273_704)])
def test_imagenet_configs_build(name, params):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    root = Path(__file__).resolve().parents[2]
    cfg = Config.fromfile(
        str(root / 'configs' / 'imagenet' /
            f'v2m_pyramid_{name}_8xb64_in1k.py'))
    init_default_scope('mmpretrain')
    with torch.device('meta'):
        model = PRETRAIN_MODELS.build(cfg.model)
    assert isinstance(model.backbone, V2MPyramid)
    assert sum(p.numel() for p in model.parameters()) == params
    assert cfg.optim_wrapper.optimizer.lr == 5e-4
    assert cfg.train_dataloader.batch_size * 8 == 512


@pytest.mark.cuda
def test_cuda_matches_cpu_float64_and_fp16_is_finite(monkeypatch):
    # cuDNN convolutions default to TF32 on Hopper (about 1e-3 relative);
    # the comparison with float64 is of the float32 path.
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(0)
    backbone = V2MPyramid(arch=MICRO).eval()
    image = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = backbone.double()(image.double())
        out = backbone.float().cuda()(image.cuda())
    for got, want in zip(out, ref):
        err = (got.double().cpu() - want).abs().max().item()
        assert err <= 2e-4 * max(1.0, want.abs().max().item()), err
    image = image.cuda().requires_grad_()
    with torch.autocast('cuda', dtype=torch.float16):
        feats = backbone.train()(image)
    sum(f.float().mean() for f in feats).backward()
    assert all(torch.isfinite(f.float()).all() for f in feats)
    assert torch.isfinite(image.grad).all()
