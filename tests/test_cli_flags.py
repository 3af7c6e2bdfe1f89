"""One meaning per flag name: `--perfetto...` writes Perfetto traces everywhere, `--request-trace` reads serve's
requests; the old `--trace` spellings still work, each with a one-line warning. And KEY=VALUE settings follow
one set of rules wherever they are written (`sync --knob`, `serve --param`, `--megatron`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabricsim.cli import DEPRECATED_FLAGS, build_parser, main
from fabricsim.errors import FabricsimError
from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.keyvalue import Setting, parse_key_values, settings_of
from fabricsim.workloads.kvpolicies import make_policy
from fabricsim.workloads.weightsync import get

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "examples" / "h2d_fanout.yaml"


def _flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def test_every_trace_flag_has_one_meaning() -> None:
    for command in ("simulate", "sync", "serve"):
        assert "--perfetto" in _flags(command) and "--trace" not in _flags(command)
    assert {"--perfetto-point", "--perfetto-dir"} <= _flags("sweep") and "--trace" not in _flags("sweep")
    assert "--request-trace" in _flags("serve")
    for (command, old), new in DEPRECATED_FLAGS.items():
        assert new in _flags(command) and old not in _flags(command)


def test_old_spellings_work_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "t.json"
    assert main(["simulate", str(SCENARIO), "--trace", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == "fabricsim: warning: simulate --trace is deprecated; use --perfetto\n"
    assert json.loads(out.read_text())["traceEvents"]
    out2 = tmp_path / "s.json"
    assert main(["sync", "Llama-3-8B", "rdma-p2p", "--json", f"--trace={out2}"]) == 0
    assert "sync --trace is deprecated; use --perfetto" in capsys.readouterr().err and out2.exists()
    csv = tmp_path / "r.csv"
    csv.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,5\n")
    assert main(["serve", "--trace", str(csv), "--json"]) == 0
    assert "serve --trace is deprecated; use --request-trace" in capsys.readouterr().err


def test_new_spellings_do_not_warn(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", str(SCENARIO), "--perfetto", str(tmp_path / "t.json")]) == 0
    assert main(["serve", "-n", "3", "--perfetto", str(tmp_path / "p.json"), "--json"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "p.json").exists()


def test_key_values_are_typed_from_the_target() -> None:
    settings = {"n": Setting("n", 1), "x": Setting("x", 0.5), "on": Setting("on", False),
                "name": Setting("name", "a"), "buf_bytes": Setting("buf_bytes", 1.0)}
    assert parse_key_values(["n=3", "x=1e-3", "on=TRUE", "name=b", "buf_bytes=2KiB"], settings, "t") == \
        {"n": 3, "x": 1e-3, "on": True, "name": "b", "buf_bytes": 2048.0}
    for items, match in ((["n=2.5"], "whole number"), (["x=fast"], "expected a number"), (["on=1"], "true or false"),
                         (["x=inf"], "finite"), (["x=nan"], "finite"), (["n=1", "n=2"], "given twice"),
                         (["n"], "KEY=VALUE"), (["=3"], "KEY=VALUE"), (["n="], "KEY=VALUE"), (["y=1"], "unknown"),
                         (["buf_bytes=1e300"], "beyond 1 EiB"), (["buf_bytes=2EiB"], "unknown unit")):
        with pytest.raises(WorkloadError, match=match):
            parse_key_values(items, settings, "t")


def test_one_set_of_rules_for_knobs_and_policy_parameters() -> None:
    """The same text means the same value for a strategy knob and a policy parameter."""
    assert get("host-staged", bucket_bytes="1e9").knobs.bucket_bytes == 1e9
    assert get("host-staged", bucket_bytes="512MiB").knobs.bucket_bytes == 512 * 2**20
    assert make_policy("host-offload", prefetch_depth="2").prefetch_depth == 2
    for bad in ("2.5", "two", "true"):
        with pytest.raises(FabricsimError, match="prefetch_depth"):
            make_policy("host-offload", prefetch_depth=bad)
    with pytest.raises(FabricsimError, match="unknown parameter nope for policy 'hbm-only' \\(known: none\\)"):
        make_policy("hbm-only", nope=1)
    assert set(settings_of(type(get("rdma-p2p").knobs))) >= {"task_bytes"}


def test_a_delta_of_a_delta_is_refused() -> None:
    with pytest.raises(FabricsimError, match="not another delta"):
        get("delta:delta:rdma-p2p")
    assert get("delta:rdma-p2p", changed_fraction="0.25").label == "rdma-p2p+delta0.25"


def test_serve_help_shows_every_default() -> None:
    parser = build_parser()
    serve = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    text = " ".join(serve.format_help().split())
    missing = [a.option_strings[0] for a in serve._actions
               if a.option_strings and a.default not in (None, False, [], "==SUPPRESS==")
               and f"(default: {a.default})" not in text and f"(default {a.default}" not in text]
    assert not missing, f"serve --help hides the defaults of {missing}"
    assert "KV memory per GPU, e.g. 20GiB (default: what HBM leaves" in text
