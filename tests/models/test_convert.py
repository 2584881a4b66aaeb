"""Tests of family detection and one-off checkpoint conversion."""
import json
import subprocess
import sys

import pytest
import torch

from mmssm.models import from_official
from mmssm.models.backbones.vmamba import VMamba
from mmssm.models.convert import (FAMILY_BACKBONES, convert_to_backbone,
                                  detect_family)
from mmssm.models.utils.checkpoint import CheckpointError

REPO = __import__('pathlib').Path(__file__).resolve().parents[2]

# Full-size manifest models -> the mmssm arch they are.
VMAMBA_ARCHS = {
    'vssm_tiny': 'vanilla-tiny',
    'vssm_small': 'vanilla-small',
    'vssm_base': 'vanilla-base',
    'vssm1_tiny_0230s': 'tiny',
    'vssm1_small_0229': 'small',
    'vssm1_base_0229': 'base',
    'vssm1_tiny_0230': 'tiny-s2l5',
    'vssm1_small_0229s': 'small-s1l20',
    'vssm1_base_0229s': 'base-s1l20',
}
MANIFEST_KEYS = {
    'vmamba': 'classification_checkpoint_model_keys_HEAD_names',
    'vim': 'checkpoint_model_keys',
    'v2m': 'checkpoint_model_keys',
    'mamba2d': 'checkpoint_state_dict_keys',
}


def _meta_state_dict(shapes: dict) -> dict:
    return {k: torch.empty(v, device='meta') for k, v in shapes.items()}


def _manifest_models(fixtures_dir, family):
    path = fixtures_dir / 'manifests' / f'{family}_key_manifests.json'
    return json.loads(path.read_text())['models']


@pytest.mark.parametrize('family', sorted(FAMILY_BACKBONES))
def test_manifests_are_detected_and_fit_an_arch(fixtures_dir, family):
    for name, model in _manifest_models(fixtures_dir, family).items():
        state = _meta_state_dict(model[MANIFEST_KEYS[family]])
        assert detect_family(state) == family, name
        converted, found_family, arch, report = convert_to_backbone(state)
        assert found_family == family
        assert report.ok, (name, str(report))
        if family == 'vmamba':
            assert arch == VMAMBA_ARCHS[name]
        if family == 'vmamba' and 'released_checkpoint_model_keys_LEGACY_names' in model:
            legacy = _meta_state_dict(
                model['released_checkpoint_model_keys_LEGACY_names'])
            assert convert_to_backbone(legacy)[2] == VMAMBA_ARCHS[name]


def test_wrong_arch_is_reported_by_name(fixtures_dir):
    model = _manifest_models(fixtures_dir, 'vmamba')['vssm1_small_0229']
    state = _meta_state_dict(model[MANIFEST_KEYS['vmamba']])
    with pytest.raises(CheckpointError, match='MISSING|SHAPE MISMATCH'):
        convert_to_backbone(state, arch='tiny')


def test_unknown_state_dict_asks_for_the_family():
    with pytest.raises(ValueError, match='pass the family explicitly'):
        detect_family({'conv.weight': torch.zeros(1)})


def test_convert_tool_writes_a_safe_backbone_file(fixtures_dir, tmp_path):
    fixture = fixtures_dir / 'vmamba' / 'micro_v2_s1'
    meta = json.loads((fixture / 'meta.json').read_text())
    arch = from_official('vmamba', meta['constructor_kwargs_VSSM']).backbone.arch
    dst = tmp_path / 'converted.pth'
    result = subprocess.run([
        sys.executable, str(REPO / 'tools' / 'convert_checkpoint.py'),
        str(fixture / 'checkpoint.pth'), str(dst), '--family', 'vmamba',
        '--arch', 'tiny'
    ], capture_output=True, text=True, timeout=300)
    # The micro checkpoint is not VMamba-T: the tool must refuse loudly.
    assert result.returncode != 0
    assert 'SHAPE MISMATCH' in result.stderr and not dst.exists()

    from mmssm.models.convert import convert_checkpoint_file
    report = convert_checkpoint_file(fixture / 'checkpoint.pth', dst,
                                     arch=arch)
    assert report.ok
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['mmssm_family'] == 'vmamba'
    backbone = VMamba(arch=arch, init_cfg=dict(type='Pretrained',
                                               checkpoint=str(dst)))
    backbone.init_weights()
    backbone = backbone.double().eval()
    inputs = torch.load(fixture / 'inputs.pt', weights_only=True)
    outputs = torch.load(fixture / 'outputs.pt', weights_only=True)
    name, image = next(iter(inputs.items()))
    with torch.no_grad():
        features = backbone(image.double())
    for index, feature in enumerate(features):
        reference = outputs[f'{name}/features_ckpt_init.{index}']
        scale = max(1.0, reference.abs().max().item())
        assert (feature - reference).abs().max().item() <= 1e-5 * scale
