"""`fabricsim topo show NAME|FILE` and `fabricsim topo import TOPO_M_TXT`."""

from __future__ import annotations

import argparse
from pathlib import Path

from fabricsim.errors import TopologyError

from .fileio import atomic_write_text, dump_yaml, read_text, refuse_overwrite
from .presets import load
from .presets import names as preset_names
from .topofile import topology_to_dict


def _show(args: argparse.Namespace) -> int:
    if args.yaml and args.calibration is not None:
        raise TopologyError("--yaml prints the datasheet structure, which no calibration changes; "
                            "drop --calibration (apply it with `calibration:` in a scenario)")
    if args.yaml:
        # The file form is the machine's structure only: a calibration (per-path latencies, FIFO engines,
        # fitted link rates) is applied on load with `calibration:` in a scenario or --calibration.
        topo = load(args.topology, calibration=None)
        print("# datasheet structure; apply a calibration profile with `calibration:` in a scenario or --calibration")
        print(dump_yaml(topology_to_dict(topo), sort_keys=False), end="")
    else:
        print(load(args.topology, "default" if args.calibration is None else args.calibration).describe())
    return 0


def _import(args: argparse.Namespace) -> int:
    from .nvsmi import topology_from_topo_m

    text = read_text(args.file, TopologyError, "nvidia-smi topo -m output")
    try:
        topo = topology_from_topo_m(text, gpu=args.gpu, name=args.name or Path(args.file).stem)
    except TopologyError as exc:
        raise TopologyError(f"{args.file}: {exc}") from None
    doc = dump_yaml(topology_to_dict(topo), sort_keys=False)
    if args.out:
        refuse_overwrite(args.out, args.force, "topology", inputs=(args.file,))
        atomic_write_text(args.out, doc)
        print(f"wrote {args.out}: {len(topo.gpus())} GPUs, {topo.graph.number_of_edges()} links")
        host = sorted(n for n in topo.caps if not n.endswith((".hbm", ".dram")))
        if host:
            print(f"no PCIe switches: host ceilings {', '.join(host[:4])}{', ...' if len(host) > 4 else ''} copied "
                  f"from the bundled profile of {len(topo.gpus())}x {topo.gpu(topo.gpus()[0]).model}")
    else:
        print(doc, end="")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    topo = sub.add_parser("topo",
                          description="Show a preset or topology file, or build one from `nvidia-smi topo -m`.")
    tsub = topo.add_subparsers(dest="topo_command", metavar="ACTION", required=True)
    show = tsub.add_parser("show", help="validate and print a topology (preset name or file)",
                           epilog="examples:\n  fabricsim topo show hgx-h200-8\n  fabricsim topo show mybox.yaml\n"
                                  "  fabricsim topo show cluster-4x8-rail --yaml > cluster.yaml",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("topology", help=f"preset name ({', '.join(preset_names())}; a cluster is H100 unless its "
                                       "name has -h200) or a topology file")
    show.add_argument("--calibration", help="calibration profile to apply")
    show.add_argument("--yaml", action="store_true", help="print as an editable topology file")
    show.set_defaults(func=_show)
    imp = tsub.add_parser("import", help="build a topology file from the text of `nvidia-smi topo -m`",
                          epilog="example:\n  nvidia-smi topo -m > topo.txt\n"
                                 "  fabricsim topo import topo.txt --gpu H100 --out mybox.yaml",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("file", help="text file with the output of `nvidia-smi topo -m`")
    imp.add_argument("--gpu", default="H100", help="GPU model (H100, H200, A100, ...); default H100")
    imp.add_argument("--name", help="topology name (default: the file name)")
    imp.add_argument("--out", help="write the topology file here instead of stdout")
    imp.add_argument("--force", action="store_true", help="replace --out if it exists")
    imp.set_defaults(func=_import)
