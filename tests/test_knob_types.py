"""Knobs are typed however they are made: every registered strategy's `Knobs` class built directly refuses what
`Knobs.replace` and `weightsync.get` refuse (text, bools, NaN, inf, sizes under a byte, negative numbers), naming
the class and the knob, and takes what they take (`weightsync.base.Knobs.__post_init__`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.weightsync import get
from fabricsim.workloads.weightsync.base import Knobs
from fabricsim.workloads.weightsync.rdma_p2p import RdmaP2PKnobs
from fabricsim.workloads.weightsync.registry import STRATEGIES

KNOB_CLASSES = sorted({cls.Knobs for cls in STRATEGIES.values()}, key=lambda k: k.__name__)


def _fields(kind: str) -> list[tuple[type[Knobs], str]]:
    """(Knobs class, field) for every registered strategy's knobs whose default is of `kind` ('number', 'bool',
    'str', 'bytes')."""
    out = []
    for knobs in KNOB_CLASSES:
        for f in dataclasses.fields(knobs):
            d = f.default
            number = isinstance(d, int | float) and not isinstance(d, bool)
            if {"number": number, "bytes": number and f.name.endswith("bytes"), "bool": isinstance(d, bool),
                    "str": isinstance(d, str)}[kind]:
                out.append((knobs, f.name))
    return out


def _id(case: tuple[type[Knobs], str]) -> str:
    return f"{case[0].__name__}.{case[1]}"


NUMBERS, SIZES, SWITCHES, NAMES = (_fields(k) for k in ("number", "bytes", "bool", "str"))


def test_every_registered_strategy_has_knobs_of_each_kind_to_check():
    """The parametrizations below are over something: a registry that grew a class would be checked too."""
    assert len(KNOB_CLASSES) == len(STRATEGIES) >= 5
    assert NUMBERS and SIZES and SWITCHES and NAMES


@pytest.mark.parametrize("knobs", KNOB_CLASSES, ids=lambda k: k.__name__)
def test_knobs_built_directly_with_valid_values_still_work(knobs):
    default = knobs()
    same = knobs(**{f.name: getattr(default, f.name) for f in dataclasses.fields(knobs)})
    assert same == default
    changed = {}
    for f in dataclasses.fields(knobs):
        d = f.default
        if isinstance(d, bool):
            changed[f.name] = not d
        elif isinstance(d, int | float) and not f.name.startswith("task"):  # (rdma-p2p's task within its watermark)
            changed[f.name] = d * 2 if d else 1.0
    built = knobs(**changed)
    assert all(getattr(built, k) == v for k, v in changed.items())
    assert built == default.replace(**changed)


@pytest.mark.parametrize("case", NUMBERS, ids=_id)
@pytest.mark.parametrize("bad, says", [
    ("1GiB", "must be a number"), (True, "expected a number, got True"), (math.nan, "expected a finite number"),
    (math.inf, "expected a finite number"), (-1, ">= |at least 1 B")])
def test_a_number_knob_built_directly_refuses_what_replace_refuses(case, bad, says):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}\b.*({says})") as err:
        knobs(**{name: bad})
    assert "\n" not in str(err.value)
    with pytest.raises(WorkloadError, match=rf"{knobs.__name__}: {name}\b"):  # the same refusal from the API
        knobs().replace(**{name: bad}) if not isinstance(bad, str) else knobs().replace(**{name: "x" + bad})


@pytest.mark.parametrize("case", NUMBERS, ids=_id)
def test_text_given_to_the_constructor_says_where_text_is_read(case):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"get\(name, {name}=\.\.\.\) and Knobs\.replace"):
        knobs(**{name: "16"})


@pytest.mark.parametrize("case", SIZES, ids=_id)
@pytest.mark.parametrize("bad", [0, 0.5, -(2**30)])
def test_a_size_under_a_byte_built_directly_is_refused(case, bad):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: expected (a size of at least 1 B|a whole)"):
        knobs(**{name: bad})


@pytest.mark.parametrize("case", SIZES, ids=_id)
def test_a_size_as_text_is_read_by_get_and_replace_not_by_the_constructor(case):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"{name} must be a number of bytes, got '1GiB' \(sizes as text such as "
                                            rf"'1GiB' are read by get\(name, {name}=\.\.\.\) and Knobs\.replace"):
        knobs(**{name: "1GiB"})
    assert getattr(knobs().replace(**{name: "2GiB"}), name) == 2 * 2**30  # (within rdma-p2p's watermark)


@pytest.mark.parametrize("case", SWITCHES, ids=_id)
@pytest.mark.parametrize("bad", [1, None])
def test_a_switch_built_directly_takes_only_a_bool(case, bad):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: expected true or false"):
        knobs(**{name: bad})
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name} must be True or False, got 'true' "
                                            rf"\(switches as text are read by get\(name, {name}=\.\.\.\)"):
        knobs(**{name: "true"})
    assert getattr(knobs().replace(**{name: "true"}), name) is True


@pytest.mark.parametrize("case", NAMES, ids=_id)
def test_a_name_built_directly_takes_only_text(case):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: expected a name, got 3"):
        knobs(**{name: 3})


def test_counts_are_whole_and_numbers_come_back_as_replace_makes_them():
    """16.0 for a count is 16, NumPy scalars are Python numbers: knobs built directly equal those `get` makes."""
    with pytest.raises(WorkloadError, match=r"^RdmaP2PKnobs: outstanding: expected a whole number, got 2\.5$"):
        RdmaP2PKnobs(outstanding=2.5)
    k = RdmaP2PKnobs(outstanding=np.int64(8), max_sim_tasks=2.0, task_bytes=1e9, barrier_s=np.float32(0.5))
    assert type(k.outstanding) is int and type(k.max_sim_tasks) is int and type(k.barrier_s) is float
    assert k == get("rdma-p2p", outstanding=8, max_sim_tasks=2, task_bytes="1GB", barrier_s=0.5).knobs
    assert RdmaP2PKnobs(task_bytes=2**53 + 1, watermark_bytes=2**54).task_bytes == 2**53 + 1  # exactly


def test_rdma_p2p_still_refuses_a_task_larger_than_its_watermark_after_the_types():
    with pytest.raises(WorkloadError, match=r"task_bytes \(8 GiB\) is larger than watermark_bytes \(4 GiB\)"):
        RdmaP2PKnobs(task_bytes=8 * 2**30)
    with pytest.raises(WorkloadError, match=r"task_bytes \(2 GiB\) is larger than watermark_bytes \(1 GiB\)"):
        get("rdma-p2p", watermark_bytes="1GiB", task_bytes="2GiB")
    # text is refused by the type check, before the comparison could raise a raw TypeError
    with pytest.raises(WorkloadError, match=r"^RdmaP2PKnobs: watermark_bytes must be a number of bytes"):
        RdmaP2PKnobs(watermark_bytes="4GiB")


def test_shared_pool_s_own_mode_check_still_runs_after_the_types():
    """SharedPoolKnobs has its own `__post_init__` (no super() call): the base's types run before it all the same."""
    from fabricsim.workloads.weightsync.shared_pool import SharedPoolKnobs

    with pytest.raises(WorkloadError, match=r"unknown shared-pool mode 'nope'"):
        SharedPoolKnobs(mode="nope")
    with pytest.raises(WorkloadError, match=r"^SharedPoolKnobs: chunk_bytes: expected a finite number, got nan"):
        SharedPoolKnobs(chunk_bytes=math.nan)


# ---- ServingConfig.instances: None is "not said", so a said 1 is a count like any other -------------------------
def _reqs():
    from fabricsim.workloads.requests import poisson_requests

    return poisson_requests(10.0, 4, prompt_tokens=256, output_tokens=8, seed=1)


def test_instances_not_said_is_none_and_a_said_count_is_checked_as_a_count():
    from fabricsim.workloads.serving import ServingConfig, ServingError

    assert ServingConfig().instances is None and ServingConfig(instances=None).instances is None
    assert ServingConfig(instances=1) != ServingConfig()  # a 1 that was asked for is told from the default
    assert ServingConfig(instances=4.0).instances == 4 and type(ServingConfig(instances=4.0).instances) is int
    for bad, says in ((0, ">= 1, got 0"), (-2, ">= 1"), (2.5, "whole number >= 1"),
                      (True, "whole number >= 1"), ("2", "whole number >= 1"), (math.nan, "whole number >= 1")):
        with pytest.raises(ServingError, match=rf"^instances must be (a )?{says}"):
            ServingConfig(instances=bad)
    with pytest.raises(ServingError, match=r"^tp x instances is more than"):
        ServingConfig(tp=2**20, instances=2)
    with pytest.raises(ServingError, match=r"^tp must be a whole number"):  # None is instances' only
        ServingConfig(tp=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("split, said", [((1, 1), 1), ((3, 5), 1), ((3, 5), 3)])
def test_a_said_count_that_contradicts_a_split_is_refused_1_included(split, said):
    """`ServingConfig(instances=1)` could not be told from the default 1, so a 1 + 1 split ran 2 instances where 1
    was asked for, without a word; now 1 is refused as 3 was."""
    from fabricsim.workloads.serving import ServingConfig, ServingError, ServingSystem, serve

    p, d = split
    params = {"prefill_instances": p, "decode_instances": d}
    with pytest.raises(ServingError, match=rf"^instances={said} contradicts policy 'pd-disaggregation', whose "
                                           rf"parameters set {p} prefill \+ {d} decode = {p + d} instances"):
        ServingSystem("hgx-h200-8", _reqs(), "pd-disaggregation", ServingConfig(instances=said), policy_params=params)
    with pytest.raises(ServingError, match=rf"^instances={said} contradicts"):  # as an override of `serve` too
        serve("hgx-h200-8", _reqs(), "pd-disaggregation", policy_params=params, instances=said)


def test_a_split_sets_the_count_when_none_is_said_and_takes_its_own_count_said():
    from fabricsim.workloads.serving import ServingConfig, ServingSystem

    params = {"prefill_instances": 3, "decode_instances": 5}
    for cfg in (None, ServingConfig(), ServingConfig(instances=8)):
        system = ServingSystem("hgx-h200-8", _reqs(), "pd-disaggregation", cfg, policy_params=params)
        assert [i.role for i in system.instances] == ["prefill"] * 3 + ["decode"] * 5


@pytest.mark.parametrize("said, n", [(None, 1), (1, 1), (3, 3)])
def test_a_colocated_policy_serves_the_count_said_or_1(said, n):
    from fabricsim.workloads.serving import ServingConfig, ServingSystem

    system = ServingSystem("hgx-h200-8", _reqs(), "hbm-only", ServingConfig(instances=said))
    assert [i.role for i in system.instances] == ["colocated"] * n


def test_serve_builds_its_config_once_and_says_the_split_s_count(monkeypatch, capsys):
    """`fabricsim serve` built the config, then again with the split's count (the default 1 could not carry "not
    given" to `serve`): once now, with the count the flag gave (None when none), and the header and --json say
    the count that ran."""
    import json

    from fabricsim.cli import main
    from fabricsim.workloads import serve_cli, serving

    built: list[serving.ServingConfig] = []

    class Counted(serving.ServingConfig):
        def __post_init__(self) -> None:
            built.append(self)
            super().__post_init__()

    monkeypatch.setattr(serve_cli, "ServingConfig", Counted)
    base = ["serve", "--topology", "hgx-h100-8", "-n", "2", "--rate", "inf", "--prompt-tokens", "64",
            "--output-tokens", "2", "--samples", "0", "--policy", "pd-disaggregation", "--param",
            "prefill_instances=1", "--param", "decode_instances=1"]
    assert main([*base, "--json"]) == 0
    assert len(built) == 1 and built[0].instances is None
    ins = json.loads(capsys.readouterr().out)["inputs"]
    assert ins["instances"] == 2 and ins["roles"] == {"prefill": 1, "decode": 1}
    built.clear()
    assert main([*base, "--instances", "1"]) == 2  # said, and not the split's 2
    _, err = capsys.readouterr()
    assert "--instances 1 contradicts policy 'pd-disaggregation'" in err and "1 prefill + 1 decode = 2" in err
    assert main([*base, "--instances", "2"]) == 0 and "1 prefill + 1 decode instances (tp=1)" in capsys.readouterr()[0]
