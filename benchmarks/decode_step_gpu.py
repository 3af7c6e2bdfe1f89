"""Time a Llama-3-8B-shaped decode step on a real GPU: every linear weight (15.0 GB bf16) read once per step.

Checks the weight term of `fabricsim.workloads.decode` (weight bytes / HBM rate) against cuBLAS GEMMs, eager and
under a CUDA graph (as serving engines run decode). Needs only torch and a GPU with >= 20 GB; prints one JSON
object. Run on a device machine:  python3 benchmarks/decode_step_gpu.py > benchmarks/results/decode-step-<gpu>.json
Recorded: benchmarks/results/decode-step-h100-x1.json (compared with the model in docs/weight_sync.md).
"""

import json

import torch

dev = "cuda"
L = 32
shapes = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]
Ws = [[torch.randn(s, device=dev, dtype=torch.bfloat16) for s in shapes] for _ in range(L)]
lm = torch.randn(128256, 4096, device=dev, dtype=torch.bfloat16)
nbytes = sum(w.numel() * 2 for layer in Ws for w in layer) + lm.numel() * 2
out = {"device": torch.cuda.get_device_name(), "weight_bytes": nbytes, "torch": torch.__version__, "rows": []}
for batch in (1, 16, 64, 256):
    x4 = torch.randn(batch, 4096, device=dev, dtype=torch.bfloat16)
    x14 = torch.randn(batch, 14336, device=dev, dtype=torch.bfloat16)
    outs = {}

    def step(x4: torch.Tensor = x4, x14: torch.Tensor = x14, outs: dict = outs) -> None:
        for layer in Ws:
            for i, W in enumerate(layer):
                outs[i] = (x14 if W.shape[1] == 14336 else x4) @ W.t()
        outs["lm"] = x4 @ lm.t()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
    torch.cuda.synchronize()
    res = {}
    for name, fn in (("eager", step), ("graph", g.replay)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(15):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        times.sort()
        res[name] = times[len(times) // 2]
    out["rows"].append({"batch": batch, **{f"{k}_s": v for k, v in res.items()}})
print(json.dumps(out))
