"""Strategies by name, so studies and the CLI pick them with a string ("rdma-p2p", "delta:nccl-broadcast",
"shared-pool:zero-copy").

One explicit table (the KV policies' registry has the same shape): adding a strategy means writing its module
and adding its class here; strategy modules never import this one back.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnknownStrategyError, WorkloadError
from ..keyvalue import coerce_all, settings_of
from .base import Strategy
from .cuda_ipc import CudaIpcBuckets
from .delta import CHANGED_FRACTION, delta
from .host_staged import HostStaged
from .nccl_broadcast import NcclBroadcast
from .rdma_p2p import RdmaP2P
from .shared_pool import SharedPool

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (NcclBroadcast, CudaIpcBuckets, HostStaged, RdmaP2P, SharedPool)
}


def names() -> list[str]:
    """Registered names plus the mode/wrapper spellings `get` accepts."""
    return [*STRATEGIES, "shared-pool:zero-copy", "shared-pool:pull-on-publish", "shared-pool:relay",
            "delta:<strategy>"]


def get(spec: str, **knobs: Any) -> Strategy:
    """A strategy instance from a name and knobs; `NAME:MODE` picks a shared-pool mode, `delta:INNER` wraps INNER.

    Unknown names raise `UnknownStrategyError` listing the known ones; unknown knobs raise `WorkloadError`.
    """
    name, colon, arg = spec.partition(":")
    if colon and not arg:  # 'rdma-p2p:' once ran rdma-p2p as if nothing followed the name
        raise UnknownStrategyError(f"'{spec}': nothing after ':' (it names a mode of a strategy that has modes, or the "
                                   f"strategy delta wraps)")
    if name == "delta":
        inner_name = arg or knobs.pop("inner", None)
        if not inner_name:
            raise UnknownStrategyError("delta needs an inner strategy: write 'delta:<strategy>'")
        if str(inner_name).partition(":")[0] == "delta":
            raise UnknownStrategyError(f"'{spec}': delta wraps a transport (delta:rdma-p2p), not another delta")
        inner_cls = STRATEGIES.get(str(inner_name).partition(":")[0])
        known = set(settings_of(inner_cls.Knobs)) if inner_cls is not None else set(knobs)
        if unknown := sorted(set(knobs) - known - {"changed_fraction"}):
            # the inner strategy's own error would list its knobs only, not the wrapper's
            raise WorkloadError(f"unknown knob {unknown[0]} for {spec} (known: changed_fraction, "
                                f"{', '.join(sorted(known))})")
        fraction = knobs.pop("changed_fraction", CHANGED_FRACTION)
        fraction = coerce_all({"changed_fraction": fraction}, settings_of(delta), "delta", noun="knob")
        return delta(get(inner_name, **knobs), **fraction)
    cls = STRATEGIES.get(name)
    if cls is None:
        raise UnknownStrategyError(f"unknown weight-sync strategy '{spec}' (known: {', '.join(names())})")
    if arg:
        if "mode" not in settings_of(cls.Knobs):  # else "unknown knob mode": not what was written
            moded = [n for n, c in STRATEGIES.items() if "mode" in settings_of(c.Knobs)]
            raise UnknownStrategyError(f"'{spec}': {name} has no modes (a ':' follows {', '.join(moded)}, to name a "
                                       f"mode, and delta, to name the strategy it wraps)")
        if "mode" in knobs and str(knobs["mode"]) != arg:  # two answers to one question: neither silently wins
            raise UnknownStrategyError(f"'{spec}' names mode '{arg}' and the knob mode={knobs['mode']} another: "
                                       f"give one")
        knobs = {**knobs, "mode": arg}
    return cls(**knobs)
