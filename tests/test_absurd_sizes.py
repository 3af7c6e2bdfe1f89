"""Absurd sizes are bad input: a decode batch of 10^30, 10^20 serving instances or a NaN count is one line and
exit status 2 from the CLI, a typed error from the API, and never a hang, an allocation or a traceback.

The CLI cases run in-process (`fabricsim.cli.main`) with a time limit each, so a check that moved after the
work it guards shows up as a slow test, not only as a wrong message.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fabricsim import FabricsimError
from fabricsim.cli import main
from fabricsim.workloads.decode import DecodeBatch
from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.kvpolicies import PolicyError, make_policy
from fabricsim.workloads.kvpolicies.pd import PDDisaggregation
from fabricsim.workloads.requests import MAX_TOKENS, poisson_requests
from fabricsim.workloads.serving import ServingConfig, ServingError, ServingSystem

HUGE = "1" + "0" * 30
VERY_HUGE = "1" + "0" * 400  # past a float: 10^400 overflows where it is multiplied by one
SYNC = ["sync", "Llama-3-8B", "rdma-p2p", "--samples", "0"]
SERVE = ["serve", "-n", "5", "--samples", "0"]
LIMIT_S = 10.0  # each refusal takes well under a second; a run that builds what it should refuse takes longer


def _short(value: object) -> str:
    """A test id that stays readable when the value holds a 400-digit number."""
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "..."


CLI_CASES = [
    ("batch-1e30", [*SYNC, "--batch", HUGE], ("batch", "2^53")),
    ("batch-1e400", [*SYNC, "--batch", VERY_HUGE], ("batch", "2^53")),
    ("batch-minus-1e400", [*SYNC, "--batch", "-" + VERY_HUGE], ("batch", "2^53")),
    ("batch-0", [*SYNC, "--batch", "0"], ("batch", ">= 1")),
    ("batch-negative", [*SYNC, "--batch", "-5"], ("batch", ">= 1")),
    ("batch-fraction", [*SYNC, "--batch", "1.5"], ("--batch",)),
    ("batch-nan", [*SYNC, "--batch", "nan"], ("--batch",)),
    ("context-1e30", [*SYNC, "--context", HUGE], ("context", "2^53")),
    ("context-negative", [*SYNC, "--context", "-1"], ("context", ">= 0")),
    ("batch-times-context", [*SYNC, "--batch", str(2**27), "--context", str(2**27)], ("batch x context", "2^53")),
    ("instances-1e20", [*SERVE, "--instances", "1" + "0" * 20], ("instances", "2^53")),
    ("instances-1e9", [*SERVE, "--instances", str(10**9)], ("tp x instances", "GPUs")),
    ("instances-minus-1e400", [*SERVE, "--instances", "-" + VERY_HUGE], ("instances", "2^53")),
    ("instances-more-than-gpus", [*SERVE, "--instances", "1000"], ("1000 instance(s)", "offers 1")),
    ("token-budget-1e20", [*SERVE, "--token-budget", "1" + "0" * 20], ("token_budget", "2^53")),
    ("max-batch-1e20", [*SERVE, "--max-batch", "1" + "0" * 20], ("max_batch_seqs", "2^53")),
    ("pd-prefill-1e20", [*SERVE, "--policy", "pd-disaggregation", "--param", "prefill_instances=1e20"],
     ("prefill_instances", "more than")),
    ("pd-decode-1e6", [*SERVE, "--policy", "pd-disaggregation", "--param", "decode_instances=1000000"],
     ("1000001 instance(s)", "offers 1")),
    ("pd-prefill-inf", [*SERVE, "--policy", "pd-disaggregation", "--param", "prefill_instances=inf"],
     ("prefill_instances", "finite")),
    ("pd-prefill-nan", [*SERVE, "--policy", "pd-disaggregation", "--param", "prefill_instances=nan"],
     ("prefill_instances", "finite")),
    ("pd-prefill-half", [*SERVE, "--policy", "pd-disaggregation", "--param", "prefill_instances=0.5"],
     ("prefill_instances", "whole number")),
]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_absurd_sizes_in_one_line(argv: list[str], expected: tuple[str, ...],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals (a non-integer --batch)
        code = exc.code
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit status {code}; stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("fabricsim"), f"not one line: {err!r}"
    assert len(lines[0]) < 300, f"the line prints the whole number: {lines[0]!r}"
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert out == ""
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s to refuse"


def test_cli_batch_of_1e30_exits_2_as_a_process() -> None:
    """The flagship case end to end: the installed entry point, its real exit status, nothing on stdout."""
    proc = subprocess.run([sys.executable, "-m", "fabricsim.cli", *SYNC, "--batch", HUGE], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "2^53" in proc.stderr


def test_colocated_trainer_and_rollout_are_still_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    """Overlapping trainer and rollout GPUs is colocated placement, modelled on purpose: not an absurd input."""
    assert main([*SYNC, "--trainer", "gpu0-3", "--rollout", "gpu0-3"]) == 0
    assert "rdma-p2p" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- API
@pytest.mark.parametrize("kwargs", [
    {"batch": 10**30}, {"batch": 10**400}, {"batch": -10**400}, {"batch": 1e300}, {"context": 10**30},
    {"batch": 0}, {"batch": -1}, {"context": -1}, {"batch": 1.5}, {"context": 0.5},
    {"batch": float("nan")}, {"batch": float("inf")}, {"context": float("nan")}, {"context": float("-inf")},
    {"batch": True}, {"batch": "64"}, {"batch": None},
    {"batch": 2**27, "context": 2**27},
    {"batch": MAX_TOKENS + 1, "context": 0},
], ids=_short)
def test_decode_batch_refuses_with_a_typed_error(kwargs: dict) -> None:
    with pytest.raises(WorkloadError, match="decode batch"):
        DecodeBatch(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"batch": 1, "context": 0}, {"batch": MAX_TOKENS, "context": 0}, {"batch": 2**26, "context": 2**27},
    {"batch": 64.0, "context": 4096.0},
], ids=_short)
def test_decode_batch_takes_sizes_up_to_the_bound(kwargs: dict) -> None:
    DecodeBatch(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"instances": 10**20}, "instances is more than 2\\^53"),
    ({"instances": 10**9}, "tp x instances"),
    ({"tp": 2**20, "instances": 2}, "tp x instances"),
    ({"instances": float("nan")}, "whole number"),
    ({"instances": float("inf")}, "whole number"),
    ({"instances": 2.5}, "whole number"),
    ({"tp": 0}, ">= 1"),
    ({"token_budget": 2**60}, "token_budget"),
    ({"layer_groups": -(10**400)}, "layer_groups"),
], ids=_short)
def test_serving_config_refuses_with_a_typed_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ServingError, match=match):
        ServingConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"prefill_instances": 10**20}, {"decode_instances": 10**20}, {"prefill_instances": float("inf")},
    {"prefill_instances": float("nan")}, {"prefill_instances": 0.5}, {"decode_instances": 1.5},
    {"prefill_instances": 0}, {"decode_instances": -(10**400)}, {"prefill_instances": True},
], ids=_short)
def test_pd_instance_counts_refuse_with_a_typed_error(kwargs: dict) -> None:
    with pytest.raises(PolicyError, match="pd-disaggregation"):
        PDDisaggregation(**kwargs)
    with pytest.raises(PolicyError, match="pd-disaggregation"):
        make_policy("pd-disaggregation", **kwargs)


@pytest.mark.parametrize(("policy", "kwargs"), [
    ("host-offload", {"prefetch_depth": float("inf")}), ("host-offload", {"prefetch_depth": 0.5}),
    ("topk-paging", {"topk_pages": 2.5}), ("async-compression", {"trigger_tokens": float("nan")}),
], ids=_short)
def test_policy_counts_are_whole_numbers(policy: str, kwargs: dict) -> None:
    """Counts used to go through int(), which made 0.5 a 0 and infinity an OverflowError."""
    from fabricsim.workloads.kvpolicies.registry import POLICIES

    cls = POLICIES[policy]
    with pytest.raises(PolicyError, match="whole number"):
        cls(**kwargs)


def test_instances_are_counted_before_any_per_instance_list() -> None:
    """A policy whose split asks for 10^20 instances is refused by the GPU count, in well under a second; building
    a role per instance first would be an OverflowError or MemoryError."""

    class Huge(PDDisaggregation):
        def role_counts(self, instances: int) -> dict[str, int]:
            return {"prefill": 10**20, "decode": 1}

    requests = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    started = time.perf_counter()
    with pytest.raises(ServingError, match="offers 1"):
        ServingSystem("h100-1", requests, Huge(), ServingConfig())
    assert time.perf_counter() - started < LIMIT_S


def test_the_errors_are_fabricsim_errors() -> None:
    """What the CLI turns into one line and status 2 (and studies record as a failed point)."""
    assert issubclass(ServingError, FabricsimError)
    assert issubclass(PolicyError, FabricsimError)
    assert issubclass(WorkloadError, FabricsimError)
