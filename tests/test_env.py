"""Tests of the environment report ``python -m mmssm.env``."""
import subprocess
import sys

import mmssm.env as env


def test_env_command_prints_the_stack():
    result = subprocess.run([sys.executable, '-m', 'mmssm.env'],
                            capture_output=True,
                            text=True,
                            timeout=120)
    for name in ('PyTorch', 'mmengine', 'mmcv ops', 'mmdet',
                 'mmsegmentation', 'mmpretrain', 'mmssm CUDA ops'):
        assert name in result.stdout
    assert result.returncode == (1 if 'PROBLEM' in result.stdout else 0)


def test_env_reports_transformers_5(monkeypatch):
    real_version = env._version

    def fake_version(distribution):
        if distribution == 'transformers':
            return '5.1.0'
        return real_version(distribution)

    monkeypatch.setattr(env, '_version', fake_version)
    _, problems = env.collect_env()
    assert any('transformers 5.1.0' in p and 'mmpretrain' in p
               for p in problems)


def test_env_reports_new_mmcv(monkeypatch):
    real_version = env._version
    monkeypatch.setattr(
        env, '_version', lambda d: '2.2.0'
        if d == 'mmcv' else real_version(d))
    _, problems = env.collect_env()
    assert any('mmcv 2.2.0' in p and '2.1.0' in p for p in problems)
