"""Report the software stack mmssm runs on: ``python -m mmssm.env``.

Prints the versions of PyTorch, CUDA, mmcv (and whether its ops are
compiled), mmengine, mmdet, mmseg and mmpretrain, whether mmssm's own CUDA
ops are built, and every known version trap it finds. Exits with status 1
when a trap is found.
"""
import importlib
import importlib.metadata
import sys
from typing import Dict, List, Optional, Tuple

# Versions that work together; see docs/install.md.
PINNED = {
    'torch': '2.14.1',
    'mmengine': '0.10.7',
    'mmcv': '2.1.0',
    'mmdet': '3.3.0',
    'mmsegmentation': '1.2.2',
    'mmpretrain': '1.2.0',
}


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    return int(version.split('.')[0])


def _mmcv_ops() -> str:
    try:
        importlib.import_module('mmcv.ops')
        from mmcv.utils import ext_loader
        ext_loader.load_ext('_ext', ['nms'])
    except Exception as error:  # report any import failure, never raise
        return f'not usable ({type(error).__name__}: {error})'
    return 'compiled'


def _mmssm_ops() -> str:
    try:
        importlib.import_module('mmssm._ext')
    except ImportError as error:
        return f'not built (PyTorch scan paths are used): {error}'
    return 'built'


def collect_env() -> Tuple[Dict[str, str], List[str]]:
    """Collect versions and known problems.

    Returns:
        ``(info, problems)``: an ordered name → value mapping and a list of
        sentences, one per problem found.
    """
    info: Dict[str, str] = {'Python': sys.version.split()[0]}
    problems: List[str] = []
    import torch
    info['PyTorch'] = torch.__version__
    info['PyTorch CUDA build'] = str(torch.version.cuda)
    info['CUDA available'] = str(torch.cuda.is_available())
    if torch.cuda.is_available():
        info['GPU'] = torch.cuda.get_device_name(0)
    for name in ('torchvision', 'mmengine', 'mmcv', 'mmdet',
                 'mmsegmentation', 'mmpretrain', 'transformers'):
        info[name] = _version(name) or 'not installed'
    if info['mmcv'] != 'not installed':
        info['mmcv ops'] = _mmcv_ops()
    from . import __version__
    info['mmssm'] = __version__
    info['mmssm CUDA ops'] = _mmssm_ops()

    mmcv_version = _version('mmcv')
    if mmcv_version and tuple(map(int, mmcv_version.split('.')[:2])) >= (2,
                                                                         2):
        problems.append(f'mmcv {mmcv_version} is installed: mmdet 3.3.0 and '
                        'mmseg 1.2.2 refuse mmcv >= 2.2.0; install 2.1.0')
    if info.get('mmcv ops', 'compiled') != 'compiled':
        problems.append('mmcv was installed without its compiled ops '
                        '(MMCV_WITH_OPS=1): RoIAlign/NMS for Mask R-CNN are '
                        'missing')
    transformers_version = _version('transformers')
    if transformers_version and _major(transformers_version) >= 5:
        problems.append(
            f'transformers {transformers_version} is installed: '
            'transformers >= 5 breaks `import mmpretrain` (and the parts of '
            'mmdet that import it); uninstall it or install transformers<5')
    if info['torchvision'] == 'not installed' and info['mmpretrain'] != \
            'not installed':
        problems.append('mmpretrain needs torchvision: pip install '
                        'torchvision matching your torch')
    for name, pinned in PINNED.items():
        found = _version(name)
        if found is not None and found.split('+')[0] != pinned:
            problems.append(f'{name} {found} is installed; mmssm is tested '
                            f'with {pinned}')
    return info, problems


def main() -> int:
    """Print the environment report; return 1 if problems were found."""
    info, problems = collect_env()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f'{key:<{width}} : {value}')
    for problem in problems:
        print(f'PROBLEM: {problem}')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
