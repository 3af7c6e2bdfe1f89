"""Typed errors of the kernels layer.

Every error a caller can cause (bad tensors, a pool that is gone, a reader trying to write) subclasses
`fabricsim.errors.FabricsimError`, so the CLI reports it as one line and tests can match on the type.
"""

from __future__ import annotations

from fabricsim.errors import FabricsimError


class KernelError(FabricsimError):
    """Base class of every error raised by `kernels`."""


class TritonUnavailableError(KernelError):
    """Triton is not installed (or cannot run here): only the torch reference paths work."""


class KernelInputError(KernelError):
    """Tensors handed to a kernel have the wrong shape, dtype, layout, alignment or location."""


class PeerAccessError(KernelError):
    """One GPU cannot address another GPU's memory (no peer access between them)."""


class PoolError(KernelError):
    """Base class of `WeightPool` errors."""


class PoolGoneError(PoolError):
    """The pool's writer closed it, exited, or its IPC handle can no longer be opened."""


class LayoutMismatchError(PoolError):
    """The reader expected a different tensor layout (names, shapes, dtypes, format) than the pool has."""


class ReadOnlyPoolError(PoolError):
    """A reader tried to write: readers hold no write path into the pool."""


class PoolTimeoutError(PoolError):
    """`wait_for` or `read_consistent` gave up before the wanted version (or a consistent read) arrived."""
