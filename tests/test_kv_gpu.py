"""GPU check of the KV page-copy model: host -> HBM page copies, measured beside fabricsim's prediction.

What it measures (pinned host memory, scattered pages, a non-default stream, median of repetitions after a
warm-up, as /work/shared/MEASURING.md asks):
- `per_page_python`: one `copy_` per page issued from Python (what a Python-level swap loop does);
- `per_page_graph`: the same copies captured in a CUDA graph and replayed (no launch cost on the CPU: the
  copy engine's own per-copy cost, close to a C++ `cudaMemcpyAsync` loop);
- `contiguous`: the same bytes as one copy (the best a batched copy can do).
What it predicts: fabricsim's `ce-per-page` and `ce-batched` moves on the calibrated `h100-1` preset, issued
through the serving loop's own `Instance.move`.

Run on a GPU machine: `python tests/test_kv_gpu.py` prints one JSON row per page size;
`pytest -m gpu tests/test_kv_gpu.py` asserts the model's bounds.
"""

from __future__ import annotations

import json
import statistics

import pytest

PAGE_BYTES = (8 << 10, 64 << 10, 512 << 10)
PAGES = 2048
BYTES_PER_TOKEN_PER_LAYER = 4096  # Llama-3-8B: 2 x 8 KV heads x 128 dims x 2 bytes; a page is one layer's


def _median_s(fn, reps: int = 7) -> float:
    import torch

    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = torch.cuda.current_stream()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure(page_bytes: int, pages: int = PAGES, seed: int = 0) -> dict[str, float]:
    """Time `pages` scattered page copies host -> GPU three ways (see the module docstring)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pool = 4 * pages  # pages are picked at random from a 4x larger pinned pool: scattered, not a stream
    src = torch.randint(0, 255, (pool * page_bytes,), dtype=torch.uint8, generator=g).pin_memory()
    dst = torch.empty(pool * page_bytes, dtype=torch.uint8, device="cuda")
    src_idx = torch.randperm(pool, generator=g)[:pages].tolist()
    dst_idx = torch.randperm(pool, generator=g)[:pages].tolist()
    srcs = [src[i * page_bytes:(i + 1) * page_bytes] for i in src_idx]
    dsts = [dst[i * page_bytes:(i + 1) * page_bytes] for i in dst_idx]
    flat_src = src[: pages * page_bytes]
    flat_dst = dst[: pages * page_bytes]
    stream = torch.cuda.Stream()
    out: dict[str, float] = {"page_bytes": float(page_bytes), "pages": float(pages)}
    with torch.cuda.stream(stream):
        def per_page() -> None:
            for d, s in zip(dsts, srcs, strict=True):
                d.copy_(s, non_blocking=True)

        out["per_page_python_s"] = _median_s(per_page)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            per_page()
        out["per_page_graph_s"] = _median_s(graph.replay)
        out["contiguous_s"] = _median_s(lambda: flat_dst.copy_(flat_src, non_blocking=True))
    return out


def predict(page_bytes: int, pages: int, mechanism: str) -> float:
    """fabricsim's time for the same move on the calibrated h100-1 preset, through `Instance.move`."""
    from fabricsim.workloads.requests import Request
    from fabricsim.workloads.serving import ServingConfig, ServingSystem

    cfg = ServingConfig(model="Llama-3-8B", page_tokens=page_bytes // BYTES_PER_TOKEN_PER_LAYER,
                        mechanism=mechanism)
    system = ServingSystem("h100-1", [Request(0, 0.0, 1, 1)], "hbm-only", cfg)
    inst = system.instances[0]
    assert inst.layout.page_bytes == page_bytes
    inst.move("host0", "gpu0", page_bytes * pages, pages, [], "probe")
    return system.sim.run().makespan_s


def rows() -> list[dict[str, float]]:
    out = []
    for pb in PAGE_BYTES:
        row = measure(pb)
        row["predicted_ce_per_page_s"] = predict(pb, PAGES, "ce-per-page")
        row["predicted_ce_batched_s"] = predict(pb, PAGES, "ce-batched")
        out.append(row)
    return out


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_page_copies_against_the_model():
    for row in rows():
        # one copy of all pages is never slower than copying them one by one
        assert row["contiguous_s"] <= row["per_page_graph_s"] * 1.05
        # the batched model is the contiguous copy's rate at page granularity: within 25% of it
        assert row["predicted_ce_batched_s"] == pytest.approx(row["contiguous_s"], rel=0.25)
        # the per-page model lies between the graph-replayed copies and the Python loop
        assert row["per_page_graph_s"] * 0.75 <= row["predicted_ce_per_page_s"] <= row["per_page_python_s"] * 1.25


if __name__ == "__main__":
    import torch

    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    for r in rows():
        print(json.dumps({**info, **r}))
