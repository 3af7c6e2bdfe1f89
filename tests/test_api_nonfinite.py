"""NaN, infinities and non-numbers from API callers: every float of a KV policy and of `ServingConfig` is refused
with the module's typed error in one line that names the field, as the CLI already refuses them; counts take a
whole float (512.0, what JSON or arithmetic gives) as the int it is and refuse everything else.
"""

from __future__ import annotations

import math

import pytest

from fabricsim.cli import main
from fabricsim.workloads.decode import DecodeBatch
from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.kvpolicies import PolicyError, make_policy
from fabricsim.workloads.kvpolicies.registry import POLICIES
from fabricsim.workloads.kvsize import KVConfigError
from fabricsim.workloads.requests import poisson_requests
from fabricsim.workloads.serving import ServingConfig, ServingError, serve

NONFINITE = [math.nan, math.inf, -math.inf]
SERVE = ["serve", "-n", "5", "--samples", "0"]


def _one_line(exc: pytest.ExceptionInfo[BaseException], *names: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 300, text
    for name in names:
        assert name in text, f"{name!r} not in {text!r}"


# ---------------------------------------------------------------------------------------- KV policies
POLICY_FLOATS = [
    ("system-prompt-compression", "ratio"),
    ("system-prompt-compression", "decompress_s"),
    ("system-prompt-compression", "dynamic_fraction"),
    ("async-compression", "ratio"),
    ("async-compression", "flops_per_token"),
    ("prefix-sharing", "cache_fraction"),
    ("topk-paging", "stable_fraction"),
    ("topk-paging", "promote_fraction"),
]


@pytest.mark.parametrize("value", NONFINITE, ids=repr)
@pytest.mark.parametrize(("policy", "param"), POLICY_FLOATS, ids=lambda x: x)
def test_policy_floats_refuse_nonfinite_values(policy: str, param: str, value: float) -> None:
    with pytest.raises(PolicyError) as exc:
        POLICIES[policy](**{param: value})
    _one_line(exc, policy, param)
    with pytest.raises(PolicyError) as exc:  # by name, as studies and the CLI make them
        make_policy(policy, **{param: value})
    _one_line(exc, policy, param)


@pytest.mark.parametrize(("policy", "param"), [("system-prompt-compression", "ratio"),
                                               ("async-compression", "ratio"),
                                               ("prefix-sharing", "cache_fraction")], ids=lambda x: x)
def test_policy_floats_refuse_ints_past_a_float(policy: str, param: str) -> None:
    """10^400 is a finite int but no float: `float()` of it was an OverflowError traceback."""
    with pytest.raises(PolicyError) as exc:
        POLICIES[policy](**{param: 10**400})
    _one_line(exc, policy, param)


def test_policy_floats_still_take_finite_values() -> None:
    assert POLICIES["system-prompt-compression"](ratio=8, decompress_s=0).ratio == 8.0
    assert POLICIES["async-compression"](ratio=2.0, flops_per_token=0).flops_per_token == 0
    assert POLICIES["prefix-sharing"](cache_fraction=0.25).cache_fraction == 0.25


# ---------------------------------------------------------------------------------------- ServingConfig floats
SERVING_FLOATS = [
    ("copy_launch_s", ServingError),
    ("step_overhead_s", ServingError),
    ("allreduce_latency_s", ServingError),
    ("gather_Bps_per_sm", ServingError),
    ("activation_reserve_bytes", ServingError),
    ("gpu_memory_utilization", ServingError),
    ("admission_watermark", ServingError),
    ("kv_budget_bytes", KVConfigError),
]


@pytest.mark.parametrize("value", [*NONFINITE, "fast", [1.0]], ids=repr)
@pytest.mark.parametrize(("field", "error"), SERVING_FLOATS, ids=lambda x: getattr(x, "__name__", x))
def test_serving_config_floats_refuse_nonfinite_and_non_numbers(field: str, error: type[WorkloadError],
                                                                value: object) -> None:
    with pytest.raises(error) as exc:
        ServingConfig(**{field: value})
    _one_line(exc, field)


@pytest.mark.parametrize(("field", "value"), [
    ("copy_launch_s", -1e-6), ("step_overhead_s", -1.0), ("allreduce_latency_s", -1e-6),
    ("gather_Bps_per_sm", 0.0), ("gather_Bps_per_sm", -4e9), ("activation_reserve_bytes", -1.0),
    ("kv_budget_bytes", 0), ("kv_budget_bytes", -1e9), ("kv_budget_bytes", 2.0**70),
    ("copy_launch_s", 1e12), ("gpu_memory_utilization", 0.0), ("admission_watermark", 1.0),
    ("gather_Bps_per_sm", True), ("copy_launch_s", False),
], ids=repr)
def test_serving_config_floats_refuse_out_of_range(field: str, value: float) -> None:
    with pytest.raises(WorkloadError) as exc:
        ServingConfig(**{field: value})
    _one_line(exc, field)


def test_serving_config_floats_keep_their_meaning() -> None:
    cfg = ServingConfig(copy_launch_s=0, step_overhead_s=1e-5, allreduce_latency_s=0, activation_reserve_bytes=0,
                        gather_Bps_per_sm=2e9, kv_budget_bytes=20 * 2**30 * 0.5, admission_watermark=0)
    assert (cfg.copy_launch_s, cfg.step_overhead_s, cfg.gather_Bps_per_sm) == (0.0, 1e-5, 2e9)
    assert cfg.kv_budget_bytes == 10 * 2**30
    assert ServingConfig().kv_budget_bytes is None


def test_serve_overrides_are_checked_before_the_run() -> None:
    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    with pytest.raises(ServingError) as exc:
        serve("h100-1", reqs, step_overhead_s=math.nan)
    _one_line(exc, "step_overhead_s")


# ---------------------------------------------------------------------------------------- counts
SERVING_COUNTS = [("tp", ServingError), ("instances", ServingError), ("max_batch_seqs", ServingError),
                  ("token_budget", ServingError), ("layer_groups", ServingError), ("gather_sms", ServingError),
                  ("page_tokens", KVConfigError)]


@pytest.mark.parametrize(("field", "error"), SERVING_COUNTS, ids=lambda x: getattr(x, "__name__", x))
def test_serving_counts_take_whole_floats_as_ints(field: str, error: type[WorkloadError]) -> None:
    value = getattr(ServingConfig(**{field: 2.0}), field)
    assert value == 2 and type(value) is int


@pytest.mark.parametrize("value", [512.5, *NONFINITE, True, -1, -4.0, 0, "512", None], ids=repr)
@pytest.mark.parametrize(("field", "error"), SERVING_COUNTS, ids=lambda x: getattr(x, "__name__", x))
def test_serving_counts_refuse_what_is_not_a_count(field: str, error: type[WorkloadError], value: object) -> None:
    if field == "instances" and value is None:  # not said: the policy's roles, or 1 (ServingConfig)
        assert ServingConfig(instances=None).instances is None
        return
    with pytest.raises(error) as exc:
        ServingConfig(**{field: value})
    _one_line(exc, field)


def test_max_batch_seqs_of_512_0_runs_as_512() -> None:
    """A count computed as a float worked before counts became strict ints, and works again, as an int."""
    cfg = ServingConfig(max_batch_seqs=512.0, token_budget=8192.0)
    assert (cfg.max_batch_seqs, cfg.token_budget) == (512, 8192)
    assert type(cfg.max_batch_seqs) is int and type(cfg.token_budget) is int


def test_decode_batch_keeps_whole_floats_as_ints() -> None:
    b = DecodeBatch(batch=64.0, context=4096.0)
    assert (b.batch, b.context) == (64, 4096)
    assert type(b.batch) is int and type(b.context) is int


# ---------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(("argv", "names"), [
    ([*SERVE, "--policy", "system-prompt-compression", "--param", "ratio=inf"], ("ratio",)),
    ([*SERVE, "--policy", "async-compression", "--param", "flops_per_token=nan"], ("flops_per_token",)),
    ([*SERVE, "--policy", "prefix-sharing", "--param", "cache_fraction=-inf"], ("cache_fraction",)),
    ([*SERVE, "--kv-budget", "inf"], ("--kv-budget",)),
    ([*SERVE, "--kv-budget", "nan"], ("--kv-budget",)),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_cli_refuses_nonfinite_in_one_line(argv: list[str], names: tuple[str, ...],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit status {code}; stderr: {err!r}"
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], lines[0]
    assert out == ""
