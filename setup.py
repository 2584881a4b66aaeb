"""Install mmssm and, where CUDA is present, build its compiled scan ops.

Environment variables:
    MMSSM_WITH_OPS=0: install the pure-Python package (PyTorch scan paths).
    FORCE_CUDA=1: build the CUDA ops even where no GPU is visible (CI
        compiles them this way to catch broken kernel sources).
    TORCH_CUDA_ARCH_LIST: architectures to build for (default "8.0 9.0").
    MAX_JOBS: parallel compile jobs (honoured by ninja).
"""
import glob
import os
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / 'mmssm' / '__init__.py').read_text()
    return re.search(r"__version__ = '([^']+)'", text).group(1)


def read_requirements(name: str) -> list:
    lines = (ROOT / 'requirements' / name).read_text().splitlines()
    return [
        line.split('#')[0].strip() for line in lines
        if line.split('#')[0].strip()
        and not line.startswith(('-', 'torch'))
    ]


def cuda_include_dirs() -> list:
    """Header folders a pip-installed CUDA 13 toolkit keeps in site-packages."""
    import torch
    site = Path(torch.__file__).resolve().parents[1]
    return [str(p) for p in sorted(site.glob('nvidia/cu*/include'))]


def get_extensions() -> list:
    if os.getenv('MMSSM_WITH_OPS', '1') == '0':
        return []
    cpp_sources = sorted(glob.glob('csrc/pytorch/*.cpp'))
    cuda_sources = sorted(glob.glob('csrc/pytorch/cuda/*.cu'))
    if not cpp_sources:
        return []
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CUDAExtension
    want_cuda = torch.cuda.is_available() or os.getenv('FORCE_CUDA') == '1'
    if not want_cuda:
        print('mmssm: no CUDA device and FORCE_CUDA is not set: installing '
              'without compiled ops (the PyTorch scan paths are used)')
        return []
    if CUDA_HOME is None:
        raise RuntimeError('mmssm: building the CUDA ops needs a CUDA '
                           'toolkit (set CUDA_HOME), or set MMSSM_WITH_OPS=0')
    os.environ.setdefault('TORCH_CUDA_ARCH_LIST', '8.0 9.0')
    cxx_std = '-std=c++20'
    return [
        CUDAExtension(
            name='mmssm._ext',
            sources=cpp_sources + cuda_sources,
            include_dirs=[
                str(ROOT / 'csrc' / 'common'),
                str(ROOT / 'csrc' / 'common' / 'cuda')
            ] + cuda_include_dirs(),
            define_macros=[('MMSSM_WITH_CUDA', None)],
            extra_compile_args={
                'cxx': ['-O3', cxx_std],
                'nvcc': [
                    '-O3', cxx_std, '--use_fast_math', '-lineinfo',
                    '--expt-relaxed-constexpr', '--expt-extended-lambda',
                    '-U__CUDA_NO_HALF_OPERATORS__',
                    '-U__CUDA_NO_HALF_CONVERSIONS__',
                    '-U__CUDA_NO_BFLOAT16_OPERATORS__',
                    '-U__CUDA_NO_BFLOAT16_CONVERSIONS__',
                    '-U__CUDA_NO_BFLOAT162_OPERATORS__',
                    '-U__CUDA_NO_BFLOAT162_CONVERSIONS__'
                ]
            })
    ]


def get_cmdclass(extensions: list) -> dict:
    if not extensions:
        return {}
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension.with_options(use_ninja=True)}


EXTENSIONS = get_extensions()


setup(
    name='mmssm',
    version=read_version(),
    description='2D state-space vision backbones for OpenMMLab detection '
    'and segmentation',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.10',
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'tests': read_requirements('tests.txt'),
        'downstream': read_requirements('downstream.txt'),
    },
    ext_modules=EXTENSIONS,
    cmdclass=get_cmdclass(EXTENSIONS),
    zip_safe=False)
