"""Counts (sequences, tokens, instances, layer groups, pages): the one rule every workload count is checked by.

Serving configs, decode batches and KV-policy parameters each name their own error type and field; what makes a
count a count is written once, here.
"""

from __future__ import annotations

import numbers

from .errors import WorkloadError

# Past this a token count is a typo: counts past 2^53 stop being whole numbers as floats, and their draws overflow
# numpy's int64 soon after (`requests` takes it from here, as every check of a count does).
MAX_TOKENS = 2**53


def check_count(value: object, where: str, *, lo: int = 1, most: int = MAX_TOKENS,
                error: type[WorkloadError] = WorkloadError) -> int:
    """`value` as an int in [lo, most], else `error` with one line that starts with `where`.

    A whole float (512.0, what JSON or arithmetic gives) is the count it names and comes back as an int, so it
    can slice lists and index arrays. 512.5, NaN, infinities, bools and non-numbers are refused, not rounded:
    int() would make 0.5 a 0 and infinity an OverflowError. A huge count is refused by its size alone, before
    anything else, so the line never prints hundreds of digits."""
    try:
        whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    except OverflowError:  # a Fraction past a float's range
        raise error(f"{where} is more than 2^53 in size; check the number") from None
    if isinstance(value, bool) or not whole:
        raise error(f"{where} must be a whole number >= {lo}, got {value!r}")
    if abs(value) > most:
        bound = "2^53" if most == MAX_TOKENS else f"{most:,}"
        raise error(f"{where} is more than {bound} in size; check the number")
    if value < lo:
        raise error(f"{where} must be >= {lo}, got {value!r}")
    return int(value)
