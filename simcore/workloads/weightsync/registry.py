"""Strategies by name, so studies and the CLI pick them with a string ("rdma-p2p", "delta:nccl-broadcast",
"shared-pool:zero-copy")."""

from __future__ import annotations

from typing import Any

from ..errors import UnknownStrategyError

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a `Strategy` subclass available under its `name`."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"strategy name {cls.name!r} is empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered names plus the mode/wrapper spellings `get` accepts."""
    _load_all()
    return [*_REGISTRY, "shared-pool:zero-copy", "shared-pool:pull-on-publish", "delta:<strategy>"]


def get(spec: str, **knobs: Any):
    """A strategy instance from a name and knobs; `NAME:MODE` picks a shared-pool mode, `delta:INNER` wraps INNER.

    Unknown names raise `UnknownStrategyError` listing the known ones; unknown knobs raise `WorkloadError`.
    """
    _load_all()
    name, _, arg = spec.partition(":")
    if name == "delta":
        from .delta import delta

        inner_name = arg or knobs.pop("inner", None)
        if not inner_name:
            raise UnknownStrategyError("delta needs an inner strategy: write 'delta:<strategy>'")
        fraction = knobs.pop("changed_fraction", 0.1)
        return delta(get(inner_name, **knobs), changed_fraction=fraction)
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownStrategyError(f"unknown weight-sync strategy '{spec}' (known: {', '.join(names())})")
    if arg:
        knobs = {**knobs, "mode": arg}
    return cls(**knobs)


def _load_all() -> None:
    # Importing the modules runs their @register decorators; done lazily to keep import order free of cycles.
    from . import cuda_ipc, host_staged, nccl_broadcast, rdma_p2p, shared_pool  # noqa: F401
