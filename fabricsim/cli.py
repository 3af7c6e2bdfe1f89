"""The one `fabricsim` command.

Each subcommand lives beside the code it drives, in a module exposing `add_parser(subparsers)`, which
registers the subcommand and sets `func` (taking the parsed namespace, returning an exit status). This file
only assembles them and turns user mistakes (`FabricsimError`) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__

EPILOG = """examples:
  fabricsim simulate examples/h2d_fanout.yaml
  fabricsim simulate examples/h2d_fanout.yaml --json --trace trace.json
  fabricsim topo show hgx-h200-8
  fabricsim topo import topo_m.txt --gpu H100
  fabricsim sweep weight_sync && fabricsim plot weight_sync
  fabricsim results show weight_sync --metric sync_s
"""


def _command_modules() -> tuple:
    """The modules that contribute subcommands, in the order `fabricsim --help` lists them. Imported here,
    not at the top, so that `main`'s Ctrl-C guard already covers the heavy imports."""
    from .harness import cli as harness_cli
    from .hwmodels import cli as hwmodels_cli
    from .simcore import cli as simcore_cli
    from .validate import cli as validate_cli
    from .workloads import serve_cli
    from .workloads.weightsync import cli as weightsync_cli

    return (simcore_cli, hwmodels_cli, weightsync_cli, serve_cli, harness_cli, validate_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabricsim",
        description="Simulate weight and KV-cache movement across GPU machines, and check it against real GPUs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fabricsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; Ctrl-C anywhere, even while the models are still being imported, ends it with 130."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("fabricsim: interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    from fabricsim.errors import FabricsimError  # imported here: the heavy imports start inside main's guard

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FabricsimError as exc:
        print(f"fabricsim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A path the user gave cannot be written or read (a folder that is a file, no permission, disk full).
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fabricsim: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
