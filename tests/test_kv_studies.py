"""The KV studies load, have the grids their docs describe, and a cheap point of each runs end to end."""

from __future__ import annotations

import pytest

from fabricsim.harness.study import load_study


@pytest.mark.parametrize("name, points", [("kv_offload", 48), ("prefix_sharing", 27), ("pd_disaggregation", 24)])
def test_study_grid(name, points):
    study = load_study(name)
    assert len(study.points()) == points
    assert study.figures


def test_prefix_sharing_point_runs():
    study = load_study("prefix_sharing")
    m = study.evaluate({"topology": "h100-1", "sharing": "read-once", "prefix_tokens": 1024, "batch": 16})
    assert m["batch_throughput_tok_s"][0] > 0
    assert m["kv_bytes_read_per_token"][1] == "B/token"


def test_kv_offload_point_runs():
    study = load_study("kv_offload")
    m = study.evaluate({"topology": "h100-1", "context": 4096, "policy": "hbm-only", "page_tokens": 16,
                        "mechanism": "ce-batched"})
    assert m["feasible"][0] == 1.0 and m["throughput_tok_s"][0] > 0
