"""KV policies: registry, the bytes each one keeps in HBM and reads per step, and their end-to-end effects."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.workloads.kvpolicies import StepItem, make_policy, names
from fabricsim.workloads.kvpolicies.base import Seq
from fabricsim.workloads.kvpolicies.prefix import _Entry, prefix_read_factor
from fabricsim.workloads.kvsize import KVLayout
from fabricsim.workloads.models import get
from fabricsim.workloads.requests import Request, poisson_requests
from fabricsim.workloads.serving import ServingConfig, ServingSystem, serve

MODEL = get("Llama-3-8B")


def _instance(policy: str, **params):
    sys = ServingSystem("h100-1", [Request(0, 0.0, 10, 2)], policy, ServingConfig(model=MODEL),
                        policy_params=params)
    return sys.instances[0]


def test_registry():
    assert set(names()) == {"hbm-only", "host-offload", "topk-paging", "prefix-sharing",
                            "system-prompt-compression", "async-compression", "pd-disaggregation"}
    assert make_policy("host-offload", prefetch_depth=2).prefetch_depth == 2


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 64), prefix=st.integers(16, 8192), suffix=st.integers(1, 4096))
def test_prefix_sharing_reads_once_per_batch(b, prefix, suffix):
    """b sequences of P shared + S own tokens: b (P + S) bytes read without sharing, P + b S with it."""
    shared, plain = _instance("prefix-sharing"), _instance("hbm-only")
    shared.policy.cache["p"] = _Entry(prefix, refs=b, where="hbm")
    req = Request(0, 0.0, prefix + suffix, 10, "p", prefix)
    seqs = [Seq(req, shared_tokens=prefix, shared_key="p") for _ in range(b)]
    items = [StepItem(s, prefix + suffix, 1) for s in seqs]
    with_sharing = shared._work(items).kv_read_bytes
    without = plain._work([StepItem(Seq(req), prefix + suffix, 1) for _ in range(b)]).kv_read_bytes
    assert without / with_sharing == pytest.approx(prefix_read_factor(b, prefix, suffix), rel=1e-12)
    # per-sequence reads (one stored copy, read by every sequence) read as much as no sharing
    per_seq = _instance("prefix-sharing", reads="per-sequence")
    per_seq.policy.cache["p"] = _Entry(prefix, refs=b, where="hbm")
    assert per_seq._work(items).kv_read_bytes == pytest.approx(without, rel=1e-12)


def test_prefix_sharing_end_to_end():
    """A warm-up request caches the prefix; the batch after it hits, skips the prefix prefill, reads less."""
    P, S, b = 3000, 100, 16
    reqs = [Request(0, 0.0, P + S, 4, "sys", P)] + [Request(i, 1.0, P + S, 64, "sys", P) for i in range(1, b + 1)]
    base = serve("h100-1", reqs, "hbm-only", model=MODEL)
    hyd = serve("h100-1", reqs, "prefix-sharing", model=MODEL)
    seq = serve("h100-1", reqs, "prefix-sharing", model=MODEL, policy_params={"reads": "per-sequence"})
    pol = hyd.system.instances[0].policy
    assert pol.hits == b and pol.misses == 1
    m_base, m_hyd, m_seq = base.metrics(), hyd.metrics(), seq.metrics()
    assert m_hyd["kv_bytes_read_per_token"] < m_seq["kv_bytes_read_per_token"] / 5
    assert m_hyd["tpot_p50_s"] < m_base["tpot_p50_s"]
    assert m_hyd["ttft_p50_s"] < m_base["ttft_p50_s"] / 5  # prefix prefill skipped
    assert m_hyd["hbm_occupancy_peak"] < m_base["hbm_occupancy_peak"]


def test_prefix_cache_evicts_lru_to_host_and_fetches_back():
    # Two prefixes alternate; the cache holds one: each switch evicts the other to host and fetches it back.
    P = 4000
    reqs = [Request(i, float(i), P + 10, 2, f"p{i % 2}", P) for i in range(6)]
    lay_bytes = 4010 * MODEL.kv_bytes_per_token()
    res = serve("h100-1", reqs, "prefix-sharing", model=MODEL, kv_budget_bytes=lay_bytes * 3,
                policy_params={"cache_fraction": 0.4})
    pol = res.system.instances[0].policy
    moved = res.bytes_moved()
    assert pol.evictions >= 3
    assert moved["kv-prefix-evict"] > 0 and moved["kv-prefix-fetch"] > 0


def test_host_offload_holds_only_buffers_in_hbm():
    inst = _instance("host-offload", prefetch_depth=1)
    s = Seq(Request(0, 0.0, 1000, 10))
    full = inst.layout.bytes_per_gpu(1000)
    assert inst.policy.hbm_bytes(s, 1000) == pytest.approx(full * 2 / inst.cfg.layer_groups)
    # so under a tight budget it runs the whole batch at once, where hbm-only must queue
    reqs = poisson_requests(float("inf"), 32, prompt_tokens=2000, output_tokens=16, seed=0)
    tight = dict(model=MODEL, kv_budget_bytes=3e9, layer_groups=8)  # buffers: 2 of 8 groups
    off, hbm = serve("h100-1", reqs, "host-offload", **tight).metrics(), serve("h100-1", reqs, **tight).metrics()
    assert off["max_batch"] == 32 and off["preemptions"] == 0
    assert hbm["max_batch"] < 16


def test_topk_paging_footprint_and_reads():
    inst = _instance("topk-paging", stable_fraction=0.75, topk_pages=32)
    pol, lay = inst.policy, inst.layout
    s = Seq(Request(0, 0.0, 8000, 10))
    ctx = 8000
    full = lay.bytes_per_gpu(ctx, paged=False)
    assert pol.read_bytes(s, ctx) == pytest.approx(0.25 * full + 0.75 * lay.bytes_per_gpu(32 * 16, paged=False))
    assert pol.hbm_bytes(s, ctx) < 0.3 * lay.bytes_per_gpu(ctx)
    short = 100  # shorter than K pages: everything stays, nothing is read from host
    assert pol.read_bytes(s, short) == pytest.approx(lay.bytes_per_gpu(short, paged=False))
    reqs = poisson_requests(float("inf"), 16, prompt_tokens=6000, output_tokens=64, seed=0)
    res = serve("h100-1", reqs, "topk-paging", model=MODEL)
    assert res.bytes_moved()["kv-fetch"] > 0  # reranking promotes pages from host


def test_system_prompt_compression():
    P, S = 2000, 200
    inst = _instance("system-prompt-compression", ratio=4.0, dynamic_fraction=0.1)
    pol, lay = inst.policy, inst.layout
    req = Request(0, 0.0, P + S, 10, "sys", P)
    s = Seq(req)
    skip, fetch = pol.on_admit(s)
    assert skip == s.shared_tokens == 1800  # 10% of the prompt is dynamic: recomputed
    assert fetch == pytest.approx(lay.bytes_per_gpu(1800) / 4)  # first use loads the compressed prompt
    assert pol.on_admit(Seq(req))[1] == 0  # later uses find it in HBM
    assert pol.read_bytes(s, P + S) == pytest.approx(lay.bytes_per_gpu(400, paged=False)
                                                     + lay.bytes_per_gpu(1800, paged=False) / 4)
    reqs = poisson_requests(4, 40, prompt_tokens=P + S, output_tokens=32, prefix_tokens=P, seed=0)
    base = serve("h100-1", reqs, "hbm-only", model=MODEL).metrics()
    comp = serve("h100-1", reqs, "system-prompt-compression", model=MODEL).metrics()
    assert comp["ttft_p50_s"] < base["ttft_p50_s"]
    assert comp["kv_bytes_read_per_token"] < base["kv_bytes_read_per_token"] / 2


def test_async_compression_shrinks_long_contexts():
    reqs = poisson_requests(float("inf"), 8, prompt_tokens=1500, output_tokens=400, seed=0)
    base = serve("h100-1", reqs, "hbm-only", model=MODEL)
    comp = serve("h100-1", reqs, "async-compression", model=MODEL,
                 policy_params={"ratio": 4.0, "trigger_tokens": 1024, "window_tokens": 256})
    assert comp.system.instances[0].policy.jobs > 0
    assert any(r.tag == "kv-compress" for r in comp.result.tasks)
    read_b, read_c = base.metrics()["kv_bytes_read_per_token"], comp.metrics()["kv_bytes_read_per_token"]
    assert read_c < 0.5 * read_b
    assert all(s.compressed_src > 0 for s in comp.seqs)


def test_host_memory_is_accounted():
    reqs = poisson_requests(float("inf"), 8, prompt_tokens=3000, output_tokens=8, seed=0)
    off = serve("h100-1", reqs, "host-offload", model=MODEL, token_budget=8 * 3000 + 8)  # one prefill step
    expected = 8 * KVLayout(MODEL).bytes_per_gpu(3000 + 7)  # every sequence's pages, at their longest
    assert off.host_kv_peak() == pytest.approx(expected, rel=0.01)
    assert off.system.sim.memory("host0").timeline[-1][1] == 0  # all freed at the end
    assert serve("h100-1", reqs, "hbm-only", model=MODEL).host_kv_peak() == 0


def test_policies_use_the_serving_instance_only_through_its_protocol() -> None:
    """The seam is `ServingInstance`: every `instance.X` a policy touches is a member of the Protocol, and the
    serving loop's real `Instance` has every member (so neither side reaches into the other's internals)."""
    import ast
    import inspect
    from pathlib import Path

    from fabricsim.workloads import kvpolicies
    from fabricsim.workloads.kvpolicies.base import ServingInstance
    from fabricsim.workloads.requests import Request
    from fabricsim.workloads.serving import serve

    members = {n for n in dir(ServingInstance) if not n.startswith("_")} | set(
        inspect.get_annotations(ServingInstance))
    used = set()
    for path in Path(kvpolicies.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name):
                owner = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
                if owner == "instance":
                    used.add(node.attr)
    assert used and used <= members, sorted(used - members)
    res = serve("h100-1", [Request(0, 0.0, 64, 2)], "host-offload", model="Llama-3-8B")
    inst = res.system.instances[0]
    assert all(hasattr(inst, m) for m in members), sorted(m for m in members if not hasattr(inst, m))
