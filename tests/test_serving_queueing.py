"""Queueing checks of the serving loop: Little's law, and M/M/1 for a single-server configuration."""

from __future__ import annotations

import numpy as np
import pytest

from fabricsim.hwmodels import presets
from fabricsim.workloads.decode import DecodeBatch, decode_work
from fabricsim.workloads.kvsize import KVLayout
from fabricsim.workloads.models import get
from fabricsim.workloads.requests import poisson_requests
from fabricsim.workloads.serving import serve

MODEL = get("Llama-3-8B")


def test_littles_law_in_steady_state():
    rate = 8.0
    reqs = poisson_requests(rate, 3000, prompt_tokens=256, output_tokens=64, seed=11, prompt_dist="uniform",
                            output_dist="geometric")
    res = serve("h100-1", reqs, "hbm-only", model=MODEL, max_batch_seqs=64)
    arrivals = np.array([s.req.arrival_s for s in res.seqs])
    t0, t1 = arrivals[len(arrivals) // 10], arrivals[-len(arrivals) // 10]  # drop warm-up and drain
    inside = (arrivals >= t0) & (arrivals < t1)
    lam = inside.sum() / (t1 - t0)
    W = res.response_s[inside].mean()
    in_system = res.time_in_system(t0, t1)  # the loop's own count of requests in the system, time-averaged
    assert in_system == pytest.approx(lam * W, rel=0.03)
    assert lam == pytest.approx(rate, rel=0.05)
    assert in_system > 2  # a real queue, not an idle server


@pytest.mark.slow
def test_single_server_matches_mm1():
    """Batch size 1, one-token prompts and geometric output lengths: service ~ exponential, M/M/1 applies."""
    topo = presets.get("h100-1")
    m = 50  # mean output tokens
    w = decode_work(MODEL, DecodeBatch(1, 0), 1)
    gpu = topo.gpu("gpu0")
    t_step = max(w.weight_bytes / gpu.hbm_Bps, w.flops / gpu.flops_per_s("bf16"))
    kv = KVLayout(MODEL).bytes_per_token
    mu = 1 / (m * t_step)
    lam = 0.3 * mu
    reqs = poisson_requests(lam, 10_000, prompt_tokens=1, output_tokens=m, output_dist="geometric", seed=0)
    res = serve(topo, reqs, "hbm-only", model=MODEL, max_batch_seqs=1)
    seqs = res.seqs
    # Exact: a FIFO single server (Lindley): each request starts when it arrives or when the previous one leaves.
    finish_prev = 0.0
    for s in seqs:
        assert s.admitted_s == pytest.approx(max(s.req.arrival_s, finish_prev), rel=1e-9, abs=1e-12)
        n = s.req.output_tokens  # n steps, each reading the weights and writing one token's KV; step g reads g tokens
        service = (n * (w.weight_bytes + kv) + kv * n * (n - 1) / 2) / gpu.hbm_Bps
        assert s.finish_s - s.admitted_s == pytest.approx(service, rel=1e-9)
        finish_prev = s.finish_s
    # Statistical (fixed seed, so deterministic): mean response time of M/M/1 is 1 / (mu - lambda).
    assert res.response_s.mean() == pytest.approx(1 / (mu - lam), rel=0.05)
