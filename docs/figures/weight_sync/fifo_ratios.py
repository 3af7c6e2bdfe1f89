"""What the `h200x8` profile's copy engines (FIFO: a GPU's copies in turn) do to each strategy on the study's two
`hgx-h200-8` layouts: sync time with the bundled profile over sync time on the datasheet preset, per model.

    python docs/figures/weight_sync/fifo_ratios.py
"""

from __future__ import annotations

from fabricsim.studies.weight_sync import LAYOUTS, MODELS, _sync

STRATEGIES = ["nccl-broadcast", "rdma-p2p", "shared-pool:pull-on-publish"]


def main() -> None:
    for strategy in STRATEGIES:
        ratios = []
        for layout in (name for name, (topo, *_) in LAYOUTS.items() if topo == "hgx-h200-8"):
            for model in MODELS:
                calibrated, _ = _sync(layout, model, strategy, "default")
                datasheet, _ = _sync(layout, model, strategy, None)
                if calibrated.feasible and datasheet.feasible:
                    ratios.append((layout, model, calibrated.sync_s / datasheet.sync_s))
        lo, hi = min(r for *_, r in ratios), max(r for *_, r in ratios)
        print(f"{strategy}: {lo:.2f}-{hi:.2f}x over {len(ratios)} configurations: "
              + ", ".join(f"{layout} {model} {r:.2f}" for layout, model, r in ratios))


if __name__ == "__main__":
    main()
