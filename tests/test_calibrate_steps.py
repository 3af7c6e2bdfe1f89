"""calibrate's named steps where a closed form says what they must give: derived profiles and transfers."""

from __future__ import annotations

import math

import pytest

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.calibration import CalibrationProfile, PathParams, bundled_profile_path, load_profile
from fabricsim.validate.fit.calibrate import _caps_for, calibrate, rate_from_one_size
from fabricsim.validate.measurements import load_measurements


def _one_way(p: CalibrationProfile, cls: str) -> float:
    per_gpu = p.gpus * (p.paths[cls].bandwidth_Bps or math.inf)
    return min([per_gpu] + [c.Bps for c in p.caps if c.name == f"host-{cls}"])


def test_host_duplex_of_the_8_gpu_profile_is_the_2_gpu_ratio() -> None:
    base, p8 = (load_profile(bundled_profile_path(n)) for n in ("h200x2", "h200x8"))
    ratio = next(c.Bps for c in base.caps if c.name == "host-duplex") / max(_one_way(base, "h2d"),
                                                                           _one_way(base, "d2h"))
    want = ratio * max(_one_way(p8, "h2d"), _one_way(p8, "d2h"))
    assert next(c.Bps for c in p8.caps if c.name == "host-duplex") == pytest.approx(want, rel=1e-12)
    assert any("transferred from" in n for n in p8.provenance["notes"])


def test_rate_from_one_size_keeps_latency_and_curve() -> None:
    pp = PathParams(latency_s=5e-6, bandwidth_Bps=50e9, size_efficiency=((1e6, 0.5), (1e9, 1.0)))
    got = rate_from_one_size(pp, [(1 << 30, 5e-6 + (1 << 30) / 40e9)])
    assert got.bandwidth_Bps == pytest.approx(40e9) and got.latency_s == 5e-6
    assert got.size_efficiency == pp.size_efficiency


def test_per_gpu_caps_repeat_for_every_gpu_and_missing_gpus_go() -> None:
    base = load_profile(bundled_profile_path("h200x2"))
    caps8 = {c.name for c in _caps_for(base.caps, [f"gpu{i}" for i in range(8)])}
    assert {f"gpu{i}.pcie-duplex" for i in range(8)} <= caps8
    caps1 = {c.name for c in _caps_for(base.caps, ["gpu0"])}
    assert "gpu1.pcie-duplex" not in caps1 and "gpu0.pcie-duplex" in caps1


def test_quick_suite_derives_what_it_measures_and_keeps_the_rest() -> None:
    root = bundled_profile_path("h200x2").parents[2]
    m = load_measurements(root / "validate" / "data" / "h200x1" / "quick" / "measured.json")
    base = load_profile(bundled_profile_path("h200x2"))
    p = calibrate(m, base=base)
    assert p.collectives == base.collectives  # one GPU measures no collective: kept
    assert p.paths["h2d"].latency_s != base.paths["h2d"].latency_s  # measured here: refitted
    assert p.provenance["base_profile"] == base.id and p.uncertainty is not None
    # the 2-GPU host ceiling neither carries over nor scales down to one GPU: the per-GPU duplex cap binds
    assert [c.name for c in p.caps] == ["gpu0.pcie-duplex"]
    with pytest.raises(CalibrationError, match="is for H100, these measurements are of H200"):
        calibrate(m, base=load_profile(bundled_profile_path("h100x1")))
