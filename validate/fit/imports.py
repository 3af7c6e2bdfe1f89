"""What users already measure, read as a measurement document `calibrate` and `report` take like validate's own.

Three formats besides `measured.json`, told apart by their content (`load_any`):

- the JSON of concurrent copies (`{"cases": {NAME: {"flows": [[src, dst, bytes], ...], "finish_s": [...],
  "own_s": [...]}}, "gpus", "nvidia_smi_topo_m", "method"}`, endpoints 'h' or a GPU index), e.g.
  `validate/data/h200x8-probe/calibration.json`. Finish times there run from a common gate and include the gate's
  hop (the copy starts a few microseconds after the gate event); where a lone copy has both `own_s` (its own
  stream's duration) and `finish_s`, their difference is that hop, and its median per path class is taken off
  the finish times that have no `own_s`. Split: lone copies alternate sizes (both ends calibrate, as validate's
  sweeps do); concurrency cases that one shared cap explains (every GPU one direction) calibrate, the others
  (fan-out from one GPU) are held out;
- nccl-tests text output (`all_reduce_perf`, `all_gather_perf`, `broadcast_perf`): the out-of-place time per
  size from 1 MiB up, sizes alternating between the splits; which collective it is comes from the file name or
  the command line in the text;
- nvbandwidth text output: the unidirectional copy-engine testcases (host_to_device / device_to_host /
  device_to_device read and write / device_local_copy), each matrix entry a lone copy of the buffer size
  (default 512 MiB) taking bytes / bandwidth (nvbandwidth reports back-to-back copies, so latency is
  amortised away); calibration only. Other testcases are listed as not imported.

Each becomes the document `validate.measurements` checks; the machine's GPU model and count come from the
text (device lines) so the preset and a base profile can be matched.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from fabricsim.errors import FabricsimError
from fabricsim.hwmodels.fileio import read_text
from fabricsim.hwmodels.presets import PRESET_FOR
from fabricsim.validate.cases import CALIBRATION, HELD_OUT, NCCL_OPS, _label, _size_split
from fabricsim.validate.errors import MeasurementError
from fabricsim.validate.gpu.measure import gpu_model_of
from fabricsim.validate.measurements import FORMAT, FORMAT_VERSION, Measurements, check_document, load_measurements

NVBANDWIDTH_BYTES = 512 << 20
NCCL_MIN_BYTES = 1 << 20
_OPS = {"allreduce": "all_reduce", "allgather": "all_gather", "broadcast": "broadcast",
        "reducescatter": "reduce_scatter", "alltoall": "all_to_all"}
FORMATS_READ = "measured.json, the concurrent-copies JSON, nccl-tests or nvbandwidth output"
_LISTED_MAX_BYTES = 64 << 20  # a folder's file larger than this is no measurement (`_folder_without_measured`)


def load_any(path: str | Path) -> Measurements:
    """A measurement document from any supported file (see the module docstring), or from a folder holding
    measured.json (what `fabricsim validate` writes)."""
    path = Path(path)
    if path.is_dir() and not (path / "measured.json").exists():
        raise MeasurementError(_folder_without_measured(path))
    if path.is_dir() or path.suffix == ".json":
        target = path / "measured.json" if path.is_dir() else path
        try:
            doc = json.loads(read_text(target, MeasurementError, "measurements"))
        except json.JSONDecodeError:
            return load_measurements(path)  # its errors name the problem (truncated or malformed)
        if isinstance(doc, dict) and isinstance(doc.get("cases"), dict):
            return from_concurrent_copies(doc, str(path))
        return load_measurements(path)
    text = read_text(path, MeasurementError, "measurements", lenient=True)
    if "nvbandwidth" in text and "Running " in text:
        return from_nvbandwidth(text, str(path))
    if re.search(r"out-of-place", text) and re.search(r"busbw", text):
        return from_nccl_tests(text, str(path))
    raise MeasurementError(f"{path}: not a format calibrate reads ({FORMATS_READ})")


def _folder_without_measured(folder: Path) -> str:
    """What to say of a folder given to calibrate or report that holds no measured.json: the files in it that
    they do read, to be given by name. A folder stands for its measured.json only (a validate output folder); it
    said 'FOLDER/measured.json: cannot read measurements (No such file or directory)', although the folder held
    the `calibration.json` docs/validation.md links, which works when given itself. Not read in its place: a
    folder may hold several such files, and which of them the user meant is theirs to say."""
    readable = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.stat().st_size > _LISTED_MAX_BYTES:
            continue
        try:
            load_any(f)
        except FabricsimError:
            continue
        readable.append(f)
    head = f"{folder}: no measured.json in this folder (what `fabricsim validate` writes)"
    if not readable:
        return f"{head}, and none of its files is a format calibrate and report read ({FORMATS_READ})"
    if len(readable) == 1:
        return f"{head}; give the file it holds that calibrate and report read: {readable[0]}"
    return f"{head}; give by name the files it holds that calibrate and report read: {', '.join(map(str, readable))}"


def _document(source: str, model: str, gpus: int, cases: list[dict[str, Any]], what: str,
              extra: dict[str, Any] | None = None) -> Measurements:
    machine = {"kind": Path(source).stem, "preset": PRESET_FOR.get((model, gpus)), "gpu_model": model,
               "gpus": gpus, **(extra or {})}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": "", "suite": "imported",
           "machine": machine, "cases": cases, "skipped": [], "settings": {}, "imported_from": what}
    return check_document(doc, source)


def _endpoint(x: Any) -> str:
    return "host" if str(x) in ("h", "host") else f"gpu{int(x)}"


def _class(src: str, dst: str) -> str:
    if src == "host":
        return "h2d"
    if dst == "host":
        return "d2h"
    return "d2d" if src == dst else "p2p"


def from_concurrent_copies(doc: dict[str, Any], source: str) -> Measurements:
    """The shared JSON of concurrent copies as a measurement document (split and hop: module docstring)."""
    gpus = doc.get("gpus")
    if not isinstance(gpus, int) or gpus < 1:
        raise MeasurementError(f"{source}: 'gpus' must be the machine's GPU count")
    model = gpu_model_of(str(doc.get("gpu_model") or _model_from_text(str(doc.get("what", ""))) or ""))
    raw: list[tuple[str, list[tuple[str, str, int]], list[float], list[float] | None]] = []
    for name, c in doc["cases"].items():
        where = f"{source}: cases.{name}"
        try:
            flows = [(_endpoint(s), _endpoint(d), int(n)) for s, d, n in c["flows"]]
            fin = [float(x) for x in c["finish_s"]]
        except (KeyError, TypeError, ValueError):
            raise MeasurementError(f"{where}: expected 'flows' [[src, dst, bytes], ...] and 'finish_s'") from None
        if len(fin) != len(flows) or not all(x > 0 for x in fin):
            raise MeasurementError(f"{where}: one positive finish time per flow expected")
        own = [float(x) for x in c["own_s"]] if c.get("own_s") else None
        raw.append((name, flows, fin, own))
    hops: dict[str, list[float]] = {}
    for _, flows, fin, own in raw:
        if own and len(flows) == 1:
            hops.setdefault(_class(flows[0][0], flows[0][1]), []).append(fin[0] - own[0])
    every = [h for hs in hops.values() for h in hs]
    hop_all = statistics.median(every) if every else 0.0
    hop = {k: statistics.median(v) for k, v in hops.items()}
    sizes: dict[tuple[str, str], list[int]] = {}
    for _, flows, _, _ in raw:
        if len(flows) == 1:
            sizes.setdefault(flows[0][:2], []).append(flows[0][2])
    cases = []
    for name, flows, fin, own in raw:
        cid = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name.replace("->", "-to-")).strip("-")
        if len(flows) == 1:
            (s, d, n), cls = flows[0], _class(flows[0][0], flows[0][1])
            ordered = sorted(set(sizes[(s, d)]))
            split = _size_split(ordered.index(n), len(ordered))
            t = own[0] if own else fin[0] - hop.get(cls, hop_all)
            pattern = f"p2p-{s}-{d}" if cls == "p2p" else cls
            xs = [{"id": "a", "src": s, "dst": d, "bytes": n, "mech": "ce"}]
            measured = {"makespan_s": t, "finish_s": {"a": t}, "own_s": {"a": t}}
        else:
            classes = {_class(s, d) for s, d, _ in flows}
            issuers = {d if s == "host" else s for s, d, _ in flows}
            one_cap = len(classes) == 1 and classes <= {"h2d", "d2h"} and len(issuers) == len(flows)
            split = CALIBRATION if one_cap else HELD_OUT
            pattern = "host-fan" if one_cap else "fan-out" if len({s for s, _, _ in flows}) == 1 else "mixed"
            xs = [{"id": f"t{i}", "src": s, "dst": d, "bytes": n, "mech": "ce"} for i, (s, d, n) in enumerate(flows)]
            ts = [f - hop.get(_class(s, d), hop_all) for (s, d, _), f in zip(flows, fin, strict=True)]
            per = {f"t{i}": t for i, t in enumerate(ts)}
            measured = {"makespan_s": max(ts), "finish_s": per, "own_s": per, "finish_sorted_s": sorted(ts),
                        "own_sorted_s": sorted(ts)}
        cases.append({"id": cid, "group": "copies", "pattern": pattern, "split": split, "op": "", "bytes": 0,
                      "note": name, "params": {"bytes": max(n for _, _, n in flows)}, "xfers": xs, "kernels": [],
                      "measured": measured})
    extra = {"topo_m": doc.get("nvidia_smi_topo_m", ""), "hop_s": hop}
    m = _document(source, model, gpus, cases, f"concurrent-copies JSON ({len(cases)} cases; {doc.get('what', '')})",
                  extra)
    m.doc["created_at"] = _date_from_text(str(doc.get("what", "")))
    return m


def _model_from_text(text: str) -> str:
    m = re.search(r"\b(H100|H200|A100|L40S)\b", text)
    return m[1] if m else ""


def _date_from_text(text: str) -> str:
    m = re.search(r"\d{4}-\d{2}-\d{2}", text)
    return m[0] if m else ""


def _devices(lines: list[str], pattern: str) -> list[str]:
    return [m[1].strip() for ln in lines if (m := re.search(pattern, ln))]


def from_nccl_tests(text: str, source: str, op: str | None = None) -> Measurements:
    """nccl-tests output as NCCL cases (out-of-place time per size >= 1 MiB)."""
    lines = text.splitlines()
    if op is None:
        m = re.search(r"(all_?reduce|all_?gather|broadcast|reduce_?scatter|all_?to_?all)(?:_perf)?",
                      f"{Path(source).name} {text[:2000]}", re.IGNORECASE)
        if not m:
            raise MeasurementError(f"{source}: cannot tell which collective this is: name the file after the test "
                                   "(e.g. all_reduce_perf.txt)")
        op = _OPS[m[1].lower().replace("_", "")]
    names = _devices(lines, r"Rank\s+\d+.*device\s+\d+\s+\[[^\]]*\]\s+(.+)$")
    if not names:
        raise MeasurementError(f"{source}: no '# Rank N ... device' lines: is this nccl-tests output?")
    rows: dict[int, float] = {}
    for ln in lines:
        tok = ln.split()
        if len(tok) < 10 or ln.lstrip().startswith("#") or not tok[0].isdigit() or not tok[1].isdigit():
            continue
        try:
            size, t_us = int(tok[0]), float(tok[-8])
        except ValueError:
            continue
        if size >= NCCL_MIN_BYTES and t_us > 0:
            rows[size] = t_us * 1e-6
    if not rows:
        raise MeasurementError(f"{source}: no result rows of 1 MiB or more")
    sizes = sorted(rows)
    cases = []
    for i, n in enumerate(sizes):
        cases.append({"id": f"nccl-{op}-{_label(n)}", "group": "nccl", "pattern": f"nccl-{op}",
                      "split": _size_split(i, len(sizes)) if op in NCCL_OPS else HELD_OUT, "op": op, "bytes": n,
                      "note": "nccl-tests out-of-place", "params": {"bytes": n, "gpus": len(names)}, "xfers": [],
                      "kernels": [], "measured": {"makespan_s": rows[n]}})
    return _document(source, gpu_model_of(names[0]), len(names), cases, f"nccl-tests {op} ({len(sizes)} sizes)")


_NVB = {"host_to_device_memcpy_ce": "h2d", "device_to_host_memcpy_ce": "d2h",
        "device_to_device_memcpy_read_ce": "p2p", "device_to_device_memcpy_write_ce": "p2p",
        "device_local_copy": "d2d"}


def _check_device(source: str, test: str, names: list[str], index: int, axis: str) -> None:
    """A matrix entry must name a GPU the file's 'Device N:' lines list: a copy to an endpoint the machine
    lacks would otherwise fail much later, in the simulator, with no file named."""
    if not 0 <= index < len(names):
        raise MeasurementError(f"{source}: {test} has a {axis} for GPU {index}, but the file lists "
                               f"{len(names)} device(s) ('Device N:' lines)")


def from_nvbandwidth(text: str, source: str, nbytes: int = NVBANDWIDTH_BYTES) -> Measurements:
    """nvbandwidth output: every entry of its unidirectional copy-engine matrices as a lone copy."""
    lines = text.splitlines()
    names = _devices(lines, r"^Device\s+\d+:\s+(.+?)(?:\s+\([0-9a-fA-F:.]+\))?$")
    if not names:
        raise MeasurementError(f"{source}: no 'Device N: NAME' lines: is this nvbandwidth output?")
    cases, skipped = [], []
    i = 0
    while i < len(lines):
        m = re.match(r"Running (\w+)\.", lines[i].strip())
        i += 1
        if not m:
            continue
        test = m[1]
        if test not in _NVB:
            skipped.append(test)
            continue
        header = lines[i + 1].split() if i + 1 < len(lines) else []
        i += 2
        while i < len(lines) and re.match(r"^\s*\d+\s", lines[i]):
            cells = lines[i].split()
            row = int(cells[0])
            for col, v in zip(header, cells[1:], strict=False):
                if v == "N/A":
                    continue
                cls = _NVB[test]
                _check_device(source, test, names, int(col), "column")
                if cls == "p2p":
                    _check_device(source, test, names, row, "row")
                src, dst = {"h2d": ("host", f"gpu{col}"), "d2h": (f"gpu{col}", "host"),
                            "p2p": (f"gpu{row}", f"gpu{col}"), "d2d": (f"gpu{col}", f"gpu{col}")}[cls]
                t = nbytes / (float(v) * 1e9)
                cid = f"nvb-{test}-{row}-{col}"
                pattern = f"p2p-{src}-{dst}" if cls == "p2p" else cls
                cases.append({"id": cid, "group": "copies", "pattern": pattern, "split": CALIBRATION, "op": "",
                              "bytes": 0, "note": f"nvbandwidth {test}", "params": {"bytes": nbytes},
                              "xfers": [{"id": "a", "src": src, "dst": dst, "bytes": nbytes, "mech": "ce"}],
                              "kernels": [], "measured": {"makespan_s": t, "finish_s": {"a": t}, "own_s": {"a": t}}})
            i += 1
    if not cases:
        raise MeasurementError(f"{source}: no unidirectional copy-engine testcase ({', '.join(_NVB)}) in it")
    m = _document(source, gpu_model_of(names[0]), len(names), cases,
                  f"nvbandwidth ({len(cases)} copies of {nbytes >> 20} MiB)")
    m.doc["skipped"] = [{"id": t, "reason": "nvbandwidth testcase not imported"} for t in sorted(set(skipped))]
    return m


def merge(ms: list[Measurements]) -> Measurements:
    """Several documents of one machine as one (ids must not clash; the GPU model must match)."""
    if len(ms) == 1:
        return ms[0]
    first = ms[0]
    model = first.machine["gpu_model"]
    gpus = max(int(m.machine["gpus"]) for m in ms)
    cases, seen = [], set()
    for m in ms:
        if m.machine["gpu_model"] != model:
            raise MeasurementError(f"{m.source}: {m.machine['gpu_model']} GPUs; {first.source} has {model}")
        for c in m.doc["cases"]:
            if c["id"] in seen:
                raise MeasurementError(f"{m.source}: case '{c['id']}' also in an earlier input")
            seen.add(c["id"])
            cases.append(c)
    doc = {**first.doc, "cases": cases, "machine": {**first.machine, "gpus": gpus,
                                                    "preset": PRESET_FOR.get((model, gpus))},
           "imported_from": "; ".join(str(m.doc.get("imported_from") or Path(m.source).name) for m in ms)}
    return check_document(doc, " + ".join(m.source for m in ms))
