"""`ServingConfig.instances` is None when not said: a policy that splits roles sets the count then, any other
serves 1, and a said count (1 included) is checked against a split's like any other (`serving.role_counts`)."""

from __future__ import annotations

import math

import pytest


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
