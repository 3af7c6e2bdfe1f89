"""The one `fabricsim` command.

Each subcommand lives beside the code it drives, in a module exposing `add_parser(subparsers)`, which
registers the subcommand and sets `func` (taking the parsed namespace, returning an exit status). This file
only assembles them and turns user mistakes (`FabricsimError`) into one line on stderr and exit status 2.

`COMMANDS` says which module adds each command, so a run imports the module of its own command only:
`fabricsim topo show h100-1` does not pay for pandas (the results store) or plotting, and `fabricsim --help`
imports no command module at all.
"""

from __future__ import annotations

import _thread
import argparse
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable

from . import __version__
from .errors import INTERRUPTED, os_error_line

EPILOG = """examples:
  fabricsim simulate examples/h2d_fanout.yaml
  fabricsim simulate examples/h2d_fanout.yaml --json --perfetto trace.json
  fabricsim topo show hgx-h200-8
  fabricsim topo import topo_m.txt --gpu H100
  fabricsim sweep weight_sync && fabricsim plot weight_sync
  fabricsim results show weight_sync --metric sync_s
"""


# One meaning per flag name across the CLI: `--perfetto...` writes Perfetto traces (`--perfetto PATH` in
# simulate, sync and serve; `--perfetto-point POINT_ID` into `--perfetto-dir DIR` in sweep) and
# `--request-trace CSV` reads serve's requests. The old spellings, where `--trace` meant each of these, still
# work for scripts written before, with a one-line warning: (command, old flag) -> new flag.
DEPRECATED_FLAGS = {
    ("simulate", "--trace"): "--perfetto",
    ("sync", "--trace"): "--perfetto",
    ("serve", "--trace"): "--request-trace",
    ("sweep", "--trace"): "--perfetto-point",
    ("sweep", "--trace-dir"): "--perfetto-dir",
}


# Command -> (the module whose `add_parser` adds it, its line in `fabricsim --help`), in the order the help lists
# them. The line lives here only, so that `--help` needs no import: a module's `add_parser` gets it filled in
# (`_HelpFromTable`) and does not give one of its own.
COMMANDS = {
    "simulate": ("fabricsim.simcore.cli", "simulate a scenario file (YAML/JSON)"),
    "topo": ("fabricsim.hwmodels.cli", "show or import machine topologies"),
    "sync": ("fabricsim.workloads.weightsync.cli", "simulate one weight sync (trainer GPUs -> rollout GPUs)"),
    "serve": ("fabricsim.workloads.serve_cli",
              "serve requests with a KV-cache policy and report latency, throughput and traffic"),
    "sweep": ("fabricsim.harness.cli", "run a study's grid into the results store"),
    "results": ("fabricsim.harness.cli", "list and show the results store"),
    "plot": ("fabricsim.harness.cli", "draw a study's standard figures (PNG + SVG)"),
    "validate": ("fabricsim.validate.cli", "measure this machine's GPUs (copies, P2P, concurrency, NCCL, IPC)"),
    "calibrate": ("fabricsim.validate.cli", "fit a calibration profile from measurements"),
    "report": ("fabricsim.validate.cli", "simulate measured cases with a profile; error tables and plot"),
}


def _command_name(argv: list[str]) -> str | None:
    """The command `argv` names: its first word that is not an option (the top level's options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _rename_deprecated(argv: list[str]) -> list[str]:
    """`argv` with deprecated flag spellings of its command replaced by the current ones, warning once each."""
    command = _command_name(argv)
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        flag, eq, value = arg.partition("=")
        new = DEPRECATED_FLAGS.get((command, flag)) if flag.startswith("--") else None
        if new is not None:
            print(f"fabricsim: warning: {command} {flag} is deprecated; use {new}", file=sys.stderr)
            arg = new + eq + value
        out.append(arg)
    return out


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage mistake is one line on stderr (the command, the problem and
    where to look for help) and exit status 2, like every other user mistake; subcommands inherit it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # `--kv-budget -5GiB` is a (bad) value, not an unknown option: anything that starts like a negative
        # number is a value, so the value's own check can say what is wrong with it.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFromTable:
    """The subparsers action as a command module sees it: a command it adds gets its help line from `COMMANDS`."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self._sub = sub

    def add_parser(self, name: str, **kw: object) -> argparse.ArgumentParser:
        if "help" in kw:
            raise TypeError(f"command '{name}': its help line belongs in fabricsim.cli.COMMANDS")
        return self._sub.add_parser(name, help=COMMANDS[name][1], **kw)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser with the full parsers of `commands` (every command when None) and of the other commands
    of their modules; each other command is a stub that carries its `--help` line and imports nothing. Called inside
    `main`, so its Ctrl-C guard covers the heavy imports."""
    wanted = {COMMANDS[name][0] for name in (COMMANDS if commands is None else commands)}
    parser = Parser(
        prog="fabricsim",
        description="Simulate weight and KV-cache movement across GPU machines, and check it against real GPUs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fabricsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_line) in COMMANDS.items():
        if name in sub.choices:  # added with an earlier command of its module
            continue
        if module in wanted:  # it adds every command it owns (sweep, results and plot), in this order
            importlib.import_module(module).add_parser(_HelpFromTable(sub))
        else:
            sub.add_parser(name, help=help_line)
    return parser


def _interrupt_again(unraisable: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C that lands inside a callback Python cannot raise from (an import lock's weakref callback, while
    the models are still being imported) would print 'Exception ignored ... KeyboardInterrupt' and be lost:
    deliver it again to the main thread, where `main` turns it into one line and status 130 (once: while `main`
    is already stopping, another interrupt is only swallowed).

    Not from here: the hook runs on the main thread, so an interrupt raised now would be raised inside the hook
    itself and be lost again ('Exception ignored in sys.unraisablehook'). A helper thread delivers it after a
    moment, when the hook has returned (should it land in such a callback again, this hook sends it once more)."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        if not (_interrupted and _from_a_destructor(unraisable)):
            sys.__unraisablehook__(unraisable)
    elif not _stopping:
        later = threading.Timer(0.01, _deliver_interrupt)
        later.daemon = True
        later.start()


def _deliver_interrupt() -> None:
    with _delivering:  # never once `main` has stopped taking them (see there)
        if not _stopping:
            _thread.interrupt_main()


def _quiet_after_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    """After an interrupt, an object it left half-built (llvmlite's context, cut between its allocation and the
    attribute its destructor reads) fails in its destructor when the process tears it down, and Python would
    print that traceback after the one line 'interrupted' (seen once in CI): it is the interrupt's consequence,
    not news, so a destructor's failure is not shown; anything else still is."""
    if not _from_a_destructor(unraisable):
        sys.__unraisablehook__(unraisable)


def _from_a_destructor(unraisable: sys.UnraisableHookArgs) -> bool:
    return getattr(unraisable.object, "__name__", "") == "__del__"


_stopping = False
_interrupted = False  # the last command ended by Ctrl-C: destructors failing from now on are its debris
_delivering = threading.Lock()


def main(argv: list[str] | None = None) -> int:
    """Run one command; Ctrl-C anywhere, even while the models are still being imported, ends it with 130.

    How no interrupt escapes as a second one, which would end the process by SIGINT after the one line (seen
    about once in 40 interrupted sweeps, exit status -2): when the command ends, however, `main` stops taking
    re-delivered interrupts (`_stopping`, set under the lock `_deliver_interrupt` delivers under), so none is
    sent after; one sent before is pending and is raised while `main` still runs, in the block below, whose
    handler turns it into the line and 130 like any other. So an interrupt lost in a callback in the last
    moment of a command (its re-delivery still waiting) is dropped: the command has finished, and `main` returns
    its status."""
    global _stopping, _interrupted
    with _delivering:
        _stopping = False
    _interrupted = False
    previous, sys.unraisablehook = sys.unraisablehook, _interrupt_again
    try:
        try:
            return _run(argv)
        finally:
            with _delivering:
                _stopping = True
    except KeyboardInterrupt:
        # A second interrupt now (Ctrl-C pressed again) would escape `main` and end the process by SIGINT
        # instead of this clean exit: ignore it while stopping. A pending one is consumed while ignored, and the
        # caller's handler comes back before `main` returns.
        _interrupted = True
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        print("fabricsim: interrupted", file=sys.stderr)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        return INTERRUPTED
    finally:
        sys.unraisablehook = previous


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _run(argv: list[str] | None) -> int:
    from fabricsim.errors import FabricsimError  # imported here: the heavy imports start inside main's guard

    argv = _rename_deprecated(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser([_command_name(argv)] if _command_name(argv) in COMMANDS else [])
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
        print(f"fabricsim: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def entry() -> int:
    """The `fabricsim` command: `main`, and a process it interrupted stays quiet to its end (`main` itself gives
    the hook back to its caller, who may go on)."""
    status = main()
    if _interrupted or status == INTERRUPTED:  # a command that turned Ctrl-C or SIGTERM into its own stop (sweep)
        sys.unraisablehook = _quiet_after_interrupt
    return status


if __name__ == "__main__":
    sys.exit(entry())
