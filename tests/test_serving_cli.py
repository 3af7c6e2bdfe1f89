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
    doc = json.loads(captured.out)
    assert "intervals" not in doc and "interval skipped" in captured.err
    assert doc["intervals_skipped"].startswith("interval skipped (one run took")  # the note's words, why
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


def test_serve_json_tells_intervals_not_computed_from_intervals_without_spread(monkeypatch, capsys):
    """`"intervals": {}` could mean "not computed" or "computed, nothing moved": not computed, the key is absent and
    `intervals_skipped` says why; computed, `intervals` is there even when no metric spread, and nothing is skipped."""
    from fabricsim.hwmodels.intervals import Interval

    argv = ["-n", "5", "--rate", "5", "--prompt-tokens", "100", "--output-tokens", "4", "--json"]
    assert _run([*argv, "--samples", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "intervals" not in doc and doc["intervals_skipped"] == "--samples 0"
    monkeypatch.setattr(serve_cli, "intervals_over", lambda run, topo, samples, point: {
        k: Interval(v, v, v) for k, v in point.items()})  # re-runs that all gave the point: no spread
    assert _run([*argv, "--samples", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["intervals"] == {} and "intervals_skipped" not in doc


def test_serve_count_intervals_are_whole_numbers(capsys):
    """`steps 1163 [1160.9, 1165.36]`: a count's interval has whole ends, in the table and in --json, while a time's
    keeps its own."""
    argv = ["-n", "60", "--rate", "20", "--samples", "4"]
    assert _run([*argv, "--json"]) == 0
    ivs = json.loads(capsys.readouterr().out)["intervals"]
    assert "steps" in ivs and type(ivs["steps"]["lo"]) is int and type(ivs["steps"]["hi"]) is int
    assert ivs["ttft_p50_s"]["lo"] != int(ivs["ttft_p50_s"]["lo"])
    assert _run(argv) == 0
    steps = next(line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "steps")
    assert f"[{ivs['steps']['lo']}, {ivs['steps']['hi']}] (90%" in steps


# ---------------------------------------------------------------------------------------- a new-user trial
def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    """The whole command (`fabricsim.cli.main`): exit status, stdout, stderr."""
    from fabricsim.cli import main

    code = main(["serve", *argv])
    out, err = capsys.readouterr()
    return code, out, err


ON_8 = ["--topology", "hgx-h100-8", "-n", "4", "--rate", "inf", "--prompt-tokens", "64", "--output-tokens", "4",
        "--samples", "0"]
SPLIT_3_5 = ["--policy", "pd-disaggregation", "--param", "prefill_instances=3", "--param", "decode_instances=5"]
PD_3_5 = [*ON_8, *SPLIT_3_5]


def test_pd_split_sets_the_instance_count_and_a_contradicting_instances_is_refused(capsys):
    """--instances 3 and 8 gave the same numbers for a 3 + 5 split (it was ignored without a word): the split sets
    the count, the header says it, and an --instances that disagrees is one line naming both."""
    code, out, _ = _main(PD_3_5, capsys)
    assert code == 0 and "policy pd-disaggregation on 3 prefill + 5 decode instances (tp=1)" in out
    assert _main([*PD_3_5, "--instances", "8"], capsys)[0] == 0  # the same count, given: accepted
    for wrong in ("3", "1"):
        code, out, err = _main([*PD_3_5, "--instances", wrong], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and not out
        assert f"--instances {wrong} contradicts" in err and "3 prefill + 5 decode = 8 instances" in err
    code, out, _ = _main([*ON_8, "--instances", "2"], capsys)
    assert code == 0 and "policy hbm-only on 2 instances (tp=1)" in out


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_zero_handoff_at_tp2_says_why_on_stderr(capsys, json_mode):
    """`serve --policy pd-disaggregation --tp 2` printed kv_handoff_mean_s 0 without a word, read as a handoff
    left out: a note says it was simulated and hidden behind the all-reduce; tp=1, whose handoff shows, has none."""
    pd = [*ON_8, "--policy", "pd-disaggregation", *(["--json"] if json_mode else [])]
    code, out, err = _main([*pd, "--tp", "2"], capsys)
    assert code == 0 and "note: kv_handoff_mean_s is 0: the KV handoff was simulated" in err
    assert "tensor-parallel all-reduce" in err and "note:" not in out
    if json_mode:
        assert json.loads(out)["kv_handoff_mean_s"] == 0
    code, out, err = _main(pd, capsys)
    assert code == 0 and "kv_handoff" not in err


def test_pd_on_too_few_gpus_says_what_the_split_needs(capsys):
    """On h100-1 the error spoke of '2 instance(s)' the user never asked for."""
    code, _, err = _main(["-n", "2", "--samples", "0", "--policy", "pd-disaggregation"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "needs at least one prefill and one decode instance, so at least 2 GPUs at tp=1" in err
    assert "topology 'h100-1' offers 1" in err
    code, _, err = _main([*PD_3_5, "--tp", "2"], capsys)
    assert code == 2 and "runs 3 prefill + 5 decode = 8 instance(s) x tp=2, which need 16 GPUs" in err
    assert "topology 'hgx-h100-8' offers 8" in err


def test_a_shared_prefix_not_shorter_than_the_prompts_is_refused(capsys):
    """--prefix-tokens 5000 on the default 1024-token prompts raised every prompt to 5001 tokens (TTFT 10x)."""
    for prefix in ("5000", "1024"):
        code, out, err = _main(["-n", "3", "--prefix-tokens", prefix], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and not out
        assert f"--prefix-tokens {prefix} is not shorter than the mean prompt length (--prompt-tokens 1024)" in err
    assert _main(["-n", "3", "--samples", "0", "--prefix-tokens", "1000"], capsys)[0] == 0


def test_serve_json_carries_its_inputs(capsys):
    """A saved answer must say what it answers: model, machine, calibration, policy and parameters, deployment and
    request settings; the metric keys stay where they were."""
    assert _run(["--requests", "6", "--rate", "inf", "--prompt-tokens", "100", "--output-tokens", "4", "--seed", "3",
                 "--policy", "host-offload", "--param", "prefetch_depth=2", "--samples", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ttft_p50_s"] > 0 and "intervals" in out
    ins = out["inputs"]
    assert ins["model"] == "Llama-3-8B" and ins["topology"] == "h100-1" and ins["calibration"]
    assert ins["policy"] == "host-offload" and ins["policy_params"] == {"prefetch_depth": 2}
    assert ins["params_given"] == ["prefetch_depth"] and ins["tp"] == 1 and ins["instances"] == 1
    assert ins["request_trace"] is None and ins["requests"] == 6 and ins["rate"] == "inf"  # JSON has no infinity
    assert (ins["prompt_tokens"], ins["output_tokens"], ins["seed"], ins["prefix_tokens"]) == (100, 4, 3, 0)
    assert ins["kv_dtype"] == "bf16" and ins["mechanism"] == "ce-batched" and ins["samples"] == 2


def test_serve_json_inputs_of_a_trace_and_a_split(tmp_path, capsys):
    trace = tmp_path / "r.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,300,5\n0.5,300,5\n")
    code, out, _ = _main(["--topology", "hgx-h100-8", "--samples", "0", *SPLIT_3_5, "--request-trace", str(trace),
                          "--json"], capsys)
    assert code == 0
    ins = json.loads(out)["inputs"]
    assert ins["request_trace"] == str(trace) and ins["requests"] == 2 and "rate" not in ins
    assert ins["roles"] == {"prefill": 3, "decode": 5} and ins["instances"] == 8
    assert ins["policy_params"] == {"prefill_instances": 3, "decode_instances": 5}


def test_the_rerun_estimate_leaves_out_the_engine_load(monkeypatch, capsys):
    """`serve -n 10` said '8 perturbed re-runs ..., at least 4 s' and took 1.3 s in all: the first run's time, which
    the estimate multiplies, held the one-time load of the compiled engine (here a 0.3 s stand-in for it)."""
    import time

    from fabricsim.simcore import fluid
    from fabricsim.workloads import metrics_out

    real, loaded = fluid.load_core, []

    def slow_first_load():
        if not loaded:
            loaded.append(True)
            time.sleep(0.3)
        return real()

    monkeypatch.setattr(fluid, "load_core", slow_first_load)
    monkeypatch.setattr(metrics_out, "RERUN_NOTE_AFTER_S", 0.5)
    assert _run(["--requests", "3", "--rate", "inf", "--prompt-tokens", "64", "--output-tokens", "4",
                 "--samples", "2", "--json"]) == 0
    assert loaded and "perturbed re-runs" not in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["prefix-sharing", "system-prompt-compression"])
def test_a_prefix_policy_without_prefixes_says_so(policy, tmp_path, capsys):
    """Without a shared prefix these policies run exactly as hbm-only: said in a note, not left to be found."""
    stream = ["-n", "3", "--prompt-tokens", "64", "--output-tokens", "4"]
    argv = ["--samples", "0", "--policy", policy]
    code, _, err = _main([*stream, *argv], capsys)
    assert code == 0 and f"note: policy {policy} has nothing to share" in err and "--prefix-tokens N" in err
    assert "nothing to share" not in _main([*stream, *argv, "--prefix-tokens", "32"], capsys)[2]
    trace = tmp_path / "r.csv"
    # an id whose prefix is 0 tokens long (an id with no prefix_tokens column at all is refused: `load_trace`)
    trace.write_text("arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,300,5,a,0\n")
    code, _, err = _main([*argv, "--request-trace", str(trace)], capsys)
    assert code == 0 and "nothing to share" in err and "prefix_tokens columns" in err
    assert "nothing to share" not in _main([*stream, "--samples", "0"], capsys)[2]  # hbm-only: by design


def test_a_trace_with_an_unknown_column_is_refused(tmp_path, capsys):
    trace = tmp_path / "r.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,extra\n0,300,5,x\n")
    code, out, err = _main(["--request-trace", str(trace)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and not out
    assert "unknown column(s) extra" in err and str(trace) in err


def test_poisson_settings_beside_a_trace_are_refused(tmp_path, capsys):
    """`--request-trace r.csv --rate 50` served the trace's own arrivals, the rate dropped without a word."""
    trace = tmp_path / "r.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,300,5\n")
    for extra, named in ((["--rate", "50"], "--rate sets"), (["-n", "3", "--seed", "1", "-n", "4"], "-n, --seed set"),
                         (["--prefix-tokens", "0"], "--prefix-tokens sets")):
        code, out, err = _main(["--request-trace", str(trace), *extra], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and not out
        assert f"{named} the Poisson stream, which --request-trace replaces" in err
    assert _main(["--request-trace", str(trace), "--samples", "0"], capsys)[0] == 0
