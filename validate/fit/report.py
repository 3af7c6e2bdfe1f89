"""`fabricsim report MEASURED [--profile P]`: simulate every measured case and say how far off the model is.

Writes, into one folder published atomically (temporary name, then rename):
- `errors.csv`: one row per case — measured and predicted makespan, relative error, split, pattern;
- `finish_errors.csv`: one row per transfer of each concurrent case — the k-th earliest measured finish time
  (common clock) against the k-th earliest predicted one (equal copies are served in an order that changes
  from one repetition to the next, so copies are compared by rank, not by name);
- `report.md`: error tables per pattern for the calibration and the held-out subsets (makespan and
  per-transfer finish times), the CUDA IPC costs, and for every pattern that misses the aim the
  mechanism the model lacks;
- `pred_vs_meas.png`: predicted against measured makespan, log-log;
- `summary.json`: the headline numbers (the CI guard compares re-simulations against its `ci_bound`).
Measured (source=hw) and simulated (source=sim) rows go to the results store with the same schema.

Error is signed `predicted / measured - 1`; tables show its absolute value's median and 90th percentile.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.calibration import CalibrationProfile, bundled_profile_path, load_profile
from fabricsim.hwmodels.fileio import check_parent_folder, read_text
from fabricsim.hwmodels.intervals import LEVEL, SAMPLES, predict_interval
from fabricsim.hwmodels.presets import DEFAULT_PROFILES
from fabricsim.validate.cases import CALIBRATION, HELD_OUT
from fabricsim.validate.errors import MeasurementError
from fabricsim.validate.measurements import (
    SPLITS,
    Measurements,
    measurements_sha256,
    with_split,
    write_json_atomic,
)

from .imports import load_any
from .simulate import (
    base_topology,
    check_profile_fits,
    collective_params,
    measured_makespan,
    measured_order,
    predicted_order,
    simulate_case,
)

AIM_MEDIAN, AIM_P90 = 0.03, 0.10  # issue 15: held-out median <= 3%, p90 <= 10%
AIM_NCCL = 0.10  # NCCL at >= 64 MiB: every size within 10%
AIM_COVERAGE = (0.85, 0.95)  # share of held-out measured values inside their 90% interval
# Patterns whose mechanism the model does not have: reported, but outside the aim (see MISSING).
NOT_MODELLED_PREFIXES = ("sm-", "h2d-pageable", "d2h-pageable", "sm+ce")
MISSING = {
    "pageable": "pageable host memory is staged by the driver through pinned bounce buffers (a CPU memcpy "
                "pipelined with the DMA); where the profile fitted the `pageable` mechanism its latency, rate and "
                "size curve are the staging's, as one stage (the chunked pipeline and the CPU's other load are not "
                "modelled); without it the model predicts the pinned-memory rate.",
    "sm": "SM-driven copies are load/store kernels whose rate depends on SMs, occupancy and the memory they "
          "touch; where the profile fitted the `sm` mechanism, each class has its own latency, rate and size "
          "curve on the copy engine's links, at the full GPU: the SM share (a copy beside compute gets fewer "
          "SMs) is not modelled yet, nor is an SM copy racing a copy-engine copy (`sm+ce`).",
    "copy+kernel": "the HBM-bound kernel is a roofline flow sharing the HBM cap max-min fairly with copies; "
                   "real arbitration between SM traffic and copy engines is not fair.",
    "nccl": "NCCL switches protocol (LL/LL128/Simple), chunk size and channel count with size and collective. "
            "The profile fits per collective a fixed cost, a bus bandwidth and an efficiency at every calibration "
            "size, interpolated in log(size) for the sizes between; where NCCL's switch falls between two "
            "calibration sizes (a step, not a log-linear ramp) the interpolation misses the held-out size in "
            "between. Next model change: protocol regimes (a fixed cost and a rate per protocol, NCCL's own "
            "size thresholds), or calibrating at every size.",
    "engine": "copies of one class from one GPU: the fitted discipline (fair or FIFO) is one of two extremes; "
              "hardware spreads streams over several copy engines in ways neither captures exactly.",
    "duplex": "H2D and D2H together on one GPU: one per-GPU duplex cap, fitted on one copy each way, shared "
              "max-min fairly; with several copies each way the hardware's split between the directions differs.",
    "host-fan": "every GPU copying to or from host memory at once: one host ceiling per direction, shared max-min "
                "fairly, gets the makespan; the hardware serves the GPUs unequally (on the 8x H200 probe GPUs 0-3 "
                "finish 20% before 4-6), an arbitration between root ports or DMA queues the model lacks.",
    "fan-out": "one GPU copying to several peers: its copy engine serves one copy at a time (FIFO) through its "
               "NVSwitch port; the hardware overlaps the first copies a little, which FIFO does not.",
}


# Lone-copy sweeps by another mechanism: modelled where the profile fitted that mechanism for the class.
MECHANISM_PATTERNS = {"h2d-pageable": ("pageable", "h2d"), "d2h-pageable": ("pageable", "d2h"),
                      "sm-d2d": ("sm", "d2d"), "sm-h2d": ("sm", "h2d"), "sm-d2h": ("sm", "d2h"),
                      "sm-p2p": ("sm", "p2p-nvlink")}


def _modelled(pattern: str, profile: CalibrationProfile | None = None) -> bool:
    if pattern in MECHANISM_PATTERNS:
        mech, cls = MECHANISM_PATTERNS[pattern]
        return profile is not None and cls in profile.mechanisms.get(mech, {})
    return not pattern.startswith(NOT_MODELLED_PREFIXES)


def resolve_profile(m: Measurements, profile: str | Path | None) -> CalibrationProfile:
    if profile is None:
        name = DEFAULT_PROFILES.get(m.preset or "")
        path = bundled_profile_path(name) if name else None
        if path is None or not path.exists():
            raise CalibrationError(f"no bundled profile for preset '{m.preset}'; pass --profile "
                                   "(make one with `fabricsim calibrate`)")
        profile = path
    p = load_profile(profile)
    check_profile_fits(p, m)
    return p


def fitted_split(profile: CalibrationProfile) -> str | None:
    """The split the profile was fitted with (`provenance.split`), or None where it records none."""
    split = (profile.provenance or {}).get("split")
    return split if split in SPLITS else None


def fitted_on_these(profile: CalibrationProfile, m: Measurements) -> bool | None:
    """Whether `profile` was fitted on the very measurements `m` (the same file's bytes, or the same measuring
    run), so that its calibration cases are cases of `m`; None where the profile does not record what it was
    fitted on (a hand-made profile). Case ids alone cannot tell: every full suite has the same ids."""
    prov = profile.provenance or {}
    sha, at = prov.get("measurements_sha256"), prov.get("measured_at")
    if not sha and not at:
        return None
    if sha and Path(m.source).exists() and measurements_sha256([m.source]) == sha:  # (a folder: its measured.json)
        return True
    return bool(at) and at == m.doc.get("created_at")


def judging_split(m: Measurements, profile: CalibrationProfile, asked: str | None = None) -> tuple[str, str | None]:
    """(the split `report` judges `m` with, a note for the report or None).

    Why: a case the profile was fitted on must never count as held out, or the held-out error reads better than
    the model is (judged with the file's split, the bundled h200x2 profile, fitted with today's, had 32 of its
    calibration cases among the "held-out" ones, and nothing said so). So the default is the split the profile was
    fitted with (`provenance.split`); an asked split that would call some of the profile's calibration cases
    held-out is refused, as is any split once the case list changed under the profile (refit it). A profile that
    does not record its split or what it was fitted on is judged with today's case list, and the note says what
    could not be checked. (An unknown split is refused by `with_split`.)"""
    prov = profile.provenance or {}
    fitted = fitted_split(profile)
    split = asked or fitted or "current"
    same, cal = fitted_on_these(profile, m), set(prov.get("calibration_cases") or ())
    if same and cal:
        leaked = sorted(c.id for c in with_split(m, split)[0].split(HELD_OUT) if c.id in cal)
        if leaked and asked is not None and fitted is not None and asked != fitted:
            raise CalibrationError(
                f"profile '{profile.id}' was fitted on these measurements with --split {fitted}; --split {asked} "
                f"would call {len(leaked)} of its {len(cal)} calibration cases held-out (e.g. {leaked[0]}): leave "
                f"--split out (the profile's split is the default)")
        if leaked:
            raise CalibrationError(
                f"profile '{profile.id}' was fitted on these measurements, but {len(leaked)} of its {len(cal)} "
                f"calibration cases are held-out under --split {split} (e.g. {leaked[0]}; the case list changed "
                f"since the fit?): refit the profile with `fabricsim calibrate` before judging with it")
    notes = []
    if fitted is None:
        notes.append(f"profile '{profile.id}' records no split (provenance.split): judged with --split {split}")
    if same is None or (same and not cal):
        notes.append(f"{'it' if notes else f'profile {profile.id!r}'} does not record which measurements or cases it "
                     "was fitted on, so it cannot be checked that no held-out case here was fitted on")
    return split, "; ".join(notes) or None


def compare(m: Measurements, profile: CalibrationProfile,
            samples: int = SAMPLES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-case errors with each prediction's interval, per-transfer finish errors) of every simulable case.

    `samples`: perturbed re-simulations per case for its interval (0: no intervals)."""
    topo = base_topology(m).with_calibration(profile)
    collectives = collective_params(profile)
    rows, frows = [], []
    for c in m.cases:
        if c.group == "ipc":
            continue
        meas = m.measured[c.id]
        measured_s = measured_makespan(c, meas)
        pred = simulate_case(c, topo, collectives)
        nbytes = c.bytes or max(x.bytes for x in c.xfers)
        row = {"case": c.id, "group": c.group, "pattern": c.pattern, "split": c.split, "bytes": nbytes,
               "modelled": _modelled(c.pattern, profile), "spread": _spread(meas), "measured_s": measured_s,
               "predicted_s": pred.makespan_s, "error": pred.makespan_s / measured_s - 1}
        if samples:
            iv = predict_interval(lambda t, c=c: simulate_case(c, t, dict(t.collectives)).makespan_s, topo,
                                  samples=samples)
            row.update({"lo": iv.lo, "hi": iv.hi, "level": iv.level, "inside": iv.lo <= measured_s <= iv.hi})
        rows.append(row)
        if c.group == "copies" and len(meas["finish_s"]) > 1:
            # k-th earliest measured against k-th earliest predicted (see simulate.measured_order)
            fin_m, _ = measured_order(c, meas)
            fin_p, _ = predicted_order(pred)
            for k, (t_meas, t_pred) in enumerate(zip(fin_m, fin_p, strict=True)):
                frows.append({"case": c.id, "transfer": f"rank{k}", "pattern": c.pattern, "split": c.split,
                              "modelled": _modelled(c.pattern, profile), "measured_s": t_meas,
                              "predicted_s": t_pred, "error": t_pred / t_meas - 1})
    return pd.DataFrame(rows), pd.DataFrame(frows)


def _spread(meas: dict[str, Any]) -> float:
    """How much the repetitions of a case disagreed: (slowest - fastest) / median makespan."""
    if "spread_s" in meas:
        return float(meas["spread_s"] / meas["makespan_s"])
    runs = meas.get("all_s")
    return float((max(runs) - min(runs)) / meas["makespan_s"]) if runs else float("nan")


def _stats(err: pd.Series) -> dict[str, float]:
    a = err.abs()
    if a.empty:
        return {"n": 0, "median": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {"n": int(a.size), "median": float(a.median()), "p90": float(np.percentile(a, 90)), "max": float(a.max())}


def summarise(df: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in (CALIBRATION, HELD_OUT):
        d = df[df["split"] == split]
        out[split] = {"modelled": _stats(d[d["modelled"]]["error"]), "all": _stats(d["error"])}
    for group, d in df[df["modelled"]].groupby("group"):
        out[f"{group}_held_out"] = _stats(d[d["split"] == HELD_OUT]["error"])
    out["coverage"] = coverage(df)
    big = df[(df["group"] == "nccl") & (df["bytes"] >= 64 << 20)]
    out["nccl_ge_64MiB"] = {p: _stats(big[big["pattern"] == p]["error"]) for p in sorted(big["pattern"].unique())}
    return out


def coverage(df: pd.DataFrame) -> dict[str, Any]:
    """Share of measured makespans inside their predicted interval, held-out cases (modelled, and all)."""
    if "inside" not in df:
        return {}
    h = df[df["split"] == HELD_OUT]
    out: dict[str, Any] = {"level": LEVEL}
    for which, d in (("modelled", h[h["modelled"]]), ("all", h)):
        out[which] = {"n": int(len(d)), "inside": float(d["inside"].mean()) if len(d) else float("nan")}
    return out


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def pct_beside(x: float, aim: float) -> str:
    """`x` as a percentage with as many decimals as it takes not to print as `aim` unless it equals it: a p90 of
    0.1000016 beside a 10% aim reads `10.0002%`, not `10.0%`, so a miss never reads as a hit (nor the reverse)."""
    if x != x:
        return "–"
    digits = 1
    while digits < 12 and x != aim and f"{100 * x:.{digits}f}" == f"{100 * aim:.{digits}f}":
        digits += 1
    return f"{100 * x:.{digits}f}%"


def vs_aim(x: float, aim: float) -> str:
    """`x` against an upper aim, the comparison said: `10.2% > 10%`, `1.4% ≤ 3%` (see `pct_beside`)."""
    return f"{pct_beside(x, aim)} {'≤' if x <= aim else '>'} {100 * aim:g}%"


def vs_range(x: float, lo: float, hi: float) -> str:
    """`x` against an aim range, the comparison said: `96.0% > 95%`, `80.0% < 85%`, `85% ≤ 92.7% ≤ 95%`."""
    if x < lo:
        return f"{pct_beside(x, lo)} < {100 * lo:g}%"
    if x > hi:
        return f"{pct_beside(x, hi)} > {100 * hi:g}%"
    return f"{100 * lo:g}% ≤ {pct_beside(x, lo if abs(x - lo) < abs(x - hi) else hi)} ≤ {100 * hi:g}%"


def pattern_table(df: pd.DataFrame, fdf: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (pattern, split), d in df.groupby(["pattern", "split"], sort=True):
        s = _stats(d["error"])
        f = fdf[(fdf["pattern"] == pattern) & (fdf["split"] == split)] if not fdf.empty else fdf
        fs = _stats(f["error"]) if not f.empty else _stats(pd.Series(dtype=float))
        rows.append({"pattern": pattern, "split": split, "cases": s["n"], "modelled": bool(d["modelled"].iloc[0]),
                     "makespan abs(err) median": s["median"], "makespan abs(err) p90": s["p90"],
                     "signed median": float(d["error"].median()),
                     "rep. spread median": float(d["spread"].median()),
                     "finish abs(err) median": fs["median"], "finish abs(err) p90": fs["p90"]})
        if "inside" in d:
            rows[-1]["inside interval"] = float(d["inside"].astype(float).mean())
    return pd.DataFrame(rows)


def _md_table(t: pd.DataFrame) -> str:
    cols = list(t.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float) and c not in ("cases",):
                cells.append(_pct(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _missing_for(pattern: str) -> str:
    if pattern.endswith("pageable"):
        return MISSING["pageable"]
    if pattern.startswith("sm"):
        return MISSING["sm"]
    if pattern.startswith("engine"):
        return MISSING["engine"]
    if pattern.startswith("nccl-"):
        return MISSING["nccl"]
    return MISSING.get(pattern, "not explained yet: look at the per-transfer finish times of its cases")


def _group_rows(df: pd.DataFrame) -> list[str]:
    lines = ["| group, split | cases | makespan abs(err) median | p90 | max |", "|---|---|---|---|---|"]
    for (group, split), d in df[df["modelled"]].groupby(["group", "split"], sort=True):
        s = _stats(d["error"])
        lines.append(f"| {group}, {split} | {s['n']} | {_pct(s['median'])} | {_pct(s['p90'])} | {_pct(s['max'])} |")
    return lines


def _split_lines(summary: dict[str, Any], profile: CalibrationProfile) -> list[str]:
    moved = summary.get("split_changed_from_file") or []
    theirs = f" Profile `{profile.id}` was fitted with this split." if fitted_split(profile) == summary["split"] else ""
    note = [f"Note: {summary['split_note']}.", ""] if summary.get("split_note") else []
    if summary.get("split") == "file":
        said = "Split: as recorded in the measurement file."
    elif not moved:
        said = "Split: today's case list (`validate/cases.py`), the same as recorded in the measurement file."
    else:
        said = (f"Split: today's case list (`validate/cases.py`), applied after measuring: {len(moved)} cases differ "
                f"from the split recorded in the file and were judged by today's: "
                f"{', '.join(f'`{x}`' for x in moved)}.")
    return [said + theirs, "", *note]


def render_markdown(m: Measurements, profile: CalibrationProfile, df: pd.DataFrame, fdf: pd.DataFrame,
                    summary: dict[str, Any]) -> str:
    mach = m.machine
    lines = [f"# Validation report: {mach.get('kind') or m.preset} ({mach.get('gpus')}x {mach.get('gpu_name')})", "",
             f"Measured {m.doc.get('created_at', '')[:19]} (suite {m.doc.get('suite')}, torch {mach.get('torch')}, "
             f"CUDA {mach.get('cuda')}), simulated on preset `{m.preset}` with profile `{profile.id}`.", "",
             "Error = predicted / measured - 1. *Modelled* patterns are the ones the model claims to cover (SM-driven "
             "and pageable copies where the profile fitted that mechanism); the others are shown with the mechanism "
             "the model lacks.", "",
             *_split_lines(summary, profile),
             *([f"Note: {summary['profile_note']}.", ""] if summary.get("profile_note") else []),
             "## Headline", "",
             "| subset | cases | makespan abs(err) median | p90 | max |", "|---|---|---|---|---|"]
    for split in (CALIBRATION, HELD_OUT):
        for which in ("modelled", "all"):
            s = summary[split][which]
            lines.append(f"| {split}, {which} | {s['n']} | {_pct(s['median'])} | {_pct(s['p90'])} | "
                         f"{_pct(s['max'])} |")
    h = summary[HELD_OUT]["modelled"]
    ok = h["n"] > 0 and h["median"] <= AIM_MEDIAN and h["p90"] <= AIM_P90
    lines += ["", f"Aim (held-out, modelled): median {vs_aim(h['median'], AIM_MEDIAN)}, p90 "
                  f"{vs_aim(h['p90'], AIM_P90)} — **{'met' if ok else 'missed'}**. CI bound: median ≤ "
                  f"{_pct(summary['ci_bound']['median'])}, p90 ≤ {_pct(summary['ci_bound']['p90'])}.", ""]
    cov = summary.get("coverage") or {}
    if cov:
        lo, hi = AIM_COVERAGE
        cm, ca = cov["modelled"], cov["all"]
        met = lo <= cm["inside"] <= hi
        lines += [f"Prediction intervals ({cov['level']:.0%}, sampled from the profile's parameter spreads): "
                  f"{_pct(cm['inside'])} of {cm['n']} held-out modelled cases measured inside their interval "
                  f"({_pct(ca['inside'])} of all {ca['n']} held-out); aim {100 * lo:g}%-{100 * hi:g}%: "
                  f"{vs_range(cm['inside'], lo, hi)} — **{'met' if met else 'missed'}**.", ""]
    lines += ["By group (modelled patterns only):", "", *_group_rows(df), ""]
    if summary["nccl_ge_64MiB"]:
        lines += [f"NCCL at ≥ 64 MiB (aim: within {100 * AIM_NCCL:g}%): " + ", ".join(
            f"{p}: max {vs_aim(s['max'], AIM_NCCL)}" for p, s in summary["nccl_ge_64MiB"].items()), ""]
    table = pattern_table(df, fdf)
    for split in (CALIBRATION, HELD_OUT):
        lines += [f"## Per pattern, {split}", "", _md_table(table[table["split"] == split].drop(columns="split")), ""]
    misses = table[(table["split"] == HELD_OUT) & (table["makespan abs(err) median"] > AIM_MEDIAN)]
    if not misses.empty:
        lines += [f"## Where the model misses (held-out median abs(err) > {_pct(AIM_MEDIAN)})", "",
                  "*rep. spread* is how much the repetitions of a case disagreed ((slowest - fastest) / median); "
                  "an error inside it is not a model miss the data can show.", ""]
        for _, r in misses.iterrows():
            spread = r["rep. spread median"]
            why = (f"within the repetitions' spread ({_pct(spread)}) of these cases"
                   if r["modelled"] and r["makespan abs(err) median"] <= spread else _missing_for(r["pattern"]))
            lines.append(f"- **{r['pattern']}** (median abs(err) {vs_aim(r['makespan abs(err) median'], AIM_MEDIAN)}, "
                         f"{_pct(r['signed median'])} signed, {r['cases']} cases): {why}")
        lines.append("")
    ipc = [c for c in m.cases if c.group == "ipc"]
    if ipc:
        costs = profile.software_costs.get("cuda_ipc") or {}
        lines += ["## CUDA IPC handle open/close (another process, same GPU)", "",
                  "| allocation | open measured | open fitted | close measured |", "|---|---|---|---|"]
        op = costs.get("open")
        if "close" not in costs:
            lines[-2:-2] = ["Close was timed with a Python garbage collection inside the timed region in this file "
                            "(fixed before later runs), so it is shown but not fitted.", ""]
        for c in ipc:
            mm = m.measured[c.id]
            fitted = op.cost(c.bytes) if op is not None else float("nan")
            lines.append(f"| {c.bytes >> 20} MiB | {mm['open_s'] * 1e6:.1f} us | {fitted * 1e6:.1f} us | "
                         f"{mm['close_s'] * 1e6:.1f} us |")
        lines.append("")
    notes = profile.provenance.get("notes") or []
    if notes:
        lines += ["## What calibration fitted", ""] + [f"- {n}" for n in notes] + [""]
    if m.doc.get("skipped"):
        lines += ["## Not measured", ""] + [f"- `{s['id']}`: {s['reason']}" for s in m.doc["skipped"]] + [""]
    lines += ["![predicted vs measured](pred_vs_meas.png)", ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    styles = {(CALIBRATION, True): ("tab:blue", "o"), (HELD_OUT, True): ("tab:orange", "s"),
              (CALIBRATION, False): ("tab:gray", "x"), (HELD_OUT, False): ("tab:red", "x")}
    for (split, mod), (color, marker) in styles.items():
        d = df[(df["split"] == split) & (df["modelled"] == mod)]
        if not d.empty:
            ax.scatter(d["measured_s"] * 1e3, d["predicted_s"] * 1e3, s=14, c=color, marker=marker,
                       label=f"{split}{'' if mod else ' (not modelled)'} ({len(d)})", alpha=0.8)
    lo = float(min(df["measured_s"].min(), df["predicted_s"].min()) * 1e3 / 1.5)
    hi = float(max(df["measured_s"].max(), df["predicted_s"].max()) * 1e3 * 1.5)
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.plot(xs, xs * 1.15, "k:", lw=0.6)
    ax.plot(xs, xs / 1.15, "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured makespan (ms)")
    ax.set_ylabel("predicted makespan (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def ci_bound(summary: dict[str, Any]) -> dict[str, float]:
    """The held-out bound the CI guard enforces: the aim, or — where the aim is missed — today's error plus a
    small margin, so a regression fails CI while the documented miss does not."""
    h = summary[HELD_OUT]["modelled"]
    return {"median": max(AIM_MEDIAN, round(h["median"] * 1.1 + 0.005, 4)),
            "p90": max(AIM_P90, round(h["p90"] * 1.1 + 0.01, 4))}


def check_store(store: str | Path | None) -> None:
    """Refuse, before a report is written, a results store that could not be made (`ResultsStore.check_writable`;
    here because validate's CLI may not import the harness itself: tests/test_layout.py)."""
    from fabricsim.harness.store import ResultsStore

    ResultsStore(store or None).check_writable()


def store_rows(m: Measurements, profile: CalibrationProfile, df: pd.DataFrame, fdf: pd.DataFrame,
               store: str | Path | None) -> Path:
    from fabricsim.harness.store import ResultsStore, make_row, new_run_id

    study = f"validate-{m.preset}"
    run_id = new_run_id()
    device = str(m.machine.get("kind") or m.preset)
    # measured rows are dated when they were measured, not when this report stored them: the store's newest run of
    # a point (`store.newest_runs`, what `compare` counts) is then the newest measurement, and re-reporting an
    # older file does not make it replace a newer one
    measured_at = _measured_at(m)
    rows = []
    for frame, metric_of in ((df, lambda r: "makespan_s"), (fdf, lambda r: f"finish_s.{r['transfer']}")):
        for _, r in frame.iterrows():
            params = {"topology": m.preset, "pattern": r["pattern"], "split": r["split"]}
            for source, col, cal in (("hw", "measured_s", "measured"), ("sim", "predicted_s", profile.id)):
                band = ((r["lo"], r["hi"], r["level"]) if source == "sim" and "lo" in r and r["lo"] == r["lo"]
                        else None)
                rows.append(make_row(study=study, run_id=run_id, point_id=r["case"], params=params,
                                     metric=metric_of(r), value=r[col], unit="s", source=source,
                                     calibration_id=cal, device=device, interval=band,
                                     created_at=measured_at if source == "hw" else None))
    return ResultsStore(store or None).write(rows, study=study, run_id=run_id)


def _measured_at(m: Measurements) -> datetime | None:
    """When the measurements were taken (the document's `created_at`), or None where it does not say."""
    try:
        at = datetime.fromisoformat(str(m.doc.get("created_at")))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def write_report_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write a report into a temporary folder beside `out`, then swap it into place: a crash leaves
    the previous report whole (the copy suite's and the workload suite's reports both go through here). The
    report folder is made; the folder it goes into must exist (`check_parent_folder`)."""
    check_parent_folder(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        try:
            tmp.mkdir()
        except OSError as exc:  # name the user's path, not the temporary folder beside it
            raise type(exc)(exc.errno, f"cannot write the report there ({exc.strerror})", str(out)) from None
        fill(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(m: Measurements, profile: CalibrationProfile, out: str | Path, store: str | Path | None = "",
           split: str | None = None) -> dict:
    """Compare, write the report folder atomically, store rows (unless `store` is None); returns the summary.

    `split` picks which split judges the cases (see `validate.measurements.with_split`); None: the one the
    profile was fitted with (`judging_split`, which also refuses a split that would count cases the profile was
    fitted on as held out). The summary records it and the cases it moved, and the CI guard re-applies it."""
    split, split_note = judging_split(m, profile, split)
    m, resplit = with_split(m, split)
    df, fdf = compare(m, profile)
    if df.empty:
        raise CalibrationError(f"{m.source}: no simulable cases")
    summary = summarise(df)
    summary["ci_bound"] = ci_bound(summary)
    summary["profile"] = profile.id
    summary["machine"] = m.machine.get("kind") or m.preset
    summary["split"] = split
    summary["split_changed_from_file"] = resplit
    if split_note:
        summary["split_note"] = split_note
    summary["profile_note"] = check_profile_fits(profile, m)
    def fill(tmp: Path) -> None:
        df.to_csv(tmp / "errors.csv", index=False)
        fdf.to_csv(tmp / "finish_errors.csv", index=False)
        (tmp / "report.md").write_text(render_markdown(m, profile, df, fdf, summary))
        plot(df, tmp / "pred_vs_meas.png", f"{summary['machine']}: predicted vs measured ({profile.id})")
        write_json_atomic(tmp / "summary.json", summary)

    out = Path(out)
    write_report_folder(out, fill)
    if store is not None:
        summary["store_file"] = str(store_rows(m, profile, df, fdf, store))
    return summary


def default_report_dir(measured: str | Path) -> Path:
    """Where `report` writes without --out: a `report` folder beside the measurements file."""
    path = Path(measured)
    return (path if path.is_dir() else path.parent) / "report"


def report_file(measured: str | Path, *, profile: str | Path | None = None, out: str | Path | None = None,
                store: str | Path | None = "", split: str | None = None) -> str:
    """CLI body: returns the one-paragraph summary printed on stdout (with the split and how many cases it
    moved from the file's: a held-out figure means little without knowing what was held out)."""
    m = load_any(measured)
    p = resolve_profile(m, profile)
    note = check_profile_fits(p, m)
    out = Path(out) if out else default_report_dir(measured)
    s = report(m, p, out, store, split)
    h = s[HELD_OUT]["modelled"]
    cov = (s.get("coverage") or {}).get("modelled") or {}
    moved = s["split_changed_from_file"]
    theirs = " (the profile's)" if fitted_split(p) == s["split"] else ""
    return ((f"note: {note}\n" if note else "")
            + (f"note: {s['split_note']}\n" if s.get("split_note") else "")
            + f"report written to {out}: held-out (modelled) makespan abs(err) median {_pct(h['median'])}, "
            f"p90 {_pct(h['p90'])} over {h['n']} cases"
            + (f"; {_pct(cov['inside'])} inside their {LEVEL:.0%} interval" if cov else "")
            + f"; split {s['split']}{theirs}"
            + (f", {len(moved)} cases judged by today's case list, not the file's" if moved else "")
            + (f"; rows in {s['store_file']}" if "store_file" in s else ""))


def load_summary(path: str | Path) -> dict[str, Any]:
    return json.loads(read_text(path, MeasurementError, "report summary"))
