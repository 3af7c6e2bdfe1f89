"""Bad input, every verb: exit status 2, one line on stderr naming the problem and where, no traceback, nothing
written. Table driven and in-process (`fabricsim.cli.main`), so the 200+ cases run in seconds.

Each case is (id, argv, files, expected): `files` are written into an empty working folder first (a dict of
name -> text; YAML for scenarios and topologies), `{tmp}` in argv is that folder, and every string in
`expected` must appear in the one error line (the problem, and the file and field or flag it is in).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fabricsim.cli import main

ROOT = Path(__file__).resolve().parent.parent
MEASURED = str(ROOT / "validate" / "data" / "h100x1")
TOPO_M = str(ROOT / "validate" / "data" / "h100x1" / "topo_m.txt")
PROBE = str(ROOT / "validate" / "data" / "h200x8-probe")  # no measured.json: the concurrent-copies calibration.json

Case = tuple[str, list[str], dict[str, str | bytes], tuple[str, ...]]
CASES: list[Case] = []


def case(cid: str, argv: list[str], expected: tuple[str, ...] | str,
         files: dict[str, str | bytes] | None = None) -> None:
    CASES.append((cid, argv, files or {}, (expected,) if isinstance(expected, str) else expected))


# ---------------------------------------------------------------------------------------- scenario files
def scenario(transfer: str = "{id: t1, src: host, dst: gpu0, bytes: 1GiB}", top: str = "topology: hgx-h200-8",
             extra: str = "") -> dict[str, str]:
    return {"s.yaml": f"{top}\ntransfers:\n  - {transfer}\n{extra}"}


def simulate(cid: str, files: dict[str, str], expected: tuple[str, ...] | str) -> None:
    # --perfetto too: a failed run must not leave a trace file behind (in a folder that exists: none is made)
    case(f"simulate-{cid}", ["simulate", "s.yaml", "--perfetto", "out/t.json"], expected, {**files, "out/kept": ""})


for value, why in [(".inf", "finite"), ("-.inf", "finite"), (".nan", "finite"), ("0", "> 0"), ("-1", "> 0"),
                   ("1.5", "whole number"), ("1e29GiB", "beyond 1 EiB"), ("'1.0e300'", "beyond 1 EiB"),
                   ("abc", "cannot read size"), ("1XB", "unknown unit"), ("true", "expected a size"),
                   ("[1]", "expected a size"), ("{a: 1}", "expected a size"), ("null", "expected a size"),
                   ("''", "cannot read size"), ("-5GiB", "> 0"), ("1.5B", "whole number"), ("0GiB", "> 0"),
                   ("2EiB", "unknown unit"), ("1e400", "finite"), ("'1,000'", "cannot read size"),
                   ("1 2 GiB", "cannot read size"), ("'0x10'", "cannot read size"),
                   ("400Gb", "reads as bits"), ("8kb", "reads as bits"), ("1b", "reads as bits")]:
    simulate(f"bytes={value}", scenario(f"{{id: t1, src: host, dst: gpu0, bytes: {value}}}"),
             ("s.yaml", "transfers[0].bytes", why))

for key in ("start", "fixed_cost_s"):
    for value, why in [("-1", ">= 0"), (".inf", "finite"), (".nan", "finite"), ("abc", "cannot read time"),
                       ("1parsec", "cannot read time"), ("true", "expected a time"), ("1e300", "beyond 10^9 s"),
                       ("[1]", "expected a time"), ("-1ms", ">= 0"), ("'2e9s'", "beyond 10^9 s")]:
        simulate(f"{key}={value}", scenario(f"{{id: t1, src: host, dst: gpu0, bytes: 1GiB, {key}: {value}}}"),
                 ("s.yaml", f"transfers[0].{key}", why))

for key in ("rate_cap_GBps", "weight"):
    for value in ("0", "-1", ".inf", ".nan", "x", "true", "[1]"):
        simulate(f"{key}={value}", scenario(f"{{id: t1, src: host, dst: gpu0, bytes: 1GiB, {key}: {value}}}"),
                 ("s.yaml", f"transfers[0].{key}", "finite number > 0"))
# finite but absurd: named by field in the file's own unit (a rate cap of 1e-300 B/s made finish times NaN)
for key, value, why in [("rate_cap_GBps", "1e-12", "at least 1e-09 (1 B/s)"), ("weight", "1e-300", "1e-09 to 1e+09"),
                        ("weight", "2e9", "1e-09 to 1e+09")]:
    simulate(f"{key}={value}", scenario(f"{{id: t1, src: host, dst: gpu0, bytes: 1GiB, {key}: {value}}}"),
             ("s.yaml", f"transfers[0].{key}", why))

for key, value, why in [("src", "gpu99", "gpu99"), ("dst", "nowhere", "nowhere"), ("src", "5", "endpoint name"),
                        ("dst", "null", "endpoint name"), ("src", "node0.gpu0", "node0.gpu0"),
                        ("dst", "cpu0", "cpu0"), ("src", "[host]", "endpoint name")]:
    fields = {"id": "t1", "src": "host", "dst": "gpu0", "bytes": "1GiB", key: value}  # (a key given twice is refused)
    simulate(f"{key}={value}", scenario("{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"),
             ("s.yaml", "transfers[0]", why))

simulate("key-twice", {"s.yaml": "topology: hgx-h200-8\ntopology: h100-1\ntransfers:\n"
                              "  - {id: t1, src: host, dst: gpu0, bytes: 1GiB}\n"},
         ("s.yaml", "duplicate key 'topology' at line 2 (first on line 1)"))
simulate("id-empty", scenario("{id: '', src: host, dst: gpu0, bytes: 1}"), ("transfers[0].id", "expected a name"))
simulate("id-list", scenario("{id: [1], src: host, dst: gpu0, bytes: 1}"), ("transfers[0].id", "expected a name"))
simulate("id-bool", scenario("{id: true, src: host, dst: gpu0, bytes: 1}"), ("transfers[0].id", "expected a name"))
simulate("id-duplicate",
         scenario("{id: a, src: host, dst: gpu0, bytes: 1}\n  - {id: a, src: host, dst: gpu1, bytes: 1}"),
         ("transfers[1].id", "duplicate id 'a'"))
simulate("after-unknown", scenario("{id: a, src: host, dst: gpu0, bytes: 1, after: [zz]}"),
         ("transfers[0].after", "unknown id 'zz'"))
simulate("after-self", scenario("{id: a, src: host, dst: gpu0, bytes: 1, after: [a]}"),
         ("transfers[0].after", "waits for itself"))
simulate("after-cycle", scenario("{id: a, src: host, dst: gpu0, bytes: 1, after: [b]}\n"
                                 "  - {id: b, src: host, dst: gpu1, bytes: 1, after: [a]}"), ("cycle", "a -> b -> a"))
simulate("after-mapping", scenario("{id: a, src: host, dst: gpu0, bytes: 1, after: {x: 1}}"),
         ("transfers[0].after", "list of ids"))
simulate("engine-number", scenario("{id: a, src: host, dst: gpu0, bytes: 1, engine: 5}"),
         ("transfers[0].engine", "queue name"))
simulate("engine-list", scenario("{id: a, src: host, dst: gpu0, bytes: 1, engine: [x]}"),
         ("transfers[0].engine", "queue name"))
simulate("tag-mapping", scenario("{id: a, src: host, dst: gpu0, bytes: 1, tag: {a: 1}}"),
         ("transfers[0].tag", "short label"))
simulate("tag-list", scenario("{id: a, src: host, dst: gpu0, bytes: 1, tag: [1]}"), ("transfers[0].tag", "short label"))
simulate("unknown-key", scenario("{id: a, src: host, dst: gpu0, bites: 1}"), ("transfers[0]", "unknown key 'bites'"))
simulate("bytes-missing", scenario("{id: a, src: host, dst: gpu0}"), ("transfers[0].bytes", "missing"))
simulate("transfer-not-mapping", scenario("just-a-string"), ("transfers[0]", "expected a mapping"))
simulate("transfer-list", scenario("[host, gpu0, 1]"), ("transfers[0]", "expected a mapping"))
simulate("topology-missing", {"s.yaml": "transfers:\n  - {src: host, dst: gpu0, bytes: 1}\n"},
         ("s.yaml", "topology"))
simulate("topology-unknown", scenario(top="topology: hgx-b200-72"), ("s.yaml", "unknown topology preset 'hgx-b200-72'"))
simulate("topology-folder", scenario(top="topology: /tmp"), ("s.yaml", "'/tmp' is a folder"))
simulate("topology-number", scenario(top="topology: 5"), ("s.yaml", "topology: expected a preset name"))
simulate("topology-file-missing", scenario(top="topology: nothere.yaml"), ("s.yaml", "nothere.yaml", "not found"))
simulate("topology-cluster-bad", scenario(top="topology: cluster-0x8"), ("s.yaml", "at least one node"))
simulate("calibration-number", scenario(extra="calibration: 5\n"), ("s.yaml", "calibration: expected a file path"))
simulate("calibration-missing", scenario(extra="calibration: nope.json\n"), ("nope.json", "cannot read"))
simulate("calibration-garbage", {**scenario(extra="calibration: p.json\n"), "p.json": "{not json"},
         ("p.json", "malformed JSON"))
simulate("calibration-other-machine", {**scenario(extra=f"calibration: {ROOT}/hwmodels/profiles/h200x2.json\n",
                                                  top="topology: h100-1")}, ("h200x2",))
simulate("transfers-mapping", {"s.yaml": "topology: h100-1\ntransfers: {a: 1}\n"},
         ("s.yaml", "transfers: expected a list"))
simulate("transfers-string", {"s.yaml": "topology: h100-1\ntransfers: abc\n"}, ("s.yaml", "transfers: expected a list"))
simulate("transfers-empty", {"s.yaml": "topology: h100-1\ntransfers: []\n"},
         ("s.yaml", "no transfers, tasks or collectives"))
simulate("tasks-mapping", {"s.yaml": "topology: h100-1\ntasks: {a: 1}\n"}, ("s.yaml", "tasks: expected a list"))
simulate("unknown-top-key", scenario(extra="transfer_list: []\n"), ("s.yaml", "unknown key 'transfer_list'"))
simulate("top-is-list", {"s.yaml": "- a\n- b\n"}, ("s.yaml", "expected a mapping"))
simulate("top-is-scalar", {"s.yaml": "42\n"}, ("s.yaml", "expected a mapping"))
simulate("empty-file", {"s.yaml": ""}, ("s.yaml", "expected a mapping"))
simulate("malformed-yaml", {"s.yaml": "topology: [h100-1\n"}, ("s.yaml", "malformed YAML"))
case("simulate-malformed-json", ["simulate", "s.json"], ("s.json", "malformed JSON"), {"s.json": '{"topology": }'})
case("simulate-no-such-file", ["simulate", "nope.yaml"], ("nope.yaml", "cannot read"))
case("simulate-a-folder", ["simulate", "."], (".", "cannot read"))
case("simulate-binary", ["simulate", "s.yaml"], ("s.yaml",), {"s.yaml": "\x00\x01\x02 topology"})
case("simulate-perfetto-into-a-file", ["simulate", "s.yaml", "--perfetto", "blocker/t.json"], ("blocker",),
     {**scenario(), "blocker": "a file, not a folder"})
case("simulate-perfetto-is-folder", ["simulate", "s.yaml", "--perfetto", "."], ("directory",), scenario())
case("simulate-calibration-flag-missing", ["simulate", "s.yaml", "--calibration", "nope.json"], ("nope.json",),
     scenario())

for key, value, why in [("gpu", "gpu99", "gpu99"), ("gpu", "host", "host"), ("gpu", "5", "GPU name"),
                        ("flops", "-1", "flops"), ("flops", ".inf", "flops"), ("flops", ".nan", "flops"),
                        ("flops", "x", "flops"), ("bytes", "-1", "bytes"), ("bytes", ".inf", "bytes"),
                        ("dtype", "fp3", "fp3"), ("start", "-2", "start"), ("tile", "1", "unknown key 'tile'")]:
    fields = {"id": "k", "gpu": "gpu0", "flops": "1e9", key: value}
    simulate(f"task-{key}={value}", {"s.yaml": "topology: h100-1\ntasks:\n  - {"
                                                + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n"},
             ("s.yaml", "tasks[0]", why))

# ---------------------------------------------------------------------------------------- topology files
BOX = {"name": "box", "components": {"host0": {"kind": "host"}, "cpu0": {"kind": "cpu"},
                                     "gpu0": {"kind": "gpu", "model": "H100"}},
       "links": [{"between": ["host0", "cpu0"], "kind": "dram", "GBps": 200},
                 {"between": ["gpu0", "cpu0"], "kind": "pcie", "gen": 5, "lanes": 16}]}


def topo_case(cid: str, change, expected: tuple[str, ...] | str) -> None:
    doc = json.loads(json.dumps(BOX))
    change(doc)
    case(f"topo-{cid}", ["topo", "show", "box.json"], expected, {"box.json": json.dumps(doc)})


def _set(path: list, value):
    def change(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


for value, why in [(float("inf"), "finite"), (0, "> 0"), (-1, "> 0"), (1e300, "beyond"), ("x", "expected a number"),
                   (True, "expected a number"), (float("nan"), "expected a number"), (None, "expected a number")]:
    topo_case(f"link-GBps={value}", _set(["links", 0, "GBps"], value), ("box.json", "links[0].GBps", why))
# absurdly slow is refused as absurdly fast is: 1 MB/s, below any real link, is the floor (1e-30 GB/s was taken)
for path, value, where in [(["links", 0, "GBps"], 1e-30, "links[0].GBps"),
                           (["links", 0, "reverse_GBps"], 9e-4, "links[0].reverse_GBps"),
                           (["components", "host0", "dram_GBps"], 1e-9, "host0.dram_GBps")]:
    topo_case(f"slow-{where}={value}", _set(path, value), ("box.json", where, f"{value!r} is below 0.001 GB/s (1 MB/s)",
                                                          "slower than any real link (check the unit)"))
topo_case("slow-cap", _set(["caps"], [{"name": "c", "GBps": 1e-4, "classes": ["h2d"]}]),
          ("box.json", "caps[0].GBps", "below 0.001 GB/s (1 MB/s)"))
for value, why in [(1e-3, "0.001 is below 0.008 Gb/s (1 MB/s)"), (1e12, "1000000000000.0 is beyond 800000 Gb/s")]:
    topo_case(f"nic-Gbps={value}", _set(["components", "nic0"], {"kind": "nic", "Gbps": value}),
              ("box.json", "nic0.Gbps", why))
for value, why in [("99999999999", "99999999999.0 is beyond 800000 Gb/s, more than any hardware has"),
                   ("0.001", "0.001 is below 0.008 Gb/s (1 MB/s), slower than any real link")]:
    # a cluster preset's NIC has a topology file's bounds (99999999999 Gb/s built; a file capped it at 800,000)
    case(f"topo-show-cluster-nic{value}g", ["topo", "show", f"cluster-2x8-nic{value}g"],
         (f"preset 'cluster-2x8-nic{value}g': a NIC's rate: ", why, "(check the unit)"))
for key, value, why in [("reverse_GBps", float("inf"), "finite"), ("reverse_GBps", 0, "> 0"),
                        ("latency_us", -1, ">= 0"), ("latency_us", float("inf"), "finite"),
                        ("latency_us", 1e12, "beyond"), ("kind", "warp", "warp"), ("between", ["host0"], "between"),
                        ("between", ["cpu0", "cpu0"], "between"), ("between", "host0", "between"),
                        ("colour", "red", "colour")]:
    topo_case(f"link-{key}={value}", _set(["links", 0, key], value), ("box.json", "links[0]", why))
for key, value, why in [("gen", 0, "gen"), ("gen", 1.5, "whole number"), ("lanes", "x", "whole number"),
                        ("lanes", 0, "width x0"), ("gen", 99, "gen")]:
    topo_case(f"pcie-{key}={value}", _set(["links", 1, key], value), ("box.json", "links[1]", why))
for comp, key, value, why in [("host0", "dram_GiB", -1, "> 0"), ("host0", "dram_GiB", float("inf"), "finite"),
                              ("host0", "dram_GiB", 1e15, "beyond"), ("host0", "dram_GBps", 0, "> 0"),
                              ("host0", "dram_GBps", float("inf"), "finite"), ("gpu0", "model", "Z9000", "Z9000"),
                              ("gpu0", "kind", "tpu", "tpu"), ("cpu0", "cores", 8, "cores")]:
    topo_case(f"{comp}-{key}={value}", _set(["components", comp, key], value), ("box.json", comp, why))
topo_case("components-empty", _set(["components"], {}), ("box.json", "components"))
topo_case("components-list", _set(["components"], ["gpu0"]), ("box.json", "components"))
topo_case("links-mapping", _set(["links"], {"a": 1}), ("box.json", "links: expected a list"))
topo_case("link-to-nothing", _set(["links", 0, "between"], ["host0", "ghost"]), ("box.json", "ghost"))
topo_case("cap-inf", _set(["caps"], [{"name": "c", "GBps": float("inf"), "classes": ["h2d"]}]),
          ("box.json", "caps[0].GBps", "finite"))
topo_case("cap-no-name", _set(["caps"], [{"GBps": 5}]), ("box.json", "caps[0]", "name"))
topo_case("pinned-bad", _set(["pinned"], [{"src": "host0"}]), ("box.json", "pinned[0]", "src, dst and via"))
topo_case("unknown-top-key", _set(["nodes"], 3), ("box.json", "nodes"))
topo_case("gpu-unreachable", _set(["links"], [BOX["links"][0]]), ("box.json", "gpu0"))
case("topo-show-unknown-preset", ["topo", "show", "hgx-b300-8"], "unknown topology preset 'hgx-b300-8'")
case("topo-show-folder", ["topo", "show", "."], "is a folder")
case("topo-show-missing-file", ["topo", "show", "nothere.yaml"], ("nothere.yaml", "not found"))
case("topo-show-bad-cluster", ["topo", "show", "cluster-2x0"], "cluster-2x0")
case("topo-show-bad-fabric", ["topo", "show", "cluster-2x8-mesh"], "cluster-2x8-mesh")
for nic in ("nic0g", "nic0.0g"):  # named the first link built on the NIC ('link node0.nic0<->rail0: bandwidth')
    case(f"topo-show-cluster-{nic}", ["topo", "show", f"cluster-2x8-{nic}"],
         (f"preset 'cluster-2x8-{nic}': a NIC's rate", "Gb/s > 0, got 0.0"))
case("topo-show-calibration-missing", ["topo", "show", "h100-1", "--calibration", "nope.json"], "nope.json")
case("topo-import-missing", ["topo", "import", "nope.txt"], ("nope.txt", "cannot read"))
case("topo-import-garbage", ["topo", "import", "t.txt"], ("t.txt",), {"t.txt": "hello world\n"})
case("topo-import-empty", ["topo", "import", "t.txt"], ("t.txt",), {"t.txt": ""})
case("topo-import-unknown-gpu", ["topo", "import", TOPO_M, "--gpu", "Z9000"], "Z9000")
case("topo-import-existing-out", ["topo", "import", TOPO_M, "--out", "box.yaml"], ("box.yaml", "--force"),
     {"box.yaml": "mine"})
case("topo-import-out-folder", ["topo", "import", TOPO_M, "--out", "."], ".")
case("topo-import-out-is-input", ["topo", "import", "t.txt", "--out", "t.txt", "--force"],
     ("t.txt", "would replace the input t.txt"), {"t.txt": Path(TOPO_M).read_text()})
case("simulate-perfetto-is-input", ["simulate", "s.yaml", "--perfetto", "s.yaml", "--force"],
     ("s.yaml", "would replace the input s.yaml"), scenario())
case("serve-perfetto-is-request-trace", ["serve", "--request-trace", "r.csv", "--perfetto", "r.csv", "--force"],
     ("r.csv", "would replace the input r.csv"), {"r.csv": "arrival_s,prompt_tokens,output_tokens\n0,300,8\n"})
case("simulate-perfetto-is-its-topology", ["simulate", "s.yaml", "--perfetto", "box.yaml", "--force"],
     ("box.yaml", "would replace the input box.yaml"),
     {**scenario(top="topology: box.yaml"), "box.yaml": "name: box\ncomponents: {}\n"})
case("serve-perfetto-is-topology", ["serve", "--topology", "box.yaml", "--perfetto", "box.yaml", "--force"],
     ("box.yaml", "would replace the input box.yaml"), {"box.yaml": "name: box\ncomponents: {}\n"})
case("sync-perfetto-is-topology", ["sync", "Llama-3-8B", "rdma-p2p", "--topology", "box.yaml", "--perfetto", "box.yaml",
                                   "--force"], ("box.yaml", "would replace the input box.yaml"),
     {"box.yaml": "name: box\ncomponents: {}\n"})

# ---------------------------------------------------------------------------------------- sync
SYNC = ["sync", "Llama-3-8B", "rdma-p2p"]
for cid, extra, expected in [
    ("unknown-model", ["--trainer", "gpu0-3"], None),
    ("delta-of-delta", [], None),
    ("trainer-backwards", ["--trainer", "gpu3-1"], ("--trainer", "backwards")),
    ("trainer-empty", ["--trainer", ","], "--trainer: empty GPU list"),
    ("trainer-empty-string", ["--trainer", ""], "--trainer: empty GPU list"),
    ("rollout-gpu99", ["--rollout", "gpu99"], "--rollout: unknown GPU 'gpu99'"),
    ("rollout-overlap-bad-node", ["--rollout", "node9.gpu0"], "--rollout: unknown GPU 'node9.gpu0'"),
    ("rollout-host", ["--rollout", "gpu4,host"], "--rollout: 'host' is a host"),
    ("trainer-nvme", ["--trainer", "nvme0"], "--trainer: 'nvme0' is a"),
    ("tp-0", ["--tp", "0"], "TP degree"),
    ("tp-3", ["--tp", "3"], "3"),
    ("tp-abc", ["--tp", "abc"], "--tp"),
    ("batch-0", ["--batch", "0"], "batch"),
    ("context-negative", ["--context", "-1"], "context"),
    ("megatron-word", ["--megatron", "tp=x"], ("--megatron", "tp")),
    ("megatron-unknown", ["--megatron", "dp=2"], ("--megatron", "dp")),
    ("megatron-no-equals", ["--megatron", "tp2"], ("--megatron", "KEY=VALUE")),
    ("megatron-twice", ["--megatron", "tp=2,tp=4"], "given twice"),
    ("megatron-not-dividing", ["--megatron", "tp=3"], "3"),
    ("kv-reserve-1.5", ["--kv-reserve", "1.5"], "--kv-reserve"),
    ("kv-reserve-x", ["--kv-reserve", "x"], "--kv-reserve"),
    ("kv-reserve-nan", ["--kv-reserve", "nan"], "--kv-reserve"),
    ("train-step-0", ["--train-step", "0"], ("--train-step", "time must be a finite number > 0, got '0'")),
    # one rule and one message: a negative step was refused as not '>= 0', and then 0 as not '> 0'
    ("train-step-negative", ["--train-step", "-1"], ("--train-step", "time must be a finite number > 0, got '-1'")),
    ("train-step-negative-unit", ["--train-step", "-1s"], ("--train-step", "finite number > 0, got '-1s'")),
    ("train-step-tiny", ["--train-step", "1e-300"], ("--train-step", "under 1 ms")),
    ("train-step-word", ["--train-step", "soon"], "--train-step"),
    ("train-step-inf", ["--train-step", "inf"], "--train-step"),
    ("bytes-per-param-nan", ["--trainer-bytes-per-param", "nan"], "--trainer-bytes-per-param"),
    ("bytes-per-param-neg", ["--trainer-bytes-per-param", "-1"], "--trainer-bytes-per-param"),
    ("topology-unknown", ["--topology", "dgx-z"], "dgx-z"),
    ("calibration-missing", ["--calibration", "nope.json"], "nope.json"),
    ("knob-unknown", ["--knob", "speed=2"], ("speed", "unknown knob")),
    ("knob-no-value", ["--knob", "task_bytes"], "KEY=VALUE"),
    ("knob-empty-value", ["--knob", "task_bytes="], "KEY=VALUE"),
    ("knob-negative-bytes", ["--knob", "task_bytes=-1"], "task_bytes"),
    ("knob-inf", ["--knob", "task_bytes=inf"], ("task_bytes", "finite")),
    ("knob-beyond-1-EiB", ["--knob", "task_bytes=1e300"], ("task_bytes", "beyond 1 EiB")),
    ("knob-word", ["--knob", "task_bytes=lots"], "task_bytes"),
    ("knob-twice", ["--knob", "task_bytes=1e6", "--knob", "task_bytes=2e6"], "given twice"),
    ("task-beyond-watermark", ["--knob", "task_bytes=8GiB"], ("task_bytes (8 GiB)", "watermark_bytes (4 GiB)")),
    ("rollout-gpu-twice", ["--rollout", "gpu4,gpu5,gpu6,gpu4"], "rollout layout lists gpu4 twice"),
    ("mode-twice", ["--knob", "mode=zero-copy"], "names mode 'relay' and the knob mode=zero-copy"),
    ("trainer-gpu-twice", ["--trainer", "gpu0-3,gpu2"], "FSDP layout lists gpu2 twice"),
]:
    argv = ["sync", "Llama-9B", "rdma-p2p", *extra] if cid == "unknown-model" else (
        ["sync", "Llama-3-8B", "delta:delta:rdma-p2p"] if cid == "delta-of-delta" else
        ["sync", "Llama-3-8B", "shared-pool:relay", *extra] if cid == "mode-twice" else [*SYNC, *extra])
    want = {"unknown-model": "unknown model 'Llama-9B'", "delta-of-delta": "not another delta"}.get(cid, expected)
    case(f"sync-{cid}", argv, want)
case("sync-unknown-strategy", ["sync", "Llama-3-8B", "teleport"], "unknown weight-sync strategy 'teleport'")
case("sync-label-as-name", ["sync", "Llama-3-8B", "rdma-p2p+delta0.5+fp8"],
     "a result's label, not a strategy's name: ask for it as delta:rdma-p2p --knob changed_fraction=0.5 --fp8")
case("sync-plus-unknown", ["sync", "Llama-3-8B", "rdma-p2p+x"], ("'rdma-p2p+x': unknown weight-sync strategy"))
case("sync-bad-pool-mode", ["sync", "Llama-3-8B", "shared-pool:telepathy"], "telepathy")
case("sync-knob-bool", ["sync", "Llama-3-8B", "host-staged", "--knob", "include_d2h=maybe"],
     ("include_d2h", "true or false"))
case("sync-delta-fraction", ["sync", "Llama-3-8B", "delta:rdma-p2p", "--knob", "changed_fraction=2"],
     "changed fraction")
case("sync-delta-fraction-word", ["sync", "Llama-3-8B", "delta:rdma-p2p", "--knob", "changed_fraction=half"],
     "changed_fraction")
case("sync-no-strategy", ["sync", "Llama-3-8B"], "give MODEL and STRATEGY")
case("sync-perfetto-folder", [*SYNC, "--perfetto", "."], "directory")

# ---------------------------------------------------------------------------------------- serve
for cid, argv, expected in [
    ("seed-negative", ["--seed", "-1"], "seed"),
    ("seed-word", ["--seed", "x"], "--seed"),
    ("kv-budget-negative", ["--kv-budget", "-5GiB"], ("--kv-budget", "> 0")),
    ("kv-budget-negative-eq", ["--kv-budget=-5GiB"], ("--kv-budget", "> 0")),
    ("kv-budget-word", ["--kv-budget", "lots"], ("--kv-budget", "cannot read size")),
    ("kv-budget-inf", ["--kv-budget", "inf"], "--kv-budget"),
    ("kv-budget-tiny", ["--kv-budget", "1KiB"], "smaller than one page"),
    ("rate-nan", ["--rate", "nan"], "rate"),
    ("rate-negative", ["--rate", "-3"], "rate"),
    ("rate-zero", ["--rate", "0"], "rate"),
    ("requests-zero", ["--requests", "0"], "request"),
    ("prompt-inf", ["--prompt-tokens", "inf"], "prompt_tokens"),
    ("prompt-zero", ["--prompt-tokens", "0"], "prompt_tokens"),
    ("output-nan", ["--output-tokens", "nan"], "output_tokens"),
    ("prompt-dist", ["--prompt-dist", "zipf"], "zipf"),
    ("output-dist", ["--output-dist", "pareto"], "pareto"),
    ("prefix-negative", ["--prefix-tokens", "-4"], "prefix_tokens"),
    ("prefixes-zero", ["--prefixes", "0"], "prefixes"),
    ("tp-zero", ["--tp", "0"], "tp"),
    ("instances-zero", ["--instances", "0"], "instances"),
    ("max-batch-zero", ["--max-batch", "0"], "max_batch"),
    ("token-budget-negative", ["--token-budget", "-1"], "token_budget"),
    ("page-tokens-zero", ["--page-tokens", "0"], "page"),
    ("kv-dtype", ["--kv-dtype", "fp3"], ("kv_dtype", "fp3")),
    ("model", ["--model", "GPT-9"], "GPT-9"),
    ("policy", ["--policy", "teleport"], "teleport"),
    ("param-no-equals", ["--param", "depth"], "KEY=VALUE"),
    ("param-unknown", ["--policy", "host-offload", "--param", "depth=2"], ("unknown parameter depth", "host-offload")),
    ("param-on-hbm-only", ["--param", "x=1"], ("unknown parameter x", "known: none")),
    ("param-word", ["--policy", "host-offload", "--param", "prefetch_depth=two"], "prefetch_depth"),
    ("param-fraction", ["--policy", "host-offload", "--param", "prefetch_depth=1.5"], "prefetch_depth"),
    ("param-twice", ["--policy", "host-offload", "--param", "prefetch_depth=1", "--param", "prefetch_depth=2"],
     "given twice"),
    ("param-range", ["--policy", "topk-paging", "--param", "stable_fraction=2"], "stable_fraction"),
    ("param-async-ratio", ["--policy", "async-compression", "--param", "ratio=0.5"],
     ("policy 'async-compression'", "ratio must be >= 1")),
    ("param-prefix-fraction", ["--policy", "prefix-sharing", "--param", "cache_fraction=1.5"],
     ("policy 'prefix-sharing'", "cache_fraction must be in (0, 1]")),
    ("prefix-reads", ["--policy", "prefix-sharing", "--param", "reads=sometimes"], "sometimes"),
    ("topology", ["--topology", "nope"], "nope"),
    ("calibration", ["--calibration", "nope.json"], "nope.json"),
    ("request-trace-missing", ["--request-trace", "nope.csv"], "nope.csv"),
    ("request-trace-columns", ["--request-trace", "r.csv"], ("r.csv", "output_tokens")),
    ("request-trace-negative", ["--request-trace", "neg.csv"], "neg.csv"),
    ("preemption", ["--preemption", "kill"], "--preemption"),
    ("mechanism", ["--mechanism", "carrier-pigeon"], "--mechanism"),
    ("perfetto-folder", ["-n", "3", "--perfetto", "."], "directory"),
]:
    case(f"serve-{cid}", ["serve", "-n", "5", *argv], expected,
         {"r.csv": "arrival_s,prompt_tokens\n0,300\n", "neg.csv": "arrival_s,prompt_tokens,output_tokens\n-1,3,3\n"})

# ---------------------------------------------------------------------------------------- sweep, results, plot
BROKEN_STUDY = "def f(p):\n    return {'a': 1}\nSTUDY = Study(name='s', run=f)\n"
TINY_STUDY = ("from fabricsim.harness.study import Grid, Study\n"
              "STUDY = Study(name='tiny', grid=Grid.product(x=[1, 2]), run=lambda p: {'y': p['x']})\n")
for cid, argv, files, expected in [
    ("unknown-study", ["sweep", "no_such_study"], {}, "no study named 'no_such_study'"),
    ("no-study", ["sweep"], {}, ("give a STUDY", "--list")),
    ("workers-0", ["sweep", "tiny.py", "--workers", "0"], {"tiny.py": TINY_STUDY}, "--workers"),
    ("workers-word", ["sweep", "tiny.py", "--workers", "many"], {"tiny.py": TINY_STUDY}, "--workers"),
    ("limit-negative", ["sweep", "tiny.py", "--limit", "-1"], {"tiny.py": TINY_STUDY}, "--limit"),
    ("backend", ["sweep", "tiny.py", "--backend", "slurm"], {"tiny.py": TINY_STUDY}, "unknown backend 'slurm'"),
    ("address-without-ray", ["sweep", "tiny.py", "--address", "h:1"], {"tiny.py": TINY_STUDY}, "--backend ray"),
    ("retry-without-resume", ["sweep", "tiny.py", "--retry-failed"], {"tiny.py": TINY_STUDY}, "--resume"),
    ("unknown-point", ["sweep", "tiny.py", "--perfetto-point", "ffff"], {"tiny.py": TINY_STUDY}, "ffff"),
    ("syntax-error", ["sweep", "bad.py"], {"bad.py": "def (:\n"}, "bad.py"),
    ("no-STUDY", ["sweep", "bad.py"], {"bad.py": "x = 1\n"}, ("bad.py", "STUDY")),
    ("no-grid", ["sweep", "bad.py"], {"bad.py": "from fabricsim.harness.study import Study\n" + BROKEN_STUDY},
     "grid"),
    ("raises-on-import", ["sweep", "bad.py"], {"bad.py": "raise RuntimeError('boom')\n"}, ("bad.py", "boom")),
    ("store-is-a-file", ["sweep", "tiny.py", "--store", "f"], {"tiny.py": TINY_STUDY, "f": "x"}, "f"),
    ("study-is-folder", ["sweep", "."], {}, ". is a folder: a study is a .py file or a study's name"),
    ("study-is-csv", ["sweep", "r.csv"], {"r.csv": "arrival_s,prompt_tokens\n0,1\n"},
     ("r.csv: not a study file: a study is a .py file or a study's name", "fabricsim sweep --list")),
    ("plot-study-is-csv", ["plot", "r.csv"], {"r.csv": "arrival_s,prompt_tokens\n0,1\n"}, "r.csv: not a study file"),
    ("results-show-unknown", ["results", "show", "nope"], {}, ("unknown study 'nope'", "weight_sync")),
    ("results-show-source", ["results", "show", "nope", "--source", "guess"], {}, "guess"),
    ("results-store-is-file", ["results", "ls", "--store", "f"], {"f": "x"}, "f"),
    ("plot-unknown-study", ["plot", "no_such_study"], {}, "no_such_study"),
    ("plot-no-results", ["plot", "weight_sync", "--store", "st"], {}, "no results for study 'weight_sync'"),
    ("plot-no-figures", ["plot", "tiny.py", "--store", "st"], {"tiny.py": TINY_STUDY}, "declares no figures"),
]:
    case(f"harness-{cid}", argv, expected, files)


def _tiny_trace_name() -> str:
    """The trace file `sweep tiny.py --perfetto-point` writes for the first point (ids hash the parameters)."""
    from fabricsim.harness.study import load_study_source

    pid, _ = load_study_source(TINY_STUDY, "tiny.py").points()[0]
    return f"traces/tiny-{pid}.json"


# An existing trace is replaced only with --force (as topo import --out, calibrate and report do).
TRACE_FILES = {"s.yaml": scenario()["s.yaml"], "t.json": "a trace I kept", "tiny.py": TINY_STUDY,
               _tiny_trace_name(): "a trace I kept"}
case("simulate-perfetto-exists", ["simulate", "s.yaml", "--perfetto", "t.json"], ("t.json", "--force"), TRACE_FILES)
case("sync-perfetto-exists", [*SYNC, "--samples", "0", "--perfetto", "t.json"], ("t.json", "--force"), TRACE_FILES)
case("serve-perfetto-exists", ["serve", "-n", "3", "--samples", "0", "--perfetto", "t.json"], ("t.json", "--force"),
     TRACE_FILES)
case("sweep-perfetto-exists", ["sweep", "tiny.py", "--perfetto-point", _tiny_trace_name()[12:20]],
     (_tiny_trace_name(), "--force"), TRACE_FILES)

# A named output goes into a folder that exists: none is made for it (`--perfetto /nonexist/dir/x.json` made
# /nonexist/dir and exited 0), only the one folder a command is told to write (a report, traces/, a store).
TRACED_STUDY = ("from pathlib import Path\nfrom fabricsim.harness.study import Grid, Study\n"
                "def run(p, ctx):\n    Path(ctx.trace_path).write_text('{\"traceEvents\": []}')\n    return {'y': 1}\n"
                "STUDY = Study(name='traced', grid=Grid.product(x=[1]), run=run)\n")


def _traced_point() -> str:
    from fabricsim.harness.study import load_study_source

    return load_study_source(TRACED_STUDY, "traced.py").points()[0][0]


NO_FOLDER = "the folder nodir does not exist (create it first)"
for cid, argv in [
    ("simulate-perfetto", ["simulate", "s.yaml", "--perfetto", "nodir/t.json"]),
    ("sync-perfetto", [*SYNC, "--samples", "0", "--perfetto", "nodir/t.json"]),
    ("serve-perfetto", ["serve", "-n", "3", "--samples", "0", "--perfetto", "nodir/t.json"]),
    ("topo-import-out", ["topo", "import", TOPO_M, "--out", "nodir/t.json"]),
    ("calibrate-profile", ["calibrate", MEASURED, "nodir/t.json"]),
    ("report-out", ["report", MEASURED, "--out", "nodir/t.json", "--no-store"]),
    ("report-store", ["report", MEASURED, "--out", "rep", "--store", "nodir/t.json"]),
    ("plot-out", ["plot", "traced.py", "--out", "nodir/t.json"]),
    ("sweep-store", ["sweep", "traced.py", "--store", "nodir/t.json"]),
    ("sweep-perfetto-dir", ["sweep", "traced.py", "--perfetto-point", _traced_point()[:8],
                            "--perfetto-dir", "nodir/t.json"]),
    ("validate-out", ["validate", "--out", "nodir/t.json"]),
]:
    case(f"no-folder-{cid}", argv, ("nodir/t.json: ", NO_FOLDER), {**scenario(), "traced.py": TRACED_STUDY})

# ---------------------------------------------------------------------------------------- calibrate, report
for cid, argv, files, expected in [
    ("calibrate-missing", ["calibrate", "nope.json", "p.json"], {}, ("nope.json", "cannot read")),
    ("calibrate-garbage", ["calibrate", "m.json", "p.json"], {"m.json": "{"}, "m.json"),
    ("calibrate-wrong-doc", ["calibrate", "m.json", "p.json"], {"m.json": "[1, 2]"}, "m.json"),
    ("calibrate-existing", ["calibrate", MEASURED, "p.json"], {"p.json": "mine"}, ("p.json", "--force")),
    ("report-missing", ["report", "nope.json", "--no-store"], {}, ("nope.json", "cannot read")),
    ("report-existing-out", ["report", MEASURED, "--out", "rep", "--no-store"], {"rep/report.md": "mine"},
     ("rep", "--force")),
    ("report-profile-missing", ["report", MEASURED, "--profile", "nope.json", "--out", "rep", "--no-store"], {},
     "nope.json"),
    ("report-unwritable", ["report", MEASURED, "--out", "/proc/rep", "--no-store"], {}, "/proc/rep"),
    ("report-split", ["report", MEASURED, "--split", "later"], {}, "--split"),
    # a report replacing the folder of its measurements deleted them (--force removes the old folder whole)
    ("report-out-holds-measured", ["report", "m/measured.json", "--out", "m", "--force", "--no-store"],
     {"m/measured.json": (Path(MEASURED) / "measured.json").read_text()},
     ("m: the report would replace the input m/measured.json",)),
    ("report-out-is-measured", ["report", "m", "--out", "m", "--force", "--no-store"],
     {"m/measured.json": (Path(MEASURED) / "measured.json").read_text()}, ("m: the report would replace the input m",)),
    # a folder stands for its measured.json; one without it names the files it holds that can be given instead
    # (it said 'PROBE/measured.json: cannot read measurements (No such file or directory)')
    ("report-folder-without-measured", ["report", PROBE, "--out", "rep", "--no-store"], {},
     (f"{PROBE}: no measured.json in this folder", f"give the file it holds that calibrate and report read: "
                                                   f"{PROBE}/calibration.json")),
    ("calibrate-folder-without-measured", ["calibrate", "m", "p.json"],
     {"m/notes.txt": "hello", "m/a.json": "{}", "m/b.json": (Path(PROBE) / "calibration.json").read_text(),
      "m/c.json": (Path(MEASURED) / "measured.json").read_text()},
     ("m: no measured.json in this folder", "give by name the files it holds that calibrate and report read: "
                                            "m/b.json, m/c.json")),
    ("calibrate-folder-of-nothing", ["calibrate", "m", "p.json"], {"m/notes.txt": "hello"},
     ("m: no measured.json in this folder", "none of its files is a format calibrate and report read")),
]:
    case(cid, argv, expected, files)

# ---------------------------------------------------------------------------------------- the command line itself
for cid, argv, expected in [
    ("no-such-command", ["teleport"], "teleport"),
    ("unknown-flag", ["simulate", "s.yaml", "--jsn"], "--jsn"),
    ("missing-argument", ["simulate"], "file"),
    ("topo-no-action", ["topo"], "topo"),
    ("topo-unknown-action", ["topo", "draw"], "draw"),
    ("results-unknown-action", ["results", "drop"], "drop"),
    ("flag-missing-value", ["simulate", "s.yaml", "--perfetto"], "--perfetto"),
    ("serve-tp-float", ["serve", "--tp", "1.5"], "--tp"),
]:
    case(f"cli-{cid}", argv, expected)


# ---------------------------------------------------------------------------------------- found later
# The next bad inputs, found by trying what the table above did not: absurd spans and ranges.
case("serve-rate-tiny", ["serve", "-n", "3", "--rate", "1e-300"], ("arrival rate", "beyond 10^9 s"))
case("serve-trace-far-future", ["serve", "--request-trace", "far.csv"], ("far.csv", "beyond 10^9 s"),
     {"far.csv": "arrival_s,prompt_tokens,output_tokens\n1e12,3,3\n"})
# one prefix_id of two lengths was served as its first; a prefix_id column alone gave every prefix 0 tokens
PREFIX_HEADER = "arrival_s,prompt_tokens,output_tokens,prefix_id"
case("serve-trace-prefix-two-lengths", ["serve", "--request-trace", "tr.csv", "--policy", "prefix-sharing"],
     ("tr.csv line 3: prefix_id 'a' has prefix_tokens 60 here but 50 at line 2", "one shared prefix, of one length"),
     {"tr.csv": f"{PREFIX_HEADER},prefix_tokens\n0,100,10,a,50\n0.1,100,10,a,60\n"})
case("serve-trace-prefix-id-alone", ["serve", "--request-trace", "tr.csv", "--policy", "prefix-sharing"],
     ("tr.csv: column prefix_id without column prefix_tokens", "add prefix_tokens"),
     {"tr.csv": f"{PREFIX_HEADER}\n0,100,10,a\n0.1,100,10,a\n"})
case("sync-huge-range", ["sync", "Llama-3-8B", "rdma-p2p", "--trainer", "gpu0-99999999999"], "at most")
case("sync-samples-negative", [*SYNC, "--samples", "-1"], "--samples")
case("sync-samples-huge", [*SYNC, "--samples", "100000000"], ("--samples", "10000"))
case("sync-samples-one", [*SYNC, "--samples", "1"], ("--samples", "0 (no interval) or 2"))  # one has no spread
case("sync-mode-of-modeless", ["sync", "Llama-3-8B", "rdma-p2p:foo"], ("rdma-p2p:foo", "has no modes"))
case("sync-empty-mode", ["sync", "Llama-3-8B", "rdma-p2p:"], ("rdma-p2p:", "nothing after"))
case("sync-knob-cost-multiplied", ["sync", "Llama-3-8B", "host-staged", "--knob", "per_tensor_s=1e8"],
     ("beyond 10^9 s", "knobs set: per_tensor_s="))  # within its bounds, too large once multiplied
case("sync-knob-cost-huge", ["sync", "Llama-3-8B", "nccl-broadcast", "--knob", "call_latency_s=1e300"],
     ("call_latency_s", "10^9 s"))  # named the knob, not a copy whose fixed cost it became
for value, why in [("20parsec", "unknown unit 'parsec'"), ("-20us", "time must be a finite number >= 0"),
                   ("soon", "cannot read time 'soon'"), ("nan", "finite")]:  # a time knob takes 20us, 1.5ms, ...
    case(f"sync-knob-time-{value}", ["sync", "Llama-3-8B", "nccl-broadcast", "--knob", f"call_latency_s={value}"],
         ("NcclBroadcastKnobs: call_latency_s: ", why))
case("sync-knob-bucket-fraction", ["sync", "Llama-3-8B", "host-staged", "--knob", "bucket_bytes=1.5"],
     ("bucket_bytes", "whole number"))  # as every other size knob
case("serve-samples-negative", ["serve", "-n", "3", "--samples", "-4"], "--samples")
case("serve-samples-word", ["serve", "-n", "3", "--samples", "few"], "--samples")
case("simulate-samples-negative", ["simulate", "s.yaml", "--samples", "-1"], "--samples", scenario())
case("simulate-samples-word", ["simulate", "s.yaml", "--samples", "few"], "--samples", scenario())
case("validate-budget-negative", ["validate", "--budget-s", "-5", "--out", "v"], "--budget-s")
case("validate-budget-nan", ["validate", "--budget-s", "nan", "--out", "v"], "--budget-s")
case("topo-yaml-with-calibration", ["topo", "show", "h100-1", "--yaml", "--calibration", "x.json"], "--yaml")
case("topo-show-cluster-node-of-4096", ["topo", "show", "cluster-1x4096"], ("cluster-1x4096", "1..8 GPUs"))
case("sync-defaults-on-a-cluster", ["sync", "Llama-3-8B", "nccl-broadcast", "--topology", "cluster-2x8"],
     ("default --trainer gpu0-3", "e.g. --trainer node0.gpu0-3 --rollout node0.gpu4-7"))
# Sizes past what numpy can draw once gave a MemoryError or OverflowError traceback.
case("serve-requests-absurd", ["serve", "--rate", "inf", "-n", "10000000000000"], ("requests", "1,000,000"))
case("serve-prompt-absurd", ["serve", "-n", "3", "--prompt-tokens", "1e300"], ("prompt_tokens", "2^53"))
case("serve-prefixes-absurd", ["serve", "-n", "3", "--prefix-tokens", "8", "--prefixes", "100000000000000000000"],
     "distinct prefixes")


# A file saved as Latin-1 (the é of '1é' is the byte 0xe9), given to every command that reads a file: each reads
# it through `fileio.read_text`, which names the file and where the first bad byte is (a 27-line
# UnicodeDecodeError traceback, exit status 1, before).
LATIN = b"topology: hgx-h200-8\ntransfers:\n  - {id: a, src: gpu0, dst: gpu1, bytes: 1\xe9}\n"
NOT_UTF8 = ("not UTF-8 text (byte 0xe9 at line 3, column 43)", "save it as UTF-8")
for cid, argv, bad in [
    ("simulate", ["simulate", "bad.yaml"], "bad.yaml"),
    ("simulate-calibration", ["simulate", "s.yaml", "--calibration", "bad.json"], "bad.json"),
    ("topo-show", ["topo", "show", "bad.yaml"], "bad.yaml"),
    ("topo-import", ["topo", "import", "bad.txt"], "bad.txt"),
    ("serve-topology", ["serve", "-n", "3", "--topology", "bad.yaml"], "bad.yaml"),
    ("serve-calibration", ["serve", "-n", "3", "--calibration", "bad.json"], "bad.json"),
    ("serve-request-trace", ["serve", "--request-trace", "bad.csv"], "bad.csv"),
    ("sync-topology", [*SYNC, "--topology", "bad.yaml"], "bad.yaml"),
    ("calibrate", ["calibrate", "bad.json", "p.json"], "bad.json"),
    ("calibrate-base", ["calibrate", MEASURED, "p.json", "--base", "bad.json"], "bad.json"),
    ("calibrate-folder", ["calibrate", "m", "p.json"], "m/measured.json"),
    ("calibrate-workloads", ["calibrate", "w/workloads.json", "p.json"], "w/workloads.json"),
    ("report", ["report", "bad.json", "--no-store"], "bad.json"),
    ("report-profile", ["report", MEASURED, "--profile", "bad.json", "--out", "rep", "--no-store"], "bad.json"),
    ("sweep", ["sweep", "bad.py"], "bad.py"),
    ("plot", ["plot", "bad.py"], "bad.py"),
]:
    case(f"not-utf8-{cid}", argv, (f"{bad}: cannot read", *NOT_UTF8), {**scenario(), bad: LATIN})


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def test_there_are_over_200_distinct_cases() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be distinct"
    assert len({(tuple(c[1]), tuple(sorted(c[2].items()))) for c in CASES}) == len(CASES), "cases must differ"
    assert len(CASES) >= 200


@pytest.mark.parametrize("cid, argv, files, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(cid: str, argv: list[str], files: dict[str, str],
                                          expected: tuple[str, ...], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FABRICSIM_STORE", str(tmp_path / "results"))
    monkeypatch.setenv("FABRICSIM_PROGRESS", "0")  # a slow machine must not add a progress line to stderr
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (tmp_path / name).write_bytes(text)
        else:
            (tmp_path / name).write_text(text)
    before = _snapshot(tmp_path)
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exc:  # argparse's own exits
        code = exc.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit status {code}; stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("fabricsim"), f"not one line: {err!r}"
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert _snapshot(tmp_path) == before, "something was written"
    assert not (tmp_path / "results").exists()



def test_force_replaces_a_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal above has its way out: with --force each command replaces the kept trace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FABRICSIM_STORE", str(tmp_path / "results"))
    monkeypatch.setenv("FABRICSIM_PROGRESS", "0")
    for name, text in TRACE_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for argv in (["simulate", "s.yaml", "--perfetto", "t.json", "--samples", "0"],
                 [*SYNC, "--samples", "0", "--perfetto", "t.json"],
                 ["serve", "-n", "3", "--samples", "0", "--perfetto", "t.json"]):
        (tmp_path / "t.json").write_text("a trace I kept")
        assert main([*argv, "--force"]) == 0
        assert "traceEvents" in (tmp_path / "t.json").read_text()
    (tmp_path / "traced.py").write_text(TRACED_STUDY)
    pid = _traced_point()
    trace = tmp_path / "traces" / f"traced-{pid}.json"
    trace.write_text("a trace I kept")
    assert main(["sweep", "traced.py", "--perfetto-point", pid[:8]]) == 2
    assert trace.read_text() == "a trace I kept"
    assert main(["sweep", "traced.py", "--perfetto-point", pid[:8], "--force"]) == 0
    assert "traceEvents" in trace.read_text()


def test_the_one_folder_named_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal of a missing folder (NO_FOLDER above) stops at the folders above the output: a trace folder, a
    report folder and a results store that do not exist yet are made, as the docs say (traces/, --out DIR)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FABRICSIM_PROGRESS", "0")
    (tmp_path / "traced.py").write_text(TRACED_STUDY)
    (tmp_path / "tiny.py").write_text(TINY_STUDY)
    assert main(["sweep", "traced.py", "--perfetto-point", _traced_point()[:8], "--perfetto-dir", "tr"]) == 0
    assert main(["sweep", "tiny.py", "--store", "st", "--quiet"]) == 0
    assert main(["report", MEASURED, "--out", "rep", "--store", "st2"]) == 0
    assert [p.name for p in (tmp_path / "tr").iterdir()] == [f"traced-{_traced_point()}.json"]
    assert (tmp_path / "st" / "tiny").is_dir() and (tmp_path / "rep" / "report.md").is_file()
    assert (tmp_path / "st2").is_dir()
