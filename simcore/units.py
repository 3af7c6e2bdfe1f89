"""Byte sizes and durations as people write them in scenario files ("1GiB", "256MiB", "4 KB", "10us")."""

from __future__ import annotations

import re

from .errors import ScenarioError

_BYTE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def parse_bytes(value: object, where: str = "size") -> int:
    """Integers or '<number><unit>' with KB/MB/GB/TB (decimal) or KiB/MiB/GiB/TiB (binary); must be > 0."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a size, got {value!r}")
    if isinstance(value, int | float):
        n = value
    elif isinstance(value, str):
        m = _NUM.match(value)
        if not m:
            raise ScenarioError(f"{where}: cannot read size {value!r} (write e.g. 1GiB, 256MiB, 4096)")
        unit = m[2].lower()
        if unit not in _BYTE_UNITS:
            raise ScenarioError(
                f"{where}: unknown unit '{m[2]}' in {value!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        n = float(m[1]) * _BYTE_UNITS[unit]
    else:
        raise ScenarioError(f"{where}: expected a size, got {value!r}")
    if not n > 0:
        raise ScenarioError(f"{where}: size must be > 0, got {value!r}")
    if n != int(n):
        raise ScenarioError(f"{where}: size {value!r} is not a whole number of bytes")
    return int(n)


def parse_seconds(value: object, where: str = "time") -> float:
    """Seconds as a number, or a string with s/ms/us/ns; must be >= 0."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a time, got {value!r}")
    if isinstance(value, int | float):
        t = float(value)
    elif isinstance(value, str):
        m = _NUM.match(value)
        if not m or m[2].lower() not in _TIME_UNITS:
            raise ScenarioError(f"{where}: cannot read time {value!r} (write e.g. 0.001, 1ms, 10us)")
        t = float(m[1]) * _TIME_UNITS[m[2].lower()]
    else:
        raise ScenarioError(f"{where}: expected a time, got {value!r}")
    if t < 0 or t != t:
        raise ScenarioError(f"{where}: time must be >= 0, got {value!r}")
    return t


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"
