"""Code that really runs on GPUs: Triton transfer kernels and the CUDA-IPC versioned weight pool.

One module per kernel, each with a plain torch reference beside it:

- `kernels.bulk_copy`: SM-driven copy with 16-byte accesses (local, peer, pinned host);
- `kernels.paged_kv`: paged KV-cache gather/scatter through a block table;
- `kernels.bucket`: pack/unpack a list of tensors into one byte bucket, one launch each;
- `kernels.fp8_cast`: bf16 -> fp8 e4m3 with per-tensor or per-block scales, and back;
- `kernels.seqlock`: the pool's versioning protocol, pure Python (tested on the CPU);
- `kernels.weightpool`: `WeightPool` / `PoolReader` over CUDA IPC;
- `kernels.weightpool_torture`: the multi-process torture test of the pool (`python -m ...`);
- `kernels.relay`: a pipelined chain of pools: rollout GPUs serve the version they hold onward, chunk by chunk;
- `kernels.relay_torture`: the multi-process torture test of the relay (`python -m ...`).

docs/kernels.md has the measured numbers.

Importing this package imports neither torch nor Triton: each module imports torch at its top and Triton
only when a kernel is first launched, so the torch references work where Triton is missing.
"""

from __future__ import annotations

__all__ = ["bucket", "bulk_copy", "fp8_cast", "paged_kv", "relay", "relay_torture", "seqlock", "weightpool",
           "weightpool_torture"]
