"""Byte sizes and durations as people write them in scenario files ("1GiB", "256MiB", "4 KB", "10us")."""

from __future__ import annotations

import decimal
import math
import numbers
import re
import sys

from .errors import ScenarioError

# Beyond these a value is a typo or a wrong unit, not a workload: 1 EiB is more memory than any cluster has,
# and 10^9 s is 31 years. Refusing them keeps results readable (no 300-digit times) and integers in int64.
MAX_BYTES = 2**60
MAX_SECONDS = 1e9
MAX_FLOAT_INT = int(sys.float_info.max)  # the largest int a float holds
# A rate cap below 1 B/s (a GiB in 34 years) is a wrong unit, and one of 1e-300 B/s made finish times NaN. Weights
# share a bottleneck in proportion; 1e-300 left a flow with no demand at all ("unbounded flow"). The weight range is
# where the solver is tested against an exact solve (tests/test_extreme_weights.py: weights 1e+-9 times
# coefficients 1e+-4), not where it is known to fail; no QoS scheme needs a billion to one.
MIN_RATE_BPS = 1.0
MIN_WEIGHT, MAX_WEIGHT = 1e-9, 1e9

_BYTE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
# a time unit's power of ten of a second; µs with the micro sign or the Greek mu, which look the same
_TIME_UNITS = {"": 0, "s": 0, "ms": -3, "us": -6, "\u00b5s": -6, "\u03bcs": -6, "ns": -9}
_NUM = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z\u00b5\u03bc]*)\s*$")


def real_number(value: object, where: str, expected: str = "a number", shown: object = None) -> int | float:
    """`value` as a plain Python int or float if it is a real number, else a `ScenarioError` saying what was
    `expected`.

    The one type rule of every check below: any real number is taken, whatever made it (NumPy scalars of any
    width, np.float32 from an array, a Fraction), and comes back as a Python number, so results and error
    messages do not depend on where a number came from. Bools are refused: True is no size or time. An int
    past a float's range is refused here by its size alone: math.isfinite() of it would be an OverflowError,
    and its repr a line of hundreds of digits."""
    shown = value if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ScenarioError(f"{where}: expected {expected}, got {shown!r}")
    if isinstance(value, numbers.Integral):
        if abs(value) > MAX_FLOAT_INT:
            raise ScenarioError(f"{where}: number is beyond 1e308, more than a float holds; check the number")
        return int(value)
    try:
        return float(value)
    except OverflowError:  # a Fraction past a float's range
        raise ScenarioError(f"{where}: number is beyond 1e308, more than a float holds; check the number") from None


def parse_bytes(value: object, where: str = "size") -> int:
    """Integers or '<number><unit>' with KB/MB/GB/TB (decimal) or KiB/MiB/GiB/TiB (binary); must be > 0."""
    n = value
    if isinstance(value, str):
        m = _NUM.match(value)
        if not m:
            raise ScenarioError(f"{where}: cannot read size {value!r} (write e.g. 1GiB, 256MiB, 4096)")
        unit = m[2].lower()
        if m[2].endswith("b") and unit in ("b", "kb", "mb", "gb", "tb"):  # 400Gb: a link's bits, not bytes
            prefix = m[2][:-1].upper()
            raise ScenarioError(f"{where}: '{m[2]}' in {value!r} reads as bits, and sizes are bytes: write "
                                f"{prefix}B" + (f" (or {prefix}iB)" if prefix else ""))
        if unit not in _BYTE_UNITS:
            raise ScenarioError(
                f"{where}: unknown unit '{m[2]}' in {value!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        n = float(m[1]) * _BYTE_UNITS[unit]
    return int(check_bytes(n, where, shown=value))


def check_bytes(n: float, where: str, *, allow_zero: bool = False, whole: bool = True, shown: object = None) -> float:
    """A byte count: finite, > 0 (or >= 0 with `allow_zero`), at most `MAX_BYTES`, and an int when `whole`
    (files say bytes; the API also takes the fractional averages that models compute)."""
    shown = n if shown is None else shown
    n = real_number(n, where, "a size", shown)
    if not math.isfinite(n):
        raise ScenarioError(f"{where}: size must be a finite number, got {shown!r}")
    if not (n >= 0 if allow_zero else n > 0):
        raise ScenarioError(f"{where}: size must be {'>= 0' if allow_zero else '> 0'}, got {shown!r}")
    if n > MAX_BYTES:
        raise ScenarioError(f"{where}: size {shown!r} is beyond 1 EiB, more than any machine holds (check the unit)")
    if not whole:
        return n
    if n != int(n):
        raise ScenarioError(f"{where}: size {shown!r} is not a whole number of bytes")
    return int(n)


def parse_seconds(value: object, where: str = "time", *, positive: bool = False) -> float:
    """Seconds as a number, or a string with s/ms/us (µs)/ns; must be >= 0 (> 0 with `positive`, as
    `check_seconds`). The one reader of a duration written as text: scenario files, --train-step and every
    KEY=VALUE setting whose name ends in `_s` (`keyvalue`).

    The unit scales the decimal number as written and the result is rounded once, so '20us' is the float 2e-05,
    as `20e-6` is (20 * 1e-6 is 1.9999999999999998e-05: a cost written with a unit differed from the same cost
    written as a number)."""
    t = value
    if isinstance(value, str):
        m = _NUM.match(value)
        if not m:
            raise ScenarioError(f"{where}: cannot read time {value!r} (write e.g. 0.001, 1ms, 10us)")
        unit = m[2].lower()
        if unit not in _TIME_UNITS:
            raise ScenarioError(f"{where}: cannot read time {value!r}: unknown unit '{m[2]}' (use s, ms, us, µs, ns)")
        sign, digits, exponent = decimal.Decimal(m[1]).as_tuple()  # exact, and no context to overflow (1e99999999s)
        t = float(decimal.Decimal((sign, digits, int(exponent) + _TIME_UNITS[unit])))
    return check_seconds(t, where, shown=value, positive=positive)


def check_seconds(t: float, where: str, *, shown: object = None, positive: bool = False) -> float:
    """A duration or start time: finite, >= 0 and at most `MAX_SECONDS`; > 0 with `positive`, for a length that
    something is divided by (a training step), so that its one message states the rule that holds, not a >= 0
    that a 0 would then break."""
    shown = t if shown is None else shown
    t = real_number(t, where, "a time", shown)
    if not math.isfinite(t) or (t <= 0 if positive else t < 0):
        raise ScenarioError(f"{where}: time must be a finite number {'> 0' if positive else '>= 0'}, got {shown!r}")
    if t > MAX_SECONDS:
        raise ScenarioError(f"{where}: time {shown!r} is beyond 10^9 s (31 years); check the unit")
    return float(t)


def check_positive(x: float, where: str) -> float:
    """A rate, weight or other factor: a finite number > 0."""
    value = real_number(x, where, "a finite number > 0", x)
    if not (0 < value < math.inf):
        raise ScenarioError(f"{where}: expected a finite number > 0, got {x!r}")
    return float(value)


def check_rate(x: float, where: str, per_unit: float = 1.0) -> float:
    """A rate cap of `x` units of `per_unit` bytes/s (1e9: a scenario file's GB/s): a finite number worth at least
    `MIN_RATE_BPS`; returns it in bytes/s."""
    value = check_positive(x, where)
    if value * per_unit < MIN_RATE_BPS:
        raise ScenarioError(f"{where}: expected a rate of at least {MIN_RATE_BPS / per_unit:g} (1 B/s), got {x!r}")
    return value * per_unit


def check_weight(x: float, where: str) -> float:
    """A flow's weight: a number from `MIN_WEIGHT` to `MAX_WEIGHT`."""
    value = check_positive(x, where)
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise ScenarioError(f"{where}: expected a weight from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, got {x!r}")
    return value


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"
