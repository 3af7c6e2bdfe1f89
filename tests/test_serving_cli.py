"""`fabricsim serve` (module fabricsim.workloads.serve_cli): runs, prints JSON, and reports bad input in one line."""

from __future__ import annotations

import argparse
import json

import pytest

from fabricsim.errors import FabricsimError
from fabricsim.workloads import serve_cli


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    return args.func(args)


def test_serve_json(capsys):
    assert _run(["--requests", "20", "--rate", "5", "--prompt-tokens", "100", "--output-tokens", "10",
                 "--policy", "host-offload", "--param", "prefetch_depth=2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ttft_p50_s"] > 0 and out["kv_bytes_moved_per_token"] > 0


def test_serve_skips_the_default_interval_when_a_run_is_long(capsys, monkeypatch):
    """A run over the limit (here any run: the limit set to 0 s) skips the 8 re-runs with one note; --json keeps
    stdout JSON and puts the note on stderr; an explicit --samples still runs."""
    from fabricsim.workloads import metrics_out

    monkeypatch.setattr(metrics_out, "AUTO_SAMPLES_MAX_RUN_S", 0.0)
    argv = ["--requests", "5", "--rate", "5", "--prompt-tokens", "100", "--output-tokens", "4"]
    assert _run(argv) == 0
    out, err = capsys.readouterr()
    assert "note: interval skipped (one run took" in err and "--samples 8" in err  # stderr in every mode
    assert "(90%" not in out and "interval skipped" not in out
    assert _run([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert "intervals" not in json.loads(captured.out) and "interval skipped" in captured.err
    assert _run([*argv, "--json", "--samples", "2"]) == 0
    captured = capsys.readouterr()
    assert "intervals" in json.loads(captured.out) and not captured.err


def test_serve_trace(tmp_path, capsys):
    trace = tmp_path / "r.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,300,5,a,200\n0.5,300,5,a,200\n")
    assert _run(["--request-trace", str(trace), "--policy", "prefix-sharing"]) == 0
    assert "throughput_tok_s" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--policy", "nope"], "unknown KV policy"),
    (["--param", "depth"], "KEY=VALUE"),
    (["--page-tokens", "0"], "page size"),
    (["--kv-budget", "1KiB"], "smaller than one page"),
])
def test_serve_bad_input(argv, match):
    with pytest.raises(FabricsimError, match=match):
        _run(["--requests", "2", *argv])


def test_serve_bad_trace(tmp_path):
    trace = tmp_path / "r.csv"
    trace.write_text("arrival_s,prompt_tokens\n0,300\n")
    with pytest.raises(FabricsimError, match="missing column.*output_tokens"):
        _run(["--request-trace", str(trace)])


@pytest.mark.parametrize("json_mode", [False, True])
def test_the_calibration_note_goes_to_stderr_in_every_mode(capsys, json_mode):
    """A profile fitted on another GPU count says so on stderr, like every note: stdout holds the answer (with
    --json it was left out, in the table it went to stdout)."""
    from fabricsim.hwmodels.calibration import bundled_profile_path
    from fabricsim.workloads.weightsync import cli as sync_cli

    profile = str(bundled_profile_path("h200x2"))
    assert _run(["--topology", "h200-1", "--calibration", profile, "--requests", "4", "--rate", "5",
                 "--prompt-tokens", "100", "--output-tokens", "4", "--samples", "0",
                 *(["--json"] if json_mode else [])]) == 0
    cap = capsys.readouterr()
    assert "fitted on 2x H200" in cap.err and "fitted on" not in cap.out
    if json_mode:
        json.loads(cap.out)
    parser = argparse.ArgumentParser()
    sync_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sync", "Llama-3-8B", "rdma-p2p", "--topology", "h200-1", "--calibration", profile,
                              "--trainer", "gpu0", "--rollout", "gpu0", "--samples", "0",
                              *(["--json"] if json_mode else [])])
    assert args.func(args) == 0
    cap = capsys.readouterr()
    assert "fitted on 2x H200" in cap.err and "fitted on" not in cap.out
    if json_mode:
        json.loads(cap.out)


def test_serve_interval_reruns_only_the_perturbed_topologies(monkeypatch, capsys):
    """`--samples N` costs N serving re-runs besides the answer (the interval once ran the unperturbed point again),
    and every interval says whether its spread is a calibrated one."""
    runs = []
    real = serve_cli.serve
    monkeypatch.setattr(serve_cli, "serve", lambda *a, **kw: runs.append(a[0]) or real(*a, **kw))
    assert _run(["--requests", "5", "--rate", "5", "--prompt-tokens", "100", "--output-tokens", "4", "--samples", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(runs) == 3 and runs[1] is not runs[0] and runs[2] is not runs[0]
    assert out["intervals"] and all(set(iv) == {"lo", "hi", "level", "calibrated"} for iv in out["intervals"].values())
