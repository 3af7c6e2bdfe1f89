"""Scenario files (YAML or JSON, the format of DESIGN.md) -> a ready-to-run `Simulation`.

```yaml
topology: hgx-h200-8        # preset name, or a topology file path (relative to this file)
calibration: null           # optional: a profile's path (relative to this file); none: datasheet figures
transfers:
  - {id: t1, src: host, dst: gpu0, bytes: 1GiB}
  - {id: t2, src: gpu0, dst: gpu1, bytes: 256MiB, start: 0.001, after: [t1]}
tasks:                      # optional: roofline compute tasks (an addition to DESIGN.md)
  - {id: k1, gpu: gpu1, flops: 2e12, bytes: 8GiB, dtype: bf16, after: [t2]}
collectives:                # optional: NCCL-style collective calls (an addition; see simcore.collectives)
  - {id: c1, op: all_reduce, gpus: [gpu0, gpu1], bytes: 1GiB, after: [k1]}   # or gpus: node0-63.gpu0-7
```
Optional per-transfer keys (additions, documented in README): `engine` (name of a FIFO queue the transfer
waits in), `rate_cap_GBps`, `weight`, `fixed_cost_s`, `tag`. Every error names the file and the field, and
nothing is simulated until the whole file has been checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabricsim.errors import FabricsimError, TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import profile_file
from fabricsim.hwmodels.endpoints import expand_endpoints
from fabricsim.hwmodels.fileio import read_yaml
from fabricsim.hwmodels.intervals import SAMPLES, Interval, predict_interval
from fabricsim.hwmodels.presets import NO_CALIBRATION
from fabricsim.hwmodels.topology import Topology

from .collectives import OPS, ring_copy_id, ring_schedule, schedule_collective
from .errors import ScenarioError
from .records import Result
from .simulation import MECHANISMS, Simulation
from .units import check_rate, check_weight, parse_bytes, parse_seconds

_TOP_KEYS = {"topology", "calibration", "transfers", "tasks", "collectives", "name", "description"}
_TRANSFER_KEYS = {"id", "src", "dst", "bytes", "start", "after", "engine", "rate_cap_GBps", "weight",
                  "fixed_cost_s", "tag", "mechanism"}
_TASK_KEYS = {"id", "gpu", "flops", "bytes", "dtype", "start", "after", "tag"}
_COLLECTIVE_KEYS = {"id", "op", "gpus", "bytes", "start", "after", "tag"}


@dataclass
class Scenario:
    """A checked scenario: the topology reference and the work items, dependencies validated."""

    source: str
    topology: str
    calibration: str | None
    items: list[dict[str, Any]] = field(default_factory=list)  # in a dependency-respecting order
    base_dir: Path = Path(".")

    def load_topology(self, calibration: str | None = None) -> Topology:
        """Resolve the topology (preset or file) with the scenario's or the given calibration."""
        # A --calibration given by the caller is relative to the working directory; the scenario's own
        # `calibration:` is relative to the scenario file.
        cal: Any = calibration
        try:
            if cal is None and self.calibration is not None:  # 'none', or a file beside the scenario or bundled
                cal = self.calibration if self.calibration == NO_CALIBRATION else \
                    profile_file(self.calibration, self.base_dir)
            return presets.load(self.topology, "default" if cal is None else cal, base_dir=self.base_dir)
        except FabricsimError as exc:
            raise ScenarioError(f"{self.source}: {exc}") from None

    def input_files(self) -> list[Path]:
        """The files this scenario reads besides its own (a topology file, a calibration profile beside it): what an
        output of the run must not replace (`--perfetto box.yaml --force` replaced the topology it named)."""
        named = [self.topology, *([self.calibration] if self.calibration not in (None, NO_CALIBRATION) else [])]
        return [p for p in (self.base_dir / n for n in named) if p.is_file()]

    def build(self, calibration: str | None = None, *, topology: Topology | None = None,
              **sim_kwargs: Any) -> Simulation:
        """A ready-to-run Simulation of the scenario, on its own topology or on `topology` when given (validate
        simulates measured cases on a topology it calibrates itself)."""
        topo = topology if topology is not None else self.load_topology(calibration)
        sim = Simulation(topo, **sim_kwargs)
        for item in self.items:
            where = f"{self.source}: {item['_where']}"
            try:
                if item["_kind"] == "transfer":
                    sim.transfer(item["id"], item["src"], item["dst"], item["bytes"], start=item["start"],
                                 after=item["after"], rate_cap_Bps=item.get("rate_cap_Bps"),
                                 weight=item.get("weight", 1.0), fixed_cost_s=item.get("fixed_cost_s", 0.0),
                                 engine=item.get("engine"), tag=item.get("tag"),
                                 mechanism=item.get("mechanism", "ce"))
                elif item["_kind"] == "collective":
                    schedule_collective(sim, item["id"], item["op"], item["gpus"], item["bytes"],
                                        start=item["start"], after=item["after"], tag=item.get("tag"))
                else:
                    sim.task(item["id"], item["gpu"], flops=item["flops"], hbm_bytes=item["bytes"],
                             dtype=item["dtype"], start=item["start"], after=item["after"], tag=item.get("tag"))
            except FabricsimError as exc:
                msg = str(exc)
                # Drop the engine's "transfer 'id':" prefix: the location already names the item.
                if msg.startswith(("transfer '", "task '")) and "': " in msg:
                    msg = msg.split("': ", 1)[1]
                raise ScenarioError(f"{where}: {msg}") from None
        return sim

    def unfitted_mechanisms(self, topo: Topology) -> list[str]:
        """'pageable (h2d)' for each mechanism and path class that transfers use without a fit on `topo`: their
        time is the copy engine's, which the user must be told (a pageable copy runs ~6x slower)."""
        out: dict[str, None] = {}
        for item in self.items:
            mech = item.get("mechanism", "ce")
            if item["_kind"] == "transfer" and not topo.fits(mech, item["src"], item["dst"]):
                out[f"{mech} ({topo.path(item['src'], item['dst']).path_class})"] = None
        return list(out)

    def run(self, calibration: str | None = None) -> Result:
        return self.build(calibration).run()

    def collective_calls(self, result: Result) -> list[dict[str, Any]]:
        """Each collective call of the scenario as `simulate --json` lists it (a documented addition): {id, op,
        gpus (its ring, expanded), bytes, start_s (its first ring transfer's), finish_s (when the last rank had
        its bytes: the call's marker)}. Its ring transfers are listed among the transfers (`ID.r0`, `ID.rs0`, ...)."""
        calls = {it["id"]: it for it in sorted((it for it in self.items if it["_kind"] == "collective"),
                                               key=lambda it: int(it["_where"].split("[")[1][:-1]))}  # file order
        if not calls:
            return []
        part_of = {ring_copy_id(cid, t["id"]): cid for cid, it in calls.items()
                   for t in ring_schedule(it["op"], it["bytes"], it["gpus"])}
        first: dict[str, float] = {}
        for r in result.transfers:
            cid = part_of.get(r.id)
            if cid is not None:
                first[cid] = min(first.get(cid, r.start_s), r.start_s)
        ends = {r.id: r for r in result.records if r.id in calls}
        return [{"id": cid, "op": it["op"], "gpus": list(it["gpus"]), "bytes": int(it["bytes"]),
                 "start_s": first.get(cid, ends[cid].start_s), "finish_s": ends[cid].finish_s}
                for cid, it in calls.items()]

    def makespan_interval(self, calibration: str | None = None, samples: int = SAMPLES,
                          makespan_s: float | None = None, topology: Topology | None = None) -> Interval:
        """The makespan with its prediction interval (re-runs on perturbed topologies: hwmodels.intervals);
        `makespan_s` and `topology`: the unperturbed run's makespan and the topology it ran on (`load_topology` of
        `calibration`), when the caller has them (else they are made once more)."""
        topo = self.load_topology(calibration) if topology is None else topology
        return predict_interval(lambda t: self.build(topology=t, record_load=False).run().makespan_s, topo,
                                samples=samples, point=makespan_s)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raises `ScenarioError` naming the file and field on any problem."""
    path = Path(path)
    data = read_yaml(path, ScenarioError, "scenario")
    return parse_scenario(data, source=str(path), base_dir=path.parent)


def parse_scenario(data: Any, source: str = "scenario", base_dir: Path = Path(".")) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping with 'topology' and 'transfers' at the top level")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"{source}: unknown key '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(_TOP_KEYS))})")
    topo = data.get("topology")
    if not isinstance(topo, str) or not topo:
        raise ScenarioError(f"{source}: topology: expected a preset name or a file path")
    cal = data.get("calibration")
    if cal is not None and not isinstance(cal, str):
        raise ScenarioError(f"{source}: calibration: expected a file path or null")
    transfers = data.get("transfers") or []
    tasks = data.get("tasks") or []
    collectives = data.get("collectives") or []
    if not isinstance(transfers, list):
        raise ScenarioError(f"{source}: transfers: expected a list")
    if not isinstance(tasks, list):
        raise ScenarioError(f"{source}: tasks: expected a list")
    if not isinstance(collectives, list):
        raise ScenarioError(f"{source}: collectives: expected a list")
    if not transfers and not tasks and not collectives:
        raise ScenarioError(f"{source}: no transfers, tasks or collectives to simulate")
    items = [_transfer(t, f"transfers[{i}]", source) for i, t in enumerate(transfers)]
    items += [_task(t, f"tasks[{i}]", source) for i, t in enumerate(tasks)]
    items += [_collective(t, f"collectives[{i}]", source) for i, t in enumerate(collectives)]
    return Scenario(source, topo, cal, _order(items, source), base_dir)


def _check_keys(item: Any, allowed: set[str], where: str, source: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ScenarioError(f"{source}: {where}: expected a mapping")
    unknown = set(item) - allowed
    if unknown:
        raise ScenarioError(f"{source}: {where}: unknown key '{sorted(unknown)[0]}' (allowed: "
                            f"{', '.join(sorted(allowed))})")
    return item


def _common(item: dict[str, Any], where: str, source: str, default_id: str) -> dict[str, Any]:
    rid = item.get("id", default_id)
    if not isinstance(rid, str | int) or isinstance(rid, bool) or str(rid) == "":
        raise ScenarioError(f"{source}: {where}.id: expected a name")
    after = item.get("after", [])
    if isinstance(after, str | int):
        after = [after]
    if not isinstance(after, list):
        raise ScenarioError(f"{source}: {where}.after: expected a list of ids")
    tag = item.get("tag")
    if tag is not None and not isinstance(tag, str | int | float):
        raise ScenarioError(f"{source}: {where}.tag: expected a short label, got {tag!r}")
    out = {"id": str(rid), "after": [str(a) for a in after], "_where": where,
           "tag": None if tag is None else str(tag), "_named": "id" in item}
    out["start"] = parse_seconds(item.get("start", 0.0), f"{source}: {where}.start")
    return out


def _transfer(item: Any, where: str, source: str) -> dict[str, Any]:
    item = _check_keys(item, _TRANSFER_KEYS, where, source)
    out = _common(item, where, source, f"t{where.split('[')[1][:-1]}")
    for key in ("src", "dst"):
        if not isinstance(item.get(key), str):
            raise ScenarioError(f"{source}: {where}.{key}: expected an endpoint name (host, gpuN, nvmeN, nodeK.gpuN)")
        out[key] = item[key]
    if "bytes" not in item:
        raise ScenarioError(f"{source}: {where}.bytes: missing")
    out["bytes"] = parse_bytes(item["bytes"], f"{source}: {where}.bytes")
    mech = item.get("mechanism", "ce")
    if mech not in MECHANISMS:
        raise ScenarioError(f"{source}: {where}.mechanism: '{mech}' is not one of {', '.join(MECHANISMS)}")
    out["mechanism"] = mech
    out["_kind"] = "transfer"
    if "rate_cap_GBps" in item:
        where_cap = f"{source}: {where}.rate_cap_GBps"
        out["rate_cap_Bps"] = check_rate(_positive(item["rate_cap_GBps"], where_cap), where_cap, per_unit=1e9)
    if "weight" in item:
        where_w = f"{source}: {where}.weight"
        out["weight"] = check_weight(_positive(item["weight"], where_w), where_w)
    if "fixed_cost_s" in item:
        out["fixed_cost_s"] = parse_seconds(item["fixed_cost_s"], f"{source}: {where}.fixed_cost_s")
    if "engine" in item:
        if not isinstance(item["engine"], str):
            raise ScenarioError(f"{source}: {where}.engine: expected a queue name")
        out["engine"] = item["engine"]
    return out


def _task(item: Any, where: str, source: str) -> dict[str, Any]:
    item = _check_keys(item, _TASK_KEYS, where, source)
    out = _common(item, where, source, f"k{where.split('[')[1][:-1]}")
    if not isinstance(item.get("gpu"), str):
        raise ScenarioError(f"{source}: {where}.gpu: expected a GPU name")
    out["gpu"] = item["gpu"]
    flops = item.get("flops", 0.0)
    try:
        out["flops"] = float(flops)
    except (TypeError, ValueError):
        raise ScenarioError(f"{source}: {where}.flops: expected a number, got {flops!r}") from None
    if not 0 <= out["flops"] < float("inf"):
        raise ScenarioError(f"{source}: {where}.flops: expected a finite number >= 0, got {flops!r}")
    out["bytes"] = parse_bytes(item["bytes"], f"{source}: {where}.bytes") if "bytes" in item else 0
    out["dtype"] = str(item.get("dtype", "bf16"))
    out["_kind"] = "task"
    return out


def _collective(item: Any, where: str, source: str) -> dict[str, Any]:
    item = _check_keys(item, _COLLECTIVE_KEYS, where, source)
    out = _common(item, where, source, f"c{where.split('[')[1][:-1]}")
    if item.get("op") not in OPS:
        raise ScenarioError(f"{source}: {where}.op: expected one of {', '.join(OPS)}, got {item.get('op')!r}")
    out["op"] = item["op"]
    gpus = item.get("gpus")
    if isinstance(gpus, str):
        gpus = [gpus]
    if not isinstance(gpus, list) or not gpus or not all(isinstance(g, str) for g in gpus):
        raise ScenarioError(f"{source}: {where}.gpus: expected a list of two or more GPU names (the ring order; "
                            "ranges such as node0-63.gpu0-7 allowed)")
    try:
        gpus = expand_endpoints(gpus)
    except TopologyError as e:
        raise ScenarioError(f"{source}: {where}.gpus: {e}") from None
    if len(gpus) < 2:
        raise ScenarioError(f"{source}: {where}.gpus: expected a list of two or more GPU names (the ring order)")
    if len(set(gpus)) < len(gpus):
        raise ScenarioError(f"{source}: {where}.gpus: a GPU appears twice in the ring")
    out["gpus"] = list(gpus)
    if "bytes" not in item:
        raise ScenarioError(f"{source}: {where}.bytes: missing")
    out["bytes"] = parse_bytes(item["bytes"], f"{source}: {where}.bytes")
    out["_kind"] = "collective"
    return out


def _positive(value: Any, where: str) -> float:
    """A number > 0; numeric strings count too, since YAML 1.1 reads `1e2` (no decimal point) as a string."""
    try:
        x = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        x = float("nan")
    if not 0 < x < float("inf"):
        raise ScenarioError(f"{where}: expected a finite number > 0, got {value!r}")
    return x


def _order(items: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Dependency order (Kahn), keeping file order among independent items; names unknown ids and cycles."""
    by_id: dict[str, dict[str, Any]] = {}
    for it in items:
        if it["id"] in by_id:
            raise ScenarioError(f"{source}: {_duplicate(by_id[it['id']], it)}")
        by_id[it["id"]] = it
    for it in items:
        for a in it["after"]:
            if a not in by_id:
                call = by_id.get(a.rpartition(".")[0])
                hint = (f" (a collective's ring copies cannot be waited on one by one: wait for the call "
                        f"'{call['id']}')" if call is not None and call["_kind"] == "collective" else "")
                raise ScenarioError(f"{source}: {it['_where']}.after: unknown id '{a}'{hint}")
            if a == it["id"]:
                raise ScenarioError(f"{source}: {it['_where']}.after: '{a}' waits for itself")
    indeg = {it["id"]: len(set(it["after"])) for it in items}
    users: dict[str, list[str]] = {}
    for it in items:
        for a in set(it["after"]):
            users.setdefault(a, []).append(it["id"])
    ready = [it["id"] for it in items if indeg[it["id"]] == 0]
    out: list[dict[str, Any]] = []
    while ready:
        rid = ready.pop(0)
        out.append(by_id[rid])
        for u in users.get(rid, []):
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    if len(out) < len(items):
        stuck = [it["id"] for it in items if indeg[it["id"]] > 0]
        cycle = _find_cycle(stuck, by_id)
        raise ScenarioError(f"{source}: cycle in 'after': {' -> '.join(cycle)}")
    return out


def _duplicate(first: dict[str, Any], second: dict[str, Any]) -> str:
    """The error of two items with one id, naming both, and saying which took it from its position (an item without
    an id is named t<i>, k<i> or c<i> after its place in its list)."""
    def said(it: dict[str, Any]) -> str:
        return f"{it['_where']}.id" if it["_named"] else f"{it['_where']} (no id: named by its position)"

    return f"duplicate id '{second['id']}': {said(first)} and {said(second)}"


def _find_cycle(stuck: list[str], by_id: dict[str, dict[str, Any]]) -> list[str]:
    stuck_set = set(stuck)
    node = stuck[0]
    path: list[str] = []
    seen: dict[str, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(a for a in by_id[node]["after"] if a in stuck_set)
    return [*path[seen[node]:], node]
