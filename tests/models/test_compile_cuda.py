"""Backbones on CUDA: torch.compile traces every backbone, with its compiled
scan op, in one graph, and activation checkpointing keeps the gradients.

Each family's backbone (and so the block using its scan operator: VMamba's
``cross_selective_scan``, Vim's ``selective_scan``, V2M's and V2M-S*'s
``v2m_corner_scan``, Mamba2D's ``wavefront_scan_2d``) is compiled with
``fullgraph=True``, which fails on any graph break, and must give the eager
outputs and gradients.
"""
import pytest
import torch

import mmssm.models  # noqa: F401
from mmssm.registry import MODELS

SMALL_ARCHS = {
    'VMamba': dict(arch=dict(embed_dims=8, depths=(1, 1, 1, 1), d_state=1,
                             ssm_ratio=1.0, mlp_ratio=2.0, version='v2')),
    'V2MPyramid': dict(arch=dict(embed_dims=8, depths=(1, 1, 1, 1),
                                 d_state=1, ssm_ratio=1.0, mlp_ratio=2.0)),
    'Mamba2D': dict(arch=dict(embed_dims=(8, 8, 32, 32), depths=(1, 1, 1, 1)),
                    d_state=2),
    'Vim': dict(arch=dict(embed_dims=16, num_layers=4, d_state=2),
                out_indices=(0, 1, 2, 3)),
    'V2M': dict(arch=dict(embed_dims=16, num_layers=4, d_state=2),
                out_indices=(0, 1, 2, 3)),
}


@pytest.mark.cuda
@pytest.mark.parametrize('name', sorted(SMALL_ARCHS))
def test_backbone_compiles_without_graph_breaks(name):
    from mmssm.ops import backend
    assert set(backend().values()) == {'cuda'}
    torch.manual_seed(0)
    model = MODELS.build(dict(type=name, **SMALL_ARCHS[name])).cuda().eval()
    image = torch.randn(2, 3, 64, 96, device='cuda')
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    eager_image = image.clone().requires_grad_()
    compiled_image = image.clone().requires_grad_()
    eager = model(eager_image)
    traced = compiled(compiled_image)
    sum(out.square().mean() for out in eager).backward()
    sum(out.square().mean() for out in traced).backward()
    for got, want in zip(traced, eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_image.grad, eager_image.grad,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize('name', sorted(SMALL_ARCHS))
def test_activation_checkpointing_keeps_the_gradients(name):
    # with_cp recomputes every block in the backward pass (non-reentrant
    # checkpointing) around the ops' C++ autograd Functions.
    torch.manual_seed(0)
    kwargs = dict(type=name, drop_path_rate=0.0, **SMALL_ARCHS[name])
    plain = MODELS.build(kwargs).cuda().train()
    checkpointed = MODELS.build(dict(kwargs, with_cp=True)).cuda().train()
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(2, 3, 64, 96, device='cuda')
    for model in (plain, checkpointed):
        sum(out.square().mean() for out in model(image)).backward()
    for (key, want), got in zip(plain.named_parameters(),
                                checkpointed.parameters()):
        assert (got.grad is None) == (want.grad is None), key
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4,
                                       atol=1e-6, msg=key)
