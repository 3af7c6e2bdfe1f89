"""The two tables of docs/weight_sync.md, from a results store that holds a `fabricsim sweep weight_sync` run.

    fabricsim sweep weight_sync --store /tmp/ws && fabricsim plot weight_sync --store /tmp/ws --out /tmp/ws-plots
    python docs/figures/weight_sync/tables.py /tmp/ws
"""

from __future__ import annotations

import glob
import sys

import pandas as pd

LAYOUTS = ["colocated", "split-4+4", "nodes-2+2"]
MODELS = ["Llama-3-8B", "Qwen3-30B-A3B", "Llama-3-70B", "Qwen3-235B-A22B"]
COLUMNS = ["nccl-broadcast", "cuda-ipc-buckets", "host-staged", "rdma-p2p", "delta:rdma-p2p",
           "shared-pool:pull-on-publish", "shared-pool:zero-copy"]


def main(store: str) -> None:
    df = pd.concat(pd.read_parquet(p) for p in sorted(glob.glob(f"{store}/weight_sync/*.parquet")))
    base = df[(df["source"] == "sim") & df["decode_steps"].isna()]
    print("calibration:", ", ".join(sorted(base["calibration_id"].unique())))

    def v(lay: str, m: str, s: str, metric: str) -> float | None:
        r = base[(base.layout == lay) & (base.model == m) & (base.strategy == s) & (base.metric == metric)]
        return None if r.empty else float(r["value"].iloc[-1])

    def ok(lay: str, m: str, s: str) -> bool:
        return bool(v(lay, m, s, "feasible"))

    print("\n| layout | model | nccl-broadcast | cuda-ipc-buckets | host-staged | rdma-p2p | delta:rdma-p2p "
          "| pull-on-publish | zero-copy |\n|---|---|---|---|---|---|---|---|---|")
    for lay in LAYOUTS:
        for m in MODELS:
            cells = [f"{v(lay, m, s, 'sync_s'):.3g}" if ok(lay, m, s) else "—" for s in COLUMNS]
            print(f"| {lay} | {m} | " + " | ".join(cells) + " |")

    print("\n| layout | model | zero-copy step ms | local step ms | vs rdma-p2p | vs nccl-broadcast "
          "| vs cuda-ipc-buckets |\n|---|---|---|---|---|---|---|")
    zc = "shared-pool:zero-copy"
    for lay in LAYOUTS[:2]:
        for m in MODELS:
            if not ok(lay, m, zc):
                continue
            step, local = v(lay, m, zc, "decode_step_ms"), v(lay, m, zc, "decode_step_local_ms")
            cells = [f"{(v(lay, m, s, 'stall_s') - v(lay, m, zc, 'stall_s')) / ((step - local) / 1e3):.3g}"
                     if ok(lay, m, s) else "—" for s in ("rdma-p2p", "nccl-broadcast", "cuda-ipc-buckets")]
            print(f"| {lay} | {m} | {step:.3g} | {local:.3g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
