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
    if "+" in spec:
        raise UnknownStrategyError(_label_not_name(spec))
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
        # the inner strategy's own error would list its knobs only, not the wrapper's
        _refuse_unknown(spec, knobs, ["changed_fraction", *sorted(known)])
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
    # named as asked for, not as its Knobs class; delta's knob says how to ask for it (a pool's readers pull raw
    # weights: no delta there)
    hint = f"; changed_fraction is delta's: ask for delta:{spec}" if name != "shared-pool" else ""
    _refuse_unknown(spec, knobs, sorted(settings_of(cls.Knobs)), {"changed_fraction": hint})
    return cls(**knobs)


def _refuse_unknown(spec: str, knobs: dict, known: list[str], hints: dict[str, str] | None = None) -> None:
    """One line naming every knob of `knobs` that strategy `spec` does not have, with what it has (`known`, in the
    order to name them), and the hint `hints` gives for one of them."""
    unknown = sorted(set(knobs) - set(known))
    if unknown:
        hint = next((h for k, h in (hints or {}).items() if k in unknown), "")
        raise WorkloadError(f"unknown knob{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {spec} (known: "
                            f"{', '.join(known)}){hint}")


def _label_not_name(spec: str) -> str:
    """The error for a result's label given as a strategy (`rdma-p2p+delta0.5+fp8`, as sync prints it and rows
    store it): how to ask for what it names. A label is not read as a name, because its '+fp8' is the engines'
    dtype, a setting of the sync rather than of the strategy."""
    base, *parts = spec.split("+")
    fractions = [p[len("delta"):] for p in parts if p.startswith("delta")]
    other = [p for p in parts if p != "fp8" and not p.startswith("delta")]
    if other or len(fractions) > 1 or not base:
        return f"'{spec}': unknown weight-sync strategy (a '+' joins a label's parts, not a name's; known: " \
               f"{', '.join(names())})"
    ask = f"delta:{base}" if fractions else base
    if fractions and fractions[0] != f"{CHANGED_FRACTION:g}":
        ask += f" --knob changed_fraction={fractions[0]}"
    if "fp8" in parts:
        ask += " --fp8"
    return f"'{spec}' is a result's label, not a strategy's name: ask for it as {ask}"
