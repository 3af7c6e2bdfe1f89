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
                    "str": isinstance(d, str), "time": number and f.name.endswith("_s")}[kind]:
                out.append((knobs, f.name))
    return out


def _id(case: tuple[type[Knobs], str]) -> str:
    return f"{case[0].__name__}.{case[1]}"


NUMBERS, SIZES, SWITCHES, NAMES, TIMES = (_fields(k) for k in ("number", "bytes", "bool", "str", "time"))


def test_every_registered_strategy_has_knobs_of_each_kind_to_check():
    """The parametrizations below are over something: a registry that grew a class would be checked too."""
    assert len(KNOB_CLASSES) == len(STRATEGIES) >= 5
    assert NUMBERS and SIZES and SWITCHES and NAMES and TIMES


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
    ("1GiB", "expected a number"), (True, "expected a number, got True"), (math.nan, "expected a finite number"),
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
    with pytest.raises(WorkloadError, match=rf"{name}: expected a number of bytes, got '1GiB' \(sizes as text such as "
                                            rf"'1GiB' are read by get\(name, {name}=\.\.\.\) and Knobs\.replace"):
        knobs(**{name: "1GiB"})
    assert getattr(knobs().replace(**{name: "2GiB"}), name) == 2 * 2**30  # (within rdma-p2p's watermark)


@pytest.mark.parametrize("case", TIMES, ids=_id)
def test_a_time_knob_takes_a_unit_and_means_the_number_written(case):
    """Sizes took units (`bucket_bytes=1GiB`), times only bare seconds: `call_latency_s=20us` was refused. Read by
    the scenario files' parser, scaled in decimal: '20us' is the float 2e-05 itself (20 * 1e-6 is not)."""
    knobs, name = case
    for text, seconds in [("20us", 2e-5), ("20µs", 2e-5), ("1.5ms", 1.5e-3), ("2s", 2.0), ("300ns", 3e-7),
                          (" 20 us", 2e-5), ("0.1us", 1e-7)]:
        value = getattr(knobs().replace(**{name: text}), name)
        assert type(value) is float and value.hex() == seconds.hex(), (text, value)


@pytest.mark.parametrize("case", TIMES, ids=_id)
@pytest.mark.parametrize("bad, says", [
    ("5parsec", r"cannot read time '5parsec': unknown unit 'parsec' \(use s, ms, us, µs, ns\)"),
    ("20 Us s", r"cannot read time"), ("-5us", r"time must be a finite number >= 0, got '-5us'"),
    ("-1", r"expected a number >= 0, got -1\.0"), ("nan", r"expected a finite number, got 'nan'"),
    ("inf", r"expected a finite number, got 'inf'"), ("1e999us", "time must be a finite number >= 0"),
    ("2e9s", r"time '2e9s' is beyond 10\^9 s")])
def test_a_time_knob_refuses_what_is_no_time_in_one_line_naming_the_knob(case, bad, says):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: {says}") as err:
        knobs().replace(**{name: bad})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", TIMES, ids=_id)
def test_a_time_as_text_is_read_by_get_and_replace_not_by_the_constructor(case):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: expected a number of seconds, got '20us' "
                                            rf"\(times as text such as '20us' are read by get\(name, {name}=\.\.\.\)"):
        knobs(**{name: "20us"})


def test_a_time_knob_with_a_unit_on_the_command_line(capsys):
    """`sync --knob call_latency_s=20us` is the run of `call_latency_s=2e-5`; a unit it does not know, or a
    negative time, is exit status 2 and one line naming the knob."""
    import json

    from fabricsim.cli import main

    argv = ["sync", "Llama-3-8B", "nccl-broadcast", "--samples", "0", "--json", "--knob"]
    outs = []
    for value in ("20us", "2e-5"):
        assert main([*argv, f"call_latency_s={value}"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1]
    for value, says in [("20parsec", "cannot read time '20parsec': unknown unit 'parsec'"),
                        ("-20us", "time must be a finite number >= 0, got '-20us'")]:
        assert main([*argv, f"call_latency_s={value}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fabricsim: error: NcclBroadcastKnobs: call_latency_s: {says}"), err
        assert err.count("\n") == 1, err


@pytest.mark.parametrize("case", SWITCHES, ids=_id)
@pytest.mark.parametrize("bad", [1, None])
def test_a_switch_built_directly_takes_only_a_bool(case, bad):
    knobs, name = case
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: expected true or false"):
        knobs(**{name: bad})
    with pytest.raises(WorkloadError, match=rf"^{knobs.__name__}: {name}: expected True or False, got 'true' "
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
    with pytest.raises(WorkloadError, match=r"^RdmaP2PKnobs: watermark_bytes: expected a number of bytes"):
        RdmaP2PKnobs(watermark_bytes="4GiB")


def test_shared_pool_s_own_mode_check_still_runs_after_the_types():
    """SharedPoolKnobs has its own `__post_init__` (it calls the base's first): the types run before its check."""
    from fabricsim.workloads.weightsync.shared_pool import SharedPoolKnobs

    with pytest.raises(WorkloadError, match=r"unknown shared-pool mode 'nope'"):
        SharedPoolKnobs(mode="nope")
    with pytest.raises(WorkloadError, match=r"^SharedPoolKnobs: chunk_bytes: expected a finite number, got nan"):
        SharedPoolKnobs(chunk_bytes=math.nan)
