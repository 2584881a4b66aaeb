"""The selective-scan kernels (selective_scan_kernel.cuh, mamba layout), run
on the CPU by the CUDA emulator, against the float64 reference: each
forward kernel (block, thread per chunk) and backward kernel (thread, warp,
block) with shared, grouped and constant B/C, the z gate and reverse scans,
on every machine."""
from functools import partial
from typing import Dict, Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops import cuda_ops
from mmssm.ops.reference import selective_scan_reference

import cuda_testing
from cuda_emulation import EmulatedSelectiveScan, build_emulated_library

WEIGHT_NAMES = ('A', 'D', 'delta_bias')


@pytest.fixture
def library(emulated_scan_library):
    return emulated_scan_library


def emulated_scan(library, forward: tuple, backward: tuple, u: Tensor,
                  delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                  delta_bias: Optional[Tensor] = None,
                  delta_softplus: bool = False,
                  reverse: bool = False) -> Tensor:
    return EmulatedSelectiveScan.apply(library, forward, backward, u, delta,
                                       A, B, C, D, z, delta_bias,
                                       delta_softplus, reverse)


def scan_inputs(batch: int, dim: int, length: int, dstate: int,
                groups: int = 1) -> Dict[str, Optional[Tensor]]:
    """Inputs with B and C per position in ``groups`` groups (0: constant
    (dim, dstate) matrices)."""

    def matrix() -> Tensor:
        if groups == 0:
            return torch.randn(dim, dstate)
        return torch.randn(batch, groups, dstate, length)

    return {
        'u': torch.randn(batch, dim, length),
        'delta': torch.randn(batch, dim, length) * 0.5 - 1.0,
        'A': -torch.exp(torch.randn(dim, dstate) * 0.5),
        'B': matrix(),
        'C': matrix(),
        'D': torch.randn(dim),
        'z': torch.randn(batch, dim, length),
        'delta_bias': torch.randn(dim) * 0.3,
    }


def block_launch(length: int) -> tuple:
    """The block forward kernel and the block backward kernel as
    mmssm.ops.cuda_ops configures them for ``length`` positions."""
    threads, items, _ = cuda_ops._backward_config(1, length, 1, 4)
    return (*cuda_ops._forward_config(length), 0), ('block', threads, items)


def assert_matches_reference(library, inputs: Dict[str, Optional[Tensor]],
                             forward: tuple, backward: tuple,
                             dtype: torch.dtype = torch.float64,
                             reverse: bool = False) -> None:
    errors = cuda_testing.errors_against_reference(
        inputs, partial(emulated_scan, library, forward, backward),
        selective_scan_reference, dtype,
        lambda name, value: name in WEIGHT_NAMES or value.dim() == 2,
        delta_softplus=True, reverse=reverse)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('length', [37, 300, 600])
def test_emulated_block_kernels_match_reference(library, dtype, length):
    # Blocks of 32, 128 and 128 threads; 300 and 600 positions span two
    # and three saved states of the backward kernel's chunks.
    assert_matches_reference(library, scan_inputs(2, 3, length, 4),
                             *block_launch(length), dtype)


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('backward_chunk', [256, 512])
def test_emulated_thread_kernels_match_reference(library, reverse,
                                                 backward_chunk):
    # The thread-per-chunk forward in two chunks of 256 positions (joined
    # by their end states) and the thread-per-chunk backward in two chunks
    # (joined by their adjoints) or in one of two saved stretches.
    assert_matches_reference(library, scan_inputs(1, 3, 300, 5),
                             (0, 0, 256), ('thread', 0, backward_chunk),
                             reverse=reverse)


@pytest.mark.parametrize('groups', [0, 1, 2])
@pytest.mark.parametrize('length,backward_chunk', [(700, 256), (1100, 512),
                                                   (513, 256)])
def test_emulated_thread_backward_chunks_match_reference(
        library, groups, length, backward_chunk):
    # Three or more backward chunks, the last one partial (513: one
    # position), so each chunk's adjoint is composed from several after it;
    # constant, shared and grouped B/C, the z gate, both orders.
    for reverse in (False, True):
        assert_matches_reference(library,
                                 scan_inputs(2, 4, length, 3, groups),
                                 (0, 0, 256), ('thread', 0, backward_chunk),
                                 reverse=reverse)


@pytest.mark.parametrize('groups', [0, 1, 2])
def test_emulated_warp_backward_matches_reference(library, groups):
    # The warp backward (a block sums shared B/C gradients over its 8
    # channels) with constant, shared and grouped B/C.
    assert_matches_reference(library, scan_inputs(1, 10, 70, 3, groups),
                             (*cuda_ops._forward_config(70), 0),
                             ('warp', 256, 8))


@pytest.mark.parametrize('dstate', [1, 16])
def test_emulated_state_sizes(library, dstate):
    assert_matches_reference(library, scan_inputs(1, 2, 45, dstate, 2),
                             (0, 0, 256), ('thread', 0, 256))


# Chunk joins (join_chunk) without the decay of what they carry, with the
# chunks of one pass only: the forward's states (the third of three chunks
# carries a decayed state; one backward chunk) and the backward's adjoints
# (the first of three composes a decayed one; one forward chunk). The
# comparison must fail, or it could not fail at all.
BROKEN_JOIN = {
    'x[i] = exp2_acc(steps * A2[i]) * x[i] + carried[n];':
    'x[i] = x[i] + carried[n];'
}
CHUNKS_OF_ONE_PASS = {'forward states': (256, 768),
                      'backward adjoints': (768, 256)}


@pytest.mark.parametrize('join', sorted(CHUNKS_OF_ONE_PASS))
def test_emulator_sees_a_broken_chunk_join(tmp_path, join):
    forward_chunk, backward_chunk = CHUNKS_OF_ONE_PASS[join]
    library = build_emulated_library('selective_scan_driver.cpp', tmp_path,
                                     BROKEN_JOIN)
    with pytest.raises(AssertionError, match='relative errors over'):
        assert_matches_reference(library, scan_inputs(1, 2, 600, 2),
                                 (0, 0, forward_chunk),
                                 ('thread', 0, backward_chunk))
