"""Shared helpers of the kernel tests: where kernels run, and markers that skip cleanly without CUDA.

Without CUDA the Triton interpreter runs every kernel on the CPU (`TRITON_INTERPRET=1`, set here before
anything imports Triton); with CUDA the same tests run natively on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda", 0) if HAS_CUDA else torch.device("cpu")
N_GPUS = torch.cuda.device_count() if HAS_CUDA else 0

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
multigpu = pytest.mark.skipif(N_GPUS < 2, reason="needs two CUDA GPUs")

# Sizes that are not block multiples, one element, empty; small, since the interpreter is slow.
AWKWARD_SIZES = [0, 1, 3, 17, 1000, 2048 * 4 + 5, 70_001]


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill with a byte pattern no kernel output should equal by chance (0xA5 in every byte)."""
    if t.numel():
        t.view(torch.uint8).fill_(0xA5)
    return t
