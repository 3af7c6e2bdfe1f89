"""The one collective model: NCCL-style ring schedules as flows on a `Simulation`, with a machine's fitted
collective parameters applied wherever they exist. Validate's measured NCCL cases, scenario files
(`collectives:`), weight sync and the serving loop's tensor-parallel all-reduce all go through here.

Two levels:
- `ring_schedule` / `schedule_collective` / `collective_time`: one collective call (broadcast, all_gather,
  all_reduce) over a ring of GPUs, as NCCL-tests measures it. Each ring transfer is capped at the profile's
  fitted bus bandwidth for its size (`CollectiveParams.rate_cap`) and the call pays the fitted fixed cost once,
  before its first ring phase; without a fitted collective the links alone set the rate.
- `ring_broadcast` / `gather` / `ring_allgather`: the pipelined building blocks weight-sync strategies compose
  for whole models (buckets, chunks), with the same fitted parameters.

A ring broadcast of S bytes over n GPUs in chunks of C bytes on links of bandwidth B takes S/B + (n-2) C/B plus
latencies: the last hop starts once the first chunk has crossed n-2 hops (B for the bytes is held to the fitted
cap where there is one; the first chunk crosses at link speed). Two ways to simulate it:
- explicit: one transfer per chunk per hop (whole chunks and a short last one, as NCCL cuts them), chunk k on
  hop h after chunk k on hop h-1 and chunk k-1 on hop h (exact, c(n-1) flows for c chunks);
- fluid: one flow of S bytes per hop, hop h released one chunk-time after hop h-1 and capped at the ring's
  bottleneck rate so no hop runs ahead of the one feeding it (n-1 flows whatever c is).
Both pay each hop's latency once, on its first chunk: NCCL keeps NCCL_STEPS chunks in flight on each of its
channels, so a chunk's latency overlaps the chunks before it (what a slot's round trip does cost is the step bound
below). The explicit form once paid it per chunk, in series, which made a 2-GPU 128 MiB broadcast 4.5x the
one-transfer model that fits NCCL-tests on the h200x2 to a few percent, and an answer depend on which form ran.
`ring_broadcast` picks explicit when it needs few flows, fluid otherwise, so a trillion-parameter broadcast in
512 KiB NCCL chunks costs n-1 flows per bucket instead of millions.

Either way a hop moves a bounded number of chunks per step: NCCL's Simple protocol hands each chunk over with a
flag the receiver polls and a credit back, and each channel's connection holds `NCCL_STEPS` slots, so a hop
carries at most channels x NCCL_STEPS x chunk per step time (`step_cap_Bps`), and where that bound binds the first
chunk takes a whole step to cross each hop. At NCCL's own 512 KiB chunk the bound (~20 TB/s) is far above every
link, and at 64 KiB still above NVLink: it binds only for smaller chunks, which without it came out the fastest (a
1-byte chunk made the pipeline fill vanish, where on GPUs the handshake per step makes it crawl). Where it does not
bind nothing changes: the route's latency stands for a step's, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import simpy

from fabricsim.errors import TopologyError
from fabricsim.hwmodels.calibration import CollectiveParams
from fabricsim.hwmodels.endpoints import expand_endpoints, natural_key
from fabricsim.hwmodels.topology import Topology, path_bandwidth_Bps
from fabricsim.simcore.simulation import Simulation

from .errors import ScenarioError

OPS = ("broadcast", "all_gather", "all_reduce")
# NCCL's Simple protocol: slots per connection (NCCL_STEPS), the time of one step on an NVLink ring hop, taken as
# NCCL's own tuning model's per-step latency (src/graph/tuning.cc, hwLat[NVLINK][RING][SIMPLE], 3.4 us), and the
# channels a ring runs on, each a connection of its own moving its own chunk per step. Both errs are named: a slot
# comes back after the flag and the credit, up to twice the one-way latency (the bound errs fast, up to 2x), and
# NCCL runs NVLink rings on up to 32 channels (16 errs slow, up to 2x)
NCCL_STEPS = 8
NCCL_STEP_S = 3.4e-6
NCCL_CHANNELS = 16
# NCCL's Simple-protocol pipeline chunk on NVLink (NCCL_BUFFSIZE 4 MiB over its 8 steps): a scenario file's
# broadcast pipelines in it, and weight sync's `chunk_bytes` knobs and validate's twins default to it
NCCL_CHUNK_BYTES = 512 * 1024


def ring_schedule(op: str, nbytes: float, gpus: Sequence[str]) -> list[dict[str, Any]]:
    """The ring schedule NCCL uses for one call, as transfers `{id, src, dst, bytes, after}` (ids local to
    the call): what the fluid model sees of a collective.

    Sizes follow NCCL-tests: `nbytes` is the buffer every rank ends up with. Ring broadcast pipelines the whole
    buffer along the ring; ring all-gather sends (n-1)/n of it per rank over each ring link; ring all-reduce is
    a reduce-scatter then an all-gather, each (n-1)/n of the buffer per link.
    """
    n = len(gpus)
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r} (known: {', '.join(OPS)})")
    if n < 2:  # one rank has everything already (a 1-byte copy to itself was scheduled)
        return []
    ring = list(zip(gpus, [*gpus[1:], *gpus[:1]], strict=True))
    if op == "broadcast":
        return [{"id": f"r{i}", "src": a, "dst": b, "bytes": nbytes, "after": []} for i, (a, b) in enumerate(ring[:-1])]
    # whole bytes for a whole size, and at least one: a call of fewer bytes than ranks still sends on every link
    share = max(1, nbytes * (n - 1) // n) if isinstance(nbytes, int) else nbytes * (n - 1) / n
    if op == "all_gather":
        return [{"id": f"r{i}", "src": a, "dst": b, "bytes": share, "after": []} for i, (a, b) in enumerate(ring)]
    rs = [{"id": f"rs{i}", "src": a, "dst": b, "bytes": share, "after": []} for i, (a, b) in enumerate(ring)]
    ag = [{"id": f"ag{i}", "src": a, "dst": b, "bytes": share, "after": [r["id"] for r in rs]}
          for i, (a, b) in enumerate(ring)]
    return rs + ag  # all_reduce


def ring_copy_id(call: str, local: str) -> str:
    """The id of a call's ring transfer with `ring_schedule`'s local id `local` (`ar.rs0`): how the call's copies
    are named in records and found again (`Scenario.collective_calls`)."""
    return f"{call}.{local}"


def ring_fill_id(copy_id: str) -> str:
    """The id of the delay a scenario broadcast's ring copy waits its pipeline fill out in, where its copy queues on
    an engine (`Simulation.transfer`'s setup): part of the call's one row, not a row of its own (`simcore.cli`)."""
    return f"{copy_id}.fill"


def fitted(topo: Topology, op: str) -> CollectiveParams | None:
    """The machine's fitted parameters of `op`, or None (then links alone set the rate)."""
    return topo.collectives.get(op)


def schedule_collective(sim: Simulation, id: str, op: str, gpus: Sequence[str] | str, nbytes: float, *,
                        start: float = 0.0, after: Iterable = (), tag: str | None = None) -> simpy.Event:
    """One collective call on `sim`: its ring transfers (named `ID.rs0`, `ID.ag1`, ...) and a zero-length
    marker named `id` that ends when the last rank has its bytes, so later work can wait for `id`.

    With fitted parameters the call pays their fixed cost once (on its first ring phase: one kernel launch per
    call) and each ring transfer is capped at the fitted bus bandwidth for its size. `gpus` is the ring order;
    items may be ranges (`node0-63.gpu0-7`, see `hwmodels.endpoints`).

    A broadcast is pipelined as `ring_broadcast`'s fluid form (NCCL's 512 KiB chunks): hop h starts when the first
    chunk has crossed the hops before it and no hop outruns the slowest, so the last rank cannot have the data
    before it could have passed through the ring (all hops started at once, an 8-GPU 1 MiB broadcast took what one
    2-GPU copy takes, 5.2 us, where weight sync's ring took 28.2). All-gather and all-reduce keep their bandwidth
    form, every ring link's bytes at once, paying a hop's latency once per phase. That is a mechanism the model
    lacks, not a claim: NCCL's ring steps each phase n-1 times, each step a step latency (its tuning model's
    ~0.6 us on LL, 3.4 us on Simple over NVLink), which a small call on many GPUs pays and this form leaves out;
    on 2 GPUs, the only NCCL calls measured here, there is one step, which the fitted fixed cost covers.
    """
    params = fitted(sim.topology, op)
    tag = tag or op
    ranks = expand_endpoints(gpus)
    topo = sim.topology
    for g in ranks:  # an NCCL ring runs over GPUs
        try:
            kind = topo.kind(topo.resolve(g))
        except TopologyError:
            continue  # unknown: left to the ring's transfers, whose error names it as ever
        if kind != "gpu":
            raise ScenarioError(f"collective '{id}': '{g}' is a {kind}, not a GPU (a ring's ranks are GPUs)")
    done: dict[str, simpy.Event] = {}
    schedule = ring_schedule(op, nbytes, ranks)
    offsets, pace = [0.0] * len(schedule), None
    if op == "broadcast" and schedule:  # one GPU has nothing to send
        try:
            paced = _ring_pace(sim.lone_copies([(t["src"], t["dst"]) for t in schedule]), nbytes, NCCL_CHUNK_BYTES,
                               NCCL_STEP_S, params)
        except TopologyError as exc:
            raise ScenarioError(f"collective '{id}': {exc}") from None
        offsets, pace = _hop_offsets(paced.fill, paced.lat), paced.rate
    for t, offset in zip(schedule, offsets, strict=True):
        fixed = params.fixed_s if params is not None and not t["after"] else 0.0  # once a call, on its first phase
        # a broadcast's hops at the ring's pace (the fitted cap in it), other rings' at the fitted cap for their size
        cap = pace if pace is not None else params.rate_cap(t["bytes"]) if params is not None else None
        deps = [done[a] for a in t["after"]] if t["after"] else list(after)
        tid = ring_copy_id(id, t["id"])
        done[t["id"]] = sim.transfer(tid, t["src"], t["dst"], t["bytes"], start=start if not t["after"] else 0.0,
                                     after=deps, rate_cap_Bps=cap, fixed_cost_s=fixed, tag=tag,
                                     setup_s=offset, setup_id=ring_fill_id(tid))
    return sim.delay(id, 0.0, after=list(done.values()), tag=tag)


def collective_time(topo: Topology, op: str, nbytes: float, gpus: Sequence[str]) -> float:
    """Closed form of `schedule_collective` for one call alone on the machine: the fitted fixed cost plus, per
    ring phase (the hops of a phase run at once on distinct links), the slowest hop's latency + bytes /
    min(link rate, fitted cap); a broadcast's hop h from its pipeline offset, at the ring's pace."""
    gpus = list(gpus)
    if len(gpus) < 2 or nbytes <= 0:
        return 0.0
    params = fitted(topo, op)
    if op == "broadcast":
        hops = list(zip(gpus, gpus[1:], strict=False))
        pace = _ring_pace([(path_bandwidth_Bps(topo, a, b), topo.path(a, b).latency_s) for a, b in hops], nbytes,
                          NCCL_CHUNK_BYTES, NCCL_STEP_S, params)
        return (params.fixed_s if params is not None else 0.0) + max(
            offset + t + nbytes / min(pace.rate, path_bandwidth_Bps(topo, a, b, nbytes))
            for (a, b), offset, t in zip(hops, _hop_offsets(pace.fill, pace.lat), pace.lat, strict=True))
    phases: dict[bool, list[dict[str, Any]]] = {}
    for t in ring_schedule(op, nbytes, gpus):
        phases.setdefault(bool(t["after"]), []).append(t)
    total = params.fixed_s if params is not None else 0.0
    for hops in phases.values():
        slowest = 0.0
        for t in hops:
            rate = path_bandwidth_Bps(topo, t["src"], t["dst"], t["bytes"])
            if params is not None:
                rate = min(rate, params.rate_cap(t["bytes"]))
            slowest = max(slowest, topo.path(t["src"], t["dst"], t["bytes"]).latency_s + t["bytes"] / rate)
        total += slowest
    return total


def ring_order(topo: Topology, gpus: Sequence[str], first: str | None = None) -> list[str]:
    """A ring through `gpus` that crosses each node boundary once, in node order and GPU order within a node
    (numbers read as numbers: node2 before node10, so consecutive nodes, which share a leaf switch, are
    neighbours on the ring as in NCCL's rings over ranks in node order), starting at `first` (the broadcast root)
    when given."""
    ring = sorted(dict.fromkeys(topo.resolve(g) for g in gpus), key=natural_key)
    if first is not None:
        root = topo.resolve(first)
        ring = [root] + [g for g in ring if g != root]
    return ring


def ring_bottleneck_Bps(topo: Topology, ring: Sequence[str]) -> float:
    return min(path_bandwidth_Bps(topo, a, b) for a, b in zip(ring, ring[1:], strict=False))


def step_cap_Bps(chunk_bytes: float, step_s: float) -> float:
    """The most a ring hop carries when a slot comes back `step_s` after its chunk was handed over and each of
    `NCCL_CHANNELS` channels has `NCCL_STEPS` slots (inf without a step cost). A property of the chunk size, not of
    the message: a call smaller than a chunk is not held to it."""
    return NCCL_CHANNELS * NCCL_STEPS * chunk_bytes / step_s if step_s > 0 else math.inf


def ring_broadcast(sim: Simulation, ring: Sequence[str], nbytes: float, *, chunk_bytes: float, after: Iterable = (),
                   name: str, tag: str = "broadcast", repeats: int = 1, max_explicit_flows: int = 256,
                   explicit: bool | None = None, step_s: float = NCCL_STEP_S) -> simpy.Event:
    """Broadcast `nbytes` from `ring[0]` along the ring; the event fires when the last GPU has it all.

    `repeats`: this call stands for that many back-to-back broadcasts of `nbytes / repeats` each (coarsened
    buckets); each extra one pays its own pipeline fill and latency as a delay after the data has moved.
    `step_s`: the time of one NCCL step, which bounds each hop at `step_cap_Bps(chunk_bytes, step_s)` and, where
    that binds, is each hop's pipeline fill.
    """
    after = list(after)
    if len(ring) < 2 or nbytes <= 0:
        return sim.delay(f"{name}.noop", 0.0, after=after, tag=tag)
    topo = sim.topology
    hops = list(zip(ring, ring[1:], strict=False))
    per_call = nbytes / repeats
    chunks = max(1, math.ceil(per_call / chunk_bytes))
    if explicit is None:
        explicit = chunks * len(hops) <= max_explicit_flows and repeats == 1
    cal = fitted(topo, "broadcast")
    pace = _ring_pace(sim.lone_copies(hops), per_call, chunk_bytes, step_s, cal)
    if cal is not None:
        after = [sim.delay(f"{name}.nccl-call", repeats * cal.fixed_s, after=after, tag=tag)]
    if explicit:
        return _explicit_ring(sim, hops, nbytes, chunk_bytes, pace, after, name, tag)
    # The fluid form: hop h starts one chunk's fill (and the hop latencies) after hop h-1: that offset from `after` is
    # the hop's setup time. Declared, so the compiled loop can run it, not a process that sleeps between hops.
    copies = [(f"{name}.h{h}", a, b, nbytes, offset, f"{name}.fill{h}")
              for h, ((a, b), offset) in enumerate(zip(hops, _hop_offsets(pace.fill, pace.lat), strict=True))]
    events = sim.transfers(copies, after=after, rate_cap_Bps=pace.rate, tag=tag)
    if repeats > 1:  # the other calls' pipeline fills and latencies
        return sim.delay(f"{name}.fills", (repeats - 1) * ((len(hops) - 1) * pace.fill + sum(pace.lat)),
                         after=events, tag=tag)
    return sim.all_of(events, id=f"{name}.end", tag=tag)


def _explicit_ring(sim: Simulation, hops: list[tuple[str, str]], nbytes: float, chunk_bytes: float, pace: _Pace,
                   after: list, name: str, tag: str) -> simpy.Event:
    """The explicit form: NCCL's whole chunks and a short last one, chunk k on hop h after chunk k on hop h-1 and
    chunk k-1 on hop h. A hop pays its latency once, on its first chunk (later ones ride in slots behind it), and
    the first chunk crosses each hop that feeds another in one fill, as the fluid form has it, so the two agree:
    (n-2) fills, the latencies and the bytes at the ring's rate."""
    chunks = max(1, math.ceil(nbytes / chunk_bytes))
    prev_hop: list[simpy.Event | None] = [None] * len(hops)
    last = None
    for k in range(chunks):
        size = min(chunk_bytes, nbytes - k * chunk_bytes)
        upstream = None
        for h, (a, b) in enumerate(hops):
            deps = [*after] if upstream is None else [upstream]
            if prev_hop[h] is not None:
                deps.append(prev_hop[h])
            if k == 0 and h < len(hops) - 1:  # the fill: at link speed, a whole step where steps pace the ring
                ev = sim.transfer(f"{name}.c{k}.h{h}", a, b, size, after=deps, tag=tag, rate_cap_Bps=pace.link_rate,
                                  fixed_cost_s=max(0.0, pace.fill - size / pace.link_rate))
            else:
                ev = sim.transfer(f"{name}.c{k}.h{h}", a, b, size, after=deps, tag=tag, rate_cap_Bps=pace.cap,
                                  latencies=int(k == 0))
            prev_hop[h] = upstream = ev
        last = upstream
    return last


class _Pace(NamedTuple):
    """How a pipelined ring broadcast moves, for both of its builders (`ring_broadcast`, `schedule_collective`) and
    both of its forms."""

    rate: float          # the ring's streaming rate: its slowest link, the step bound, the fitted cap for the call
    cap: float | None    # what a copy is held to beyond its links (the step bound, the fitted cap), None if nothing
    link_rate: float     # the first chunk's speed across a hop: the slowest link and the step bound, not the fitted
    #                      cap, a whole-call efficiency measured on 2 GPUs (taken at a small call's size, the fill of
    #                      a 1 MiB broadcast on 8 GPUs outlasted a 2 MiB one's, so time fell as the size grew)
    fill: float          # a hop's pipeline fill: the first chunk at `link_rate`, or a whole step where steps pace
    lat: list[float]     # each hop's latency


def _ring_pace(hop_costs: list[tuple[float, float]], per_call: float, chunk_bytes: float, step_s: float,
               cal: CollectiveParams | None) -> _Pace:
    """`_Pace` of a broadcast of `per_call` bytes in `chunk_bytes` chunks, from each hop's (bandwidth, latency) as
    a lone copy (`Simulation.lone_copies`)."""
    links = min(bw for bw, _ in hop_costs)  # ring_bottleneck_Bps
    steps = step_cap_Bps(chunk_bytes, step_s)
    stepped = steps < links  # the handshakes, not the links, set the pace (`step_cap_Bps`)
    link_rate = min(links, steps)
    cap = steps if stepped else None
    if cal is not None:
        cap = min(cal.rate_cap(per_call), cap or math.inf)
    fill = min(chunk_bytes, per_call) / link_rate
    if stepped:  # a step paces the hop: the first chunk crosses it in one step, whatever its size
        fill = max(fill, step_s)
    return _Pace(min(link_rate, cap or math.inf), cap, link_rate, fill, [t for _, t in hop_costs])


def _hop_offsets(fill: float, lat: list[float]) -> list[float]:
    """When each hop of a fluid ring starts after the call does: one fill and the hop's latency after the hop
    before it, as the first chunk reaches it."""
    out, offset = [], 0.0
    for t in lat:
        out.append(offset)
        offset += fill + t
    return out


def ring_broadcast_time(nbytes: float, n: int, Bps: float, latency_s: float = 0.0, *, fill_s: float) -> float:
    """Closed form of `ring_broadcast` on a uniform ring, either form: the bytes at the ring's rate `Bps`, n-2 hop
    fills of `fill_s` each (the first chunk crossing a hop: `_Pace.fill`) and each hop's latency once."""
    if n < 2:
        return 0.0
    return nbytes / Bps + (n - 2) * fill_s + latency_s * (n - 1)


def gather(sim: Simulation, sources: dict[str, float], dst: str, *, after: Iterable = (), name: str,
           tag: str = "gather", fixed_cost_s: float = 0.0, repeats: int = 1) -> simpy.Event:
    """Every source sends its bytes to `dst` at once (a local source's part is already there). `repeats`: this
    call stands for that many back-to-back gathers (coarsened buckets), so each copy pays its route's latency
    that many times."""
    after = list(after)
    here = sim.topology.resolve(dst)
    events = [sim.transfer(f"{name}.{src}", src, here, b, after=after, tag=tag, fixed_cost_s=fixed_cost_s,
                           latencies=repeats)
              for src, b in sources.items() if b > 0 and sim.topology.resolve(src) != here]
    return sim.all_of(events, id=f"{name}.end", tag=tag) if events else sim.delay(f"{name}.noop", 0.0, after=after,
                                                                                  tag=tag)


def ring_allgather(sim: Simulation, ring: Sequence[str], missing: dict[str, float], *, after: Iterable = (), name: str,
                   tag: str = "allgather", repeats: int = 1) -> simpy.Event:
    """Ring all-gather in its bandwidth form: every GPU receives the bytes it lacks from its ring predecessor,
    all hops at once (each link of a ring all-gather carries (n-1)/n of the data, concurrently). `repeats`: this
    call stands for that many back-to-back calls (coarsened buckets), each paying the fitted call cost and its
    copies' latencies; the fitted cap is that of one call's size."""
    after = list(after)
    cal = fitted(sim.topology, "all_gather")
    if cal is not None and len(ring) > 1:
        after = [sim.delay(f"{name}.nccl-call", repeats * cal.fixed_s, after=after, tag=tag)]
    events = []
    for i, g in enumerate(ring):
        b = missing.get(g, 0.0)
        if b > 0 and len(ring) > 1:
            events.append(sim.transfer(f"{name}.{g}", ring[i - 1], g, b, after=after, tag=tag, latencies=repeats,
                                       rate_cap_Bps=None if cal is None else cal.rate_cap(b / repeats)))
    return sim.all_of(events, id=f"{name}.end", tag=tag) if events else sim.delay(f"{name}.noop", 0.0, after=after,
                                                                                  tag=tag)
