"""Where a kernel may run and what it may touch: lazy Triton import, device choice, peer access.

Triton reads `TRITON_INTERPRET` when a kernel is decorated, so kernels are built on first use (never at
import) and the CPU tests can switch the interpreter on before that. In interpreter mode every tensor
lives on the CPU; on a GPU a kernel may address local HBM, a peer GPU's HBM (with peer access enabled)
and pinned host memory (through unified virtual addressing), but never pageable host memory.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable
from types import ModuleType

import torch

from fabricsim.kernels.errors import KernelInputError, PeerAccessError, TritonUnavailableError


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_modules() -> tuple[ModuleType, ModuleType]:
    """(triton, triton.language), imported on first use; a typed error where Triton is missing."""
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TritonUnavailableError(f"Triton is not importable ({exc}); use the *_ref functions") from exc
    return triton, tl


def launch_device(tensors: Iterable[torch.Tensor], prefer: torch.device | None = None) -> torch.device:
    """The device a kernel touching `tensors` runs on, after checking each tensor is reachable from it.

    The first CUDA tensor's device wins unless `prefer` names one. Pinned host tensors are reachable from
    any GPU; a tensor on another GPU needs peer access, which is enabled here (or a typed error).
    """
    tensors = list(tensors)
    if interpreting():
        for t in tensors:
            if t.device.type != "cpu":
                raise KernelInputError(f"TRITON_INTERPRET=1 runs kernels on the CPU; got a {t.device} tensor")
        return torch.device("cpu")
    cuda = [t.device for t in tensors if t.device.type == "cuda"]
    device = prefer if prefer is not None else (cuda[0] if cuda else None)
    if device is None:
        raise KernelInputError("no CUDA tensor and no device given: nothing for a GPU kernel to run on")
    for t in tensors:
        if t.device.type == "cpu":
            if t.numel() and not t.is_pinned():
                raise KernelInputError("a host tensor must be pinned (tensor.pin_memory()) for a GPU kernel")
        elif t.device != device:
            enable_peer_access(device.index, t.device.index)
    return device


@functools.cache
def enable_peer_access(device: int, peer: int) -> None:
    """Let kernels running on `device` load and store `peer`'s memory (idempotent, once per pair)."""
    if device == peer:
        return
    if not torch.cuda.can_device_access_peer(device, peer):
        raise PeerAccessError(f"cuda:{device} cannot access cuda:{peer} (no peer access between them)")
    # PyTorch enables peer access (cudaDeviceEnablePeerAccess, in the source device's context, towards the
    # destination) on a cross-device copy; a copy each way turns it on in both directions, for the whole
    # context, so Triton kernels on `device` may then address `peer`'s memory.
    a = torch.zeros(1, device=f"cuda:{device}")
    b = torch.zeros(1, device=f"cuda:{peer}")
    a.copy_(b)
    b.copy_(a)
    torch.cuda.synchronize(device)


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as a flat uint8 tensor (no copy)."""
    if not t.is_contiguous():
        raise KernelInputError("kernels take contiguous tensors (call .contiguous() first)")
    return t.reshape(-1).view(torch.uint8)


def word_dtype(nbytes: int, *addresses: int) -> torch.dtype:
    """The widest word (int32, or uint8 as a fallback) that divides every address and the size.

    int32 words at 16-byte-aligned addresses let Triton emit 16-byte vector loads and stores (four words
    per thread per access); anything misaligned falls back to bytes.
    """
    if nbytes % 4 == 0 and all(a % 4 == 0 for a in addresses):
        return torch.int32
    return torch.uint8


def device_context(device: torch.device):
    """A context manager making `device` current (a no-op on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
