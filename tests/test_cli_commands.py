"""The command table: every command resolves to the module that adds it, `fabricsim --help` lists each with
the table's help line (its only copy), and a run imports the module of its own command only."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from fabricsim.cli import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _is_stub(parser: argparse.ArgumentParser) -> bool:
    """A stub carries the help line only: no arguments of its own besides -h."""
    return len(parser._actions) == 1


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_resolves_to_the_module_that_adds_it(name: str) -> None:
    module, help_line = COMMANDS[name]
    sub = _subparsers(build_parser([name]))
    assert not _is_stub(sub.choices[name]), f"{module} did not add '{name}'"
    # the full parser shows the table's line (its one place), as the stub does without importing the module
    shown = {a.dest: a.help for a in sub._choices_actions}
    assert shown[name] == help_line
    assert hasattr(importlib.import_module(module), "add_parser")


def test_a_module_giving_its_own_help_line_is_refused() -> None:
    """A second copy of a command's help line would drift from the table's: `add_parser(..., help=...)` is refused."""
    from fabricsim.cli import _HelpFromTable

    sub = argparse.ArgumentParser().add_subparsers()
    with pytest.raises(TypeError, match="COMMANDS"):
        _HelpFromTable(sub).add_parser("sync", help="another line")


def test_the_table_holds_every_command_the_modules_add() -> None:
    """No module adds a command the table lacks (it would be missing from `fabricsim --help`), in table order."""
    full = _subparsers(build_parser())
    assert list(full.choices) == list(COMMANDS)
    assert not any(_is_stub(p) for p in full.choices.values())
    stubs = _subparsers(build_parser([]))
    assert list(stubs.choices) == list(COMMANDS) and all(_is_stub(p) for p in stubs.choices.values())


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name}" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_help_works(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: fabricsim {name}" in capsys.readouterr().out


def _modules_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after running `fabricsim ARGV`."""
    code = ("import json, sys\nfrom fabricsim.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(json.loads(res.stderr.strip().splitlines()[-1]))


def test_a_command_imports_its_own_module_only() -> None:
    """`fabricsim --help` imports no command module; `topo show` neither pandas, numba, matplotlib nor the other
    commands' modules."""
    heavy = {"pandas", "numba", "matplotlib", "simpy"}
    modules = {m for m, _ in COMMANDS.values()}
    loaded = _modules_after(["--help"])
    assert not loaded & (heavy | modules)
    loaded = _modules_after(["topo", "show", "h100-1"])
    assert "fabricsim.hwmodels.cli" in loaded
    assert not loaded & (heavy | (modules - {"fabricsim.hwmodels.cli"}))


@pytest.fixture
def python_handles_sigint():
    """Python's own SIGINT handler for the test: a process started in the background by a non-interactive shell
    (nohup, `cmd &`) inherits SIGINT ignored, and then `_thread.interrupt_main` delivers nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _lost_interrupt():
    from types import SimpleNamespace

    return SimpleNamespace(exc_type=KeyboardInterrupt, exc_value=KeyboardInterrupt(), exc_traceback=None,
                           err_msg=None, object=None)


def test_an_interrupt_lost_in_a_callback_comes_back_after_the_hook_returns(monkeypatch, python_handles_sigint
                                                                          ) -> None:
    """A Ctrl-C raised where Python can only report it (a weakref callback during an import) reaches the
    unraisable hook while a command runs; the hook must deliver it again to the main thread, and not raise it
    inside itself, where it would be lost once more."""
    import time

    from fabricsim import cli

    monkeypatch.setattr(cli, "_stopping", False)  # as inside `main`, while the command runs
    lost = _lost_interrupt()
    returned = False
    try:
        cli._interrupt_again(lost)
        returned = True
        for _ in range(500):  # short sleeps: a simulated interrupt does not cut a sleep short
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail("the interrupt was not delivered again")
    assert returned, "the interrupt was raised inside the hook"


def test_no_interrupt_is_delivered_again_once_main_has_returned(monkeypatch, python_handles_sigint) -> None:
    """An interrupt the hook would deliver again after `main` returned would end the process by SIGINT (status
    -2) after its clean exit: once a command has ended, normally or by an interrupt, the hook and a delivery
    already on its way send nothing."""
    import contextlib
    import threading
    import time

    from fabricsim import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    for run in (None, interrupted):
        if run is not None:
            monkeypatch.setattr(cli, "_run", run)
        assert cli.main(["topo", "show", "h100-1"]) == (0 if run is None else 130)
        delivered = False
        try:
            cli._interrupt_again(_lost_interrupt())  # a hook call too late
            on_its_way = threading.Thread(target=cli._deliver_interrupt)  # a delivery already scheduled
            on_its_way.start()
            on_its_way.join()
            time.sleep(0.1)  # a KeyboardInterrupt delivered would be raised here (the timer's after 10 ms)
        except KeyboardInterrupt:
            delivered = True
        if delivered:  # swallow the other delivery too, so that the failure is reported, not a Ctrl-C of pytest
            until = time.monotonic() + 0.3
            while time.monotonic() < until:
                with contextlib.suppress(KeyboardInterrupt):
                    time.sleep(0.01)
            pytest.fail("an interrupt was delivered after main had returned")


_HALF_BUILT_THEN_INTERRUPTED = """
import sys
from fabricsim import cli

class HalfBuilt:  # as llvmlite's context: the interrupt lands before the attribute its destructor reads
    def __init__(self):
        self.me = self  # a cycle: torn down by the collector, at exit at the latest
        raise KeyboardInterrupt
    def __del__(self):
        self.handle.close()

def interrupted(argv):
    HalfBuilt()

def stopped_by_itself(argv):  # as `sweep` turns Ctrl-C into its own stop and returns 130
    try:
        HalfBuilt()
    except KeyboardInterrupt:
        pass
    print("fabricsim: interrupted", file=sys.stderr)
    return 130

def other_failure_after(argv):  # a failure reported at exit that is no destructor's: still shown
    import atexit
    def closing():
        try:
            yield
        finally:
            raise ValueError("a real failure")
    def report():
        g = closing()
        next(g)
        del g  # its close fails where Python can only report it, as a generator, not a __del__
    atexit.register(report)
    raise KeyboardInterrupt

def freed_as_main_unwinds(argv):
    class Local(HalfBuilt):  # held only by the interrupted frame: freed when main's handler is done with it
        def __init__(self):
            raise KeyboardInterrupt
    Local()

cli._run = {run}
sys.exit(cli.entry())
"""


@pytest.mark.parametrize("run", ["interrupted", "freed_as_main_unwinds", "stopped_by_itself"])
def test_an_interrupted_command_ends_with_one_line_even_when_a_destructor_fails(tmp_path, run: str) -> None:
    """CI once printed llvmlite's 'Exception ignored in ... __del__' traceback after 'interrupted': an object
    the interrupt left half-built fails in its destructor, while `main` lets go of the interrupt or when the
    process exits. The process that was interrupted (or stopped itself with 130, as a sweep does) ends with the
    one line and 130, and nothing after it."""
    script = tmp_path / "half_built.py"
    script.write_text(_HALF_BUILT_THEN_INTERRUPTED.format(run=run))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (130, "fabricsim: interrupted\n")


def test_after_an_interrupt_a_failure_that_is_no_destructors_is_still_shown(tmp_path) -> None:
    """The quiet covers a destructor's failure only: a callback failing at exit says so even after Ctrl-C."""
    script = tmp_path / "half_built.py"
    script.write_text(_HALF_BUILT_THEN_INTERRUPTED.format(run="other_failure_after"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and "ValueError: a real failure" in proc.stderr, proc.stderr


def test_a_failing_destructor_is_still_reported_when_nothing_was_interrupted(tmp_path) -> None:
    """The quiet is the interrupt's alone: a destructor failing in a command that ran to its end is shown."""
    script = tmp_path / "fails.py"
    script.write_text(
        "import sys\nfrom fabricsim import cli\n"
        "class Broken:\n    def __del__(self):\n        raise AttributeError('no handle')\n"
        "def run(argv):\n    Broken()\n    return 0\n"
        "cli._run = run\nsys.exit(cli.entry())\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "AttributeError: no handle" in proc.stderr, proc.stderr
