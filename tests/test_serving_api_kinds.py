"""The serving and KV API at its boundary: NumPy numbers are numbers, names and flags are checked for their kind,
and policy parameters keep to their meaning (a compression ratio >= 1, a cache fraction in (0, 1]).

Before: np.float32(0.5) as a time was refused while np.float64 was taken; `gpus=3.5` or `model=42` failed deep
in the run as a TypeError or AttributeError traceback; `coalesce="no"` silently meant yes; an async-compression
ratio of 0.5 grew the KV and a prefix cache could be 1.5 times its budget.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fabricsim.simcore import ScenarioError
from fabricsim.simcore.units import check_bytes, check_positive, check_seconds, parse_bytes, parse_seconds
from fabricsim.workloads.counts import check_count
from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.kvpolicies import KVPolicy, PolicyError, SplitsRoles, make_policy
from fabricsim.workloads.kvpolicies.registry import POLICIES
from fabricsim.workloads.kvsize import KVConfigError, KVLayout
from fabricsim.workloads.models import get as get_model
from fabricsim.workloads.requests import poisson_requests
from fabricsim.workloads.serving import ServingConfig, ServingError, ServingSystem, serve


def _one_line(exc: pytest.ExceptionInfo[BaseException], *names: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 300, text
    for name in names:
        assert name in text, f"{name!r} not in {text!r}"


# ---------------------------------------------------------------------------------------- NumPy numbers
@pytest.mark.parametrize(("field", "value", "expected"), [
    ("copy_launch_s", np.float32(0.5), 0.5),
    ("step_overhead_s", np.float16(0.25), 0.25),
    ("allreduce_latency_s", np.int32(0), 0.0),
    ("activation_reserve_bytes", np.int64(2**30), 2**30),
    ("activation_reserve_bytes", np.float32(2**30), 2**30),
    ("kv_budget_bytes", np.float32(2**30), 2**30),
    ("gather_Bps_per_sm", np.float32(4e9), 4e9),
    ("gpu_memory_utilization", np.float32(0.5), 0.5),
    ("admission_watermark", np.float32(0.25), 0.25),
], ids=lambda x: x if isinstance(x, str) else None)
def test_serving_config_takes_numpy_numbers_as_plain_ones(field: str, value: object, expected: float) -> None:
    got = getattr(ServingConfig(**{field: value}), field)
    assert got == expected
    assert type(got) in (int, float), f"{field} kept {type(got).__name__}"


@pytest.mark.parametrize("value", [np.float32("nan"), np.float16("inf"), np.float32("-inf"), np.bool_(True)],
                         ids=repr)
@pytest.mark.parametrize("field", ["copy_launch_s", "activation_reserve_bytes", "gather_Bps_per_sm",
                                   "gpu_memory_utilization"])
def test_serving_config_still_refuses_nonfinite_numpy_numbers_and_bools(field: str, value: object) -> None:
    with pytest.raises(ServingError) as exc:
        ServingConfig(**{field: value})
    _one_line(exc, field)


def test_units_helpers_take_any_real_number_and_give_a_plain_one() -> None:
    """The rule is written once, in `simcore.units`: every field and file value checked there gets it."""
    cases = [(check_bytes(np.int32(4096), "b"), 4096, int),
             (check_bytes(np.float32(1.5), "b", whole=False), 1.5, float),
             (parse_bytes(np.uint64(1 << 20), "b"), 1 << 20, int),
             (check_seconds(np.float32(0.5), "t"), 0.5, float),
             (parse_seconds(np.int16(3), "t"), 3.0, float),
             (check_positive(np.float16(2.0), "r"), 2.0, float)]
    for got, expected, kind in cases:
        assert got == expected and type(got) is kind, (got, expected)


@pytest.mark.parametrize("check", [check_bytes, check_seconds, check_positive, parse_bytes, parse_seconds],
                         ids=lambda f: f.__name__)
def test_units_helpers_refuse_ints_past_a_float_in_one_line(check: object) -> None:
    """10^400 is a finite int but no float: math.isfinite() of it was an OverflowError traceback."""
    with pytest.raises(ScenarioError) as exc:
        check(10**400, "field")  # type: ignore[operator]
    _one_line(exc, "field", "beyond 1e308")


def test_serving_config_refuses_an_int_past_a_float() -> None:
    with pytest.raises(ServingError) as exc:
        ServingConfig(activation_reserve_bytes=10**400)
    _one_line(exc, "activation_reserve_bytes")


# ---------------------------------------------------------------------------------------- policy parameters
@pytest.mark.parametrize("ratio", [0.5, 0.999, 0, -2.0], ids=repr)
def test_async_compression_refuses_a_ratio_below_one(ratio: float) -> None:
    for build in (POLICIES["async-compression"], lambda **kw: make_policy("async-compression", **kw)):
        with pytest.raises(PolicyError) as exc:
            build(ratio=ratio)
        _one_line(exc, "policy 'async-compression'", "ratio must be >= 1")


def test_compression_ratios_of_one_and_more_are_kept() -> None:
    assert POLICIES["async-compression"](ratio=1).ratio == 1.0
    assert POLICIES["async-compression"](ratio=np.float32(8)).ratio == 8.0
    assert POLICIES["system-prompt-compression"](ratio=1.0).ratio == 1.0


@pytest.mark.parametrize("fraction", [1.5, 1.0000001, 0, -0.25], ids=repr)
def test_prefix_cache_fraction_must_be_a_fraction(fraction: float) -> None:
    with pytest.raises(PolicyError) as exc:
        make_policy("prefix-sharing", cache_fraction=fraction)
    _one_line(exc, "policy 'prefix-sharing'", "cache_fraction must be in (0, 1]")


def test_prefix_cache_fraction_of_one_is_the_whole_budget() -> None:
    assert make_policy("prefix-sharing", cache_fraction=1).cache_fraction == 1.0


@pytest.mark.parametrize("name", [["host-offload"], {"name": "hbm-only"}], ids=repr)
def test_make_policy_refuses_a_name_that_is_not_a_string(name: object) -> None:
    with pytest.raises(PolicyError) as exc:
        make_policy(name)  # type: ignore[arg-type]
    _one_line(exc, "unknown KV policy")


# ---------------------------------------------------------------------------------------- the role-split seam
def test_role_splitting_is_a_protocol() -> None:
    """pd-disaggregation declares the contract the serving system checks; the base policy does not split."""
    assert isinstance(make_policy("pd-disaggregation"), SplitsRoles)
    assert not any(isinstance(cls(), SplitsRoles) for name, cls in POLICIES.items() if name != "pd-disaggregation")


def test_a_policy_of_ones_own_that_splits_roles_is_served_by_role() -> None:
    class OnePrefillOneDecode(KVPolicy):
        name = "split-test"

        def role_counts(self, instances: int) -> dict[str, int]:
            return {"prefill": 1, "decode": 1}

        def instance_policy(self, role: str) -> KVPolicy:
            return KVPolicy()

    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    system = ServingSystem("hgx-h100-8", reqs, OnePrefillOneDecode())
    assert [i.role for i in system.instances] == ["prefill", "decode"]


def test_policy_params_with_a_policy_object_are_refused() -> None:
    """Parameters go to a policy made by name; an object given with them would silently run without them."""
    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    with pytest.raises(ServingError, match="policy_params are for a policy given by name"):
        ServingSystem("hgx-h100-8", reqs, make_policy("host-offload"), policy_params={"prefetch_depth": 2})


def test_kv_layout_takes_a_numpy_page_size_and_refuses_a_fractional_one() -> None:
    model = get_model("Llama-3-8B")
    assert KVLayout(model, page_tokens=np.int64(32)).page_tokens == 32
    assert type(KVLayout(model, page_tokens=np.int64(32)).page_tokens) is int
    with pytest.raises(KVConfigError, match="page_tokens"):
        KVLayout(model, page_tokens=16.5)


def test_half_of_the_role_splitting_contract_is_one_line() -> None:
    """A policy with role_counts but no instance_policy is a mistake, not a colocated policy."""
    class HalfSplit(KVPolicy):
        name = "half-split"

        def role_counts(self, instances: int) -> dict[str, int]:
            return {"prefill": 1, "decode": 1}

    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    with pytest.raises(ServingError, match="only one of role_counts and instance_policy"):
        ServingSystem("hgx-h100-8", reqs, HalfSplit())


@pytest.mark.parametrize("check", [check_bytes, check_seconds, check_positive], ids=lambda f: f.__name__)
def test_units_helpers_refuse_a_fraction_past_a_float_in_one_line(check: object) -> None:
    with pytest.raises(ScenarioError) as exc:
        check(Fraction(10**400, 3), "field")  # type: ignore[operator]
    _one_line(exc, "field", "beyond 1e308")


def test_counts_refuse_a_fraction_past_a_float_in_one_line() -> None:
    with pytest.raises(WorkloadError, match="^instances is more than 2"):
        check_count(Fraction(10**400, 3), "instances")


# ---------------------------------------------------------------------------------------- kinds at the boundary
KIND_CASES = [
    ("model", 42, "model"), ("model", None, "model"),
    ("weight_dtype", 16, "weight_dtype"), ("kv_dtype", ["bf16"], "kv_dtype"), ("compute_dtype", 42, "compute_dtype"),
    ("kv_dtype", "fp3", "kv_dtype"), ("weight_dtype", "fp3", "weight_dtype"),
    ("gpus", 3.5, "gpus"), ("gpus", "gpu0", "gpus"), ("gpus", (0, 1), "gpus"), ("gpus", ["gpu0", None], "gpus"),
    ("coalesce", "no", "coalesce"), ("coalesce", 0, "coalesce"), ("coalesce", None, "coalesce"),
]


@pytest.mark.parametrize(("field", "value", "name"), KIND_CASES, ids=lambda x: repr(x))
def test_serving_config_checks_the_kind_of_names_flags_and_lists(field: str, value: object, name: str) -> None:
    with pytest.raises(WorkloadError) as exc:
        ServingConfig(**{field: value})
    _one_line(exc, name)


@pytest.mark.parametrize(("field", "value", "name"), [c for c in KIND_CASES if c[0] in ("model", "gpus", "coalesce")],
                         ids=lambda x: repr(x))
def test_serve_overrides_of_the_wrong_kind_are_one_line(field: str, value: object, name: str) -> None:
    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    with pytest.raises(ServingError) as exc:
        serve("h100-1", reqs, **{field: value})
    _one_line(exc, name)


def test_an_unknown_compute_dtype_names_the_option() -> None:
    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    with pytest.raises(ServingError) as exc:
        serve("h100-1", reqs, compute_dtype="fp3")
    _one_line(exc, "compute_dtype", "fp3")


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"topology": 42}, "topology"), ({"policy": 42}, "policy"), ({"config": {"tp": 2}}, "config"),
    ({"policy_params": [("prefetch_depth", 2)]}, "policy_params"),
], ids=lambda x: repr(x))
def test_serving_system_arguments_of_the_wrong_kind_are_one_line(kwargs: dict, name: str) -> None:
    reqs = poisson_requests(10.0, 3, prompt_tokens=16, output_tokens=4)
    args = {"topology": "h100-1", "policy": "hbm-only", **kwargs}
    with pytest.raises(ServingError) as exc:
        ServingSystem(args.pop("topology"), reqs, args.pop("policy"), **args)
    _one_line(exc, name)


def test_names_flags_and_lists_of_the_right_kind_are_kept() -> None:
    cfg = ServingConfig(gpus=["gpu0", np.str_("gpu1")], coalesce=np.bool_(False), model=get_model("Llama-3-8B"))
    assert cfg.gpus == ("gpu0", "gpu1") and all(type(g) is str for g in cfg.gpus)
    assert cfg.coalesce is False
    hash(cfg)  # a frozen config stays hashable: a list of GPUs is kept as a tuple


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"model": "Llama-3-8B"}, "model"), ({"kv_dtype": 8}, "kv_dtype"), ({"tp": 2.5}, "tensor-parallel degree"),
    ({"tp": "2"}, "tensor-parallel degree"), ({"quant_group": -1}, "quant_group"),
], ids=lambda x: repr(x))
def test_kv_layout_checks_its_arguments(kwargs: dict, name: str) -> None:
    args = {"model": get_model("Llama-3-8B"), **kwargs}
    with pytest.raises(KVConfigError if name != "kv_dtype" else WorkloadError) as exc:
        KVLayout(**args)
    _one_line(exc, name)


def test_kv_layout_takes_a_whole_float_tp_as_an_int() -> None:
    layout = KVLayout(get_model("Llama-3-8B"), tp=2.0)
    assert layout.tp == 2 and type(layout.tp) is int
