"""Held-out makespan error of the modelled patterns from committed `report/errors.csv` files: all modelled (what
`summary.json` holds) and the copy-engine + NCCL subset (less the `*-pageable` and `sm-*` patterns), with the
share inside the 90% interval; the same statistics as `fabricsim report` (`validate/fit/report.py` `_stats`).

    python validate/data/subsets.py validate/data/*/report/errors.csv \
        validate/data/h200x1/report-h200x2-profile/errors.csv validate/data/h200x1/*/report/errors.csv
"""

from __future__ import annotations

import sys

import pandas as pd

from fabricsim.validate.fit.report import _stats


def main(paths: list[str]) -> None:
    for path in paths:
        df = pd.read_csv(path)
        if "modelled" not in df:  # a workload report: no copy-suite patterns
            continue
        held = df[(df["split"] == "held-out") & df["modelled"]]
        ce = held[~held["pattern"].str.contains("pageable") & ~held["pattern"].str.startswith("sm")]
        for name, d in (("all modelled", held), ("copy engine + NCCL", ce)):
            s = _stats(d["error"])
            print(f"{path}: {name}: {s['n']} cases, median {100 * s['median']:.1f}%, p90 {100 * s['p90']:.1f}%, "
                  f"inside interval {100 * d['inside'].mean():.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
