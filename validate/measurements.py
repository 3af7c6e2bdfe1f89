"""The measurement file: what a validate run found, case by case, with the machine it ran on.

One JSON document (`measured.json`)::

    {"format": "fabricsim-measurements", "format_version": 1, "created_at": ..., "suite": "full",
     "machine": {"kind", "preset", "gpu_model", "gpus", "device_layer", ...facts},
     "settings": {"reps", "warmup", "CUDA_DEVICE_MAX_CONNECTIONS", ...},
     "cases": [{"id", "group", "pattern", "split", "params", "xfers", "kernels", "op", "bytes", "note",
                "measured": {...}, "scenario": {...} | null}],
     "skipped": [{"id", "reason"}]}

`measured` holds medians: `makespan_s` for every copy/NCCL case, `finish_s` (per copy, on GPU 0's clock
from the common start) for copy cases, `open_s`/`close_s` for IPC cases. Reading checks everything
`calibrate` and `report` rely on and names the first thing that is wrong, so a truncated or hand-edited
file fails with a one-line error rather than a traceback deep in a fit. Imports neither torch nor simpy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fabricsim.hwmodels.fileio import atomic_write_text, read_text

from .cases import CALIBRATION, HELD_OUT, SUITES, Case, Kernel, Xfer, build_cases
from .errors import MeasurementError

FORMAT = "fabricsim-measurements"
FORMAT_VERSION = 1
GROUPS = ("copies", "nccl", "ipc")
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository (or installed package) this module lives in


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write JSON under a temporary name, fsync, rename: readers never see half a file."""
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def case_to_dict(case: Case) -> dict[str, Any]:
    return {
        "id": case.id, "group": case.group, "pattern": case.pattern, "split": case.split, "op": case.op,
        "bytes": case.bytes, "note": case.note, "params": dict(case.params),
        "xfers": [{"id": x.id, "src": x.src, "dst": x.dst, "bytes": x.bytes, "mech": x.mech} for x in case.xfers],
        "kernels": [{"id": k.id, "gpu": k.gpu, "bytes": k.bytes} for k in case.kernels],
    }


def case_from_dict(d: dict[str, Any]) -> Case:
    return Case(
        id=d["id"], group=d["group"], pattern=d["pattern"], split=d["split"], op=d.get("op", ""),
        bytes=int(d.get("bytes", 0)), note=d.get("note", ""), params=dict(d.get("params") or {}),
        xfers=tuple(Xfer(x["id"], x["src"], x["dst"], int(x["bytes"]), x.get("mech", "ce")) for x in d["xfers"]),
        kernels=tuple(Kernel(k["id"], k["gpu"], int(k["bytes"])) for k in d.get("kernels") or ()),
    )


class Measurements:
    """A loaded, checked measurement document."""

    def __init__(self, doc: dict[str, Any], source: str = "measurements") -> None:
        self.doc = doc
        self.source = source
        self.cases = [case_from_dict(c) for c in doc["cases"]]
        self.measured = {c["id"]: c["measured"] for c in doc["cases"]}

    @property
    def machine(self) -> dict[str, Any]:
        return self.doc["machine"]

    @property
    def preset(self) -> str | None:
        return self.machine.get("preset")

    def split(self, which: str) -> list[Case]:
        return [c for c in self.cases if c.split == which]


SPLITS = ("current", "file")


def with_split(m: Measurements, which: str) -> tuple[Measurements, list[str]]:
    """The measurements with each case's split taken from `which`, and the ids whose split that changed.

    'file' keeps the split recorded when the cases were measured. 'current' takes it from today's case list
    (`validate.cases.build_cases` for the same GPU count and suite), so a file measured before the case list
    changed is judged with today's split; cases the current list no longer has keep the file's split. This
    re-splits *after* measuring, so a report says so (profiles and summaries record it).
    """
    if which not in SPLITS:
        raise MeasurementError(f"unknown split {which!r} (known: {', '.join(SPLITS)})")
    if which == "file" or m.doc.get("suite") == "imported":
        return m, []  # an imported file (validate.fit.imports) has its own split and no case list to follow
    suite = m.doc.get("suite") if m.doc.get("suite") in SUITES else "full"
    now = {c.id: c.split for c in build_cases(int(m.machine["gpus"]), suite)}
    doc = dict(m.doc)
    doc["cases"], changed = [], []
    for c in m.doc["cases"]:
        split = now.get(c["id"], c["split"])
        if split != c["split"]:
            changed.append(c["id"])
            c = {**c, "split": split}
        doc["cases"].append(c)
    return Measurements(doc, m.source), changed


def measurements_sha256(paths: Sequence[str | Path]) -> str:
    """sha256 of the measurement files' bytes in order (a folder: its `measured.json`). A profile records it
    (`provenance.measurements_sha256`) so that `report` can tell whether the profile was fitted on the very file
    it judges, whatever the file is called or where it lies."""
    return hashlib.sha256(b"".join((Path(p) / "measured.json" if Path(p).is_dir() else Path(p)).read_bytes()
                                   for p in paths)).hexdigest()


def recorded_path(path: str | Path) -> str:
    """How a profile's provenance names an input it was fitted on: relative to the checkout where the input lies
    inside it (the committed data, e.g. `validate/data/h200x1-workloads`, however the path was typed and whichever
    folder the command ran from), else relative to the working folder, else its name alone, as `measurements`
    names its file. Never one machine's absolute path: regenerating a committed profile from another folder must
    reproduce it byte for byte (but for `fitted_at`)."""
    p = Path(path).resolve()
    for root in (CHECKOUT, Path.cwd().resolve()):
        if p.is_relative_to(root) and p != root:
            return p.relative_to(root).as_posix()
    return p.name


def _fail(where: str, what: str) -> MeasurementError:
    return MeasurementError(f"{where}: {what}")


def _positive(where: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise _fail(where, f"expected a positive number, got {v!r}")


def check_header(doc: Any, source: str, fmt: str, version: int, kind: str) -> None:
    """The part every measurement file shares (copy suite, workload suite): a JSON object of the right format
    and version, with a `machine` that names its GPU model and count."""
    if not isinstance(doc, dict):
        raise _fail(source, "expected a JSON object at the top level")
    if doc.get("format") != fmt:
        raise _fail(source, f"not a {kind} file (format is {doc.get('format')!r}, expected {fmt!r})")
    if doc.get("format_version") != version:
        raise _fail(source, f"unknown measurement format_version {doc.get('format_version')!r} "
                            f"(this fabricsim reads version {version})")
    machine = doc.get("machine")
    if not isinstance(machine, dict):
        raise _fail(source, "missing 'machine'")
    for key in ("gpu_model", "gpus"):
        if key not in machine:
            raise _fail(f"{source}: machine", f"missing field '{key}'")


def checked_cases(doc: dict, source: str, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """The document's cases as (where, case), each checked for what every measurement file requires of a case:
    an object with the `required` fields, a unique id, a known split. `where` names the file and the case, for
    the caller's own checks."""
    cases = doc.get("cases")
    if not isinstance(cases, list):
        raise _fail(source, "missing 'cases' list")
    seen: set[str] = set()
    for i, c in enumerate(cases):
        where = f"{source}: cases[{i}]"
        if not isinstance(c, dict):
            raise _fail(where, "expected an object")
        for key in required:
            if key not in c:
                raise _fail(where, f"missing field '{key}'")
        where = f"{source}: case '{c['id']}'"
        if c["id"] in seen:
            raise _fail(where, "duplicate id")
        seen.add(c["id"])
        if c["split"] not in (CALIBRATION, HELD_OUT):
            raise _fail(where, f"split must be '{CALIBRATION}' or '{HELD_OUT}', got {c['split']!r}")
        yield where, c


def check_document(doc: Any, source: str) -> Measurements:
    """Validate a parsed document; every error names the file and the field."""
    check_header(doc, source, FORMAT, FORMAT_VERSION, "fabricsim measurement")
    for where, c in checked_cases(doc, source, ("id", "group", "pattern", "split", "xfers", "measured")):
        if c["group"] not in GROUPS:
            raise _fail(where, f"unknown group {c['group']!r} (known: {', '.join(GROUPS)})")
        m = c["measured"]
        if not isinstance(m, dict):
            raise _fail(where, "'measured' must be an object")
        if c["group"] == "ipc":
            for key in ("open_s", "close_s"):
                _positive(f"{where}.measured.{key}", m.get(key))
            continue
        _positive(f"{where}.measured.makespan_s", m.get("makespan_s"))
        if c["group"] == "copies":
            for j, x in enumerate(c["xfers"]):
                for key in ("id", "src", "dst", "bytes"):
                    if key not in x:
                        raise _fail(f"{where}.xfers[{j}]", f"missing field '{key}'")
            fin = m.get("finish_s")
            if not isinstance(fin, dict):
                raise _fail(where, "measured.finish_s missing")
            for x in c["xfers"]:
                _positive(f"{where}.measured.finish_s.{x['id']}", fin.get(x["id"]))
    try:
        return Measurements(doc, source)
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(source, f"malformed case entry ({type(exc).__name__}: {exc})") from None


def load_measurements(path: str | Path) -> Measurements:
    """Read `measured.json` (or a validate output folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "measured.json"
    text = read_text(path, MeasurementError, "measurements")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        # A document cut short (a copy interrupted mid-way) does not end with its closing brace.
        # (or ends on a brace of an inner object: then the parser fails at the very end, wanting more)
        end = len(text.rstrip())
        hint = "truncated" if not text.rstrip().endswith("}") or exc.pos >= end - 1 else "malformed"
        raise MeasurementError(f"{path}: {hint} JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    return check_document(doc, str(path))
