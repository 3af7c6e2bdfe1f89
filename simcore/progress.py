"""A progress line on stderr for one long simulation (a 1,024-GPU sync can take a while; silence looks like a hang).

Nothing is printed for runs shorter than `DELAY_S`: the line appears after that much wall time, says how many
flow events have been processed, the simulated time reached and the flows in flight, and is cleared when the run
ends. On the compiled loop, which knows all the work up front, it also says how many of the declared items have
finished and, after `ETA_AFTER_S`, about how long the rest will take at the recent pace: a 256-GPU all-to-all that
takes minutes says so early, instead of looking like a hang; while the run keeps slowing down that is a floor,
and the line says "more than".
`FABRICSIM_PROGRESS=0` turns it off (sweep workers
and scripts that parse stderr); a sweep has its own bar.
When stderr is not a terminal (a log file, a pipe) a redrawn line would leave carriage-return debris, so plain
lines are written instead, one every `LOG_EVERY_S`.
The fluid network calls `tick` every few hundred wake-ups, so the cost is one counter test per event; the
simulation calls `declaring` every few thousand declared items, so that describing a large run (seconds for a
million items) is not silent either.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque

DELAY_S = 2.0
LOG_EVERY_S = 10.0
PACE_WINDOW_S = 30.0  # the time left is estimated at the pace of about this much recent wall time
# ... or of the last third of the run so far, while that is shorter: with the whole window the recent pace was the
# pace since the start for the first 30 s, so a run that kept slowing was never called slowing before then (a
# 256-GPU rdma-p2p sync said "about 16 s left" at 12 s, "about 28 s left" at 32 s, and took minutes)
PACE_WINDOW_SHARE = 1 / 3
# ... and not before this much wall time: the first seconds of a large all-to-all finish items several times faster
# than the rest (the network fills up; each later event re-rates more flows), so an early estimate was far too low
# (a 128-GPU rdma-p2p sync said "about 1 s left" at 2 s and took 12.8 s)
ETA_AFTER_S = 10.0
# A run whose recent pace is this much slower than its pace since the first count is slowing down: the time left at
# the recent pace is then a floor, "more than" (a 256-GPU all-to-all said 24 s left at 12 s, then 37, then 47, and
# took about 4 minutes)
SLOWING = 1.25
# tqdm's bar without its time-left estimate, for a bar with a total in the first `ETA_AFTER_S`
EARLY_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def enabled() -> bool:
    return os.environ.get("FABRICSIM_PROGRESS", "1") not in ("0", "false", "no", "")


class Progress:
    """Shows (after `delay_s` of wall time) and updates one tqdm line, or writes plain lines when stderr is not
    a terminal; `close()` removes the tqdm line."""

    def __init__(self, delay_s: float | None = None) -> None:
        self._t0 = time.monotonic()
        self._delay = DELAY_S if delay_s is None else delay_s
        self._bar = None
        self._phase = ""  # what the bar counts: "declaring" (items) or "simulating" (flow events, or items done)
        self._shown = 0
        self._plain = not sys.stderr.isatty()
        self._next_line = self._t0 + self._delay
        self._paces: deque[tuple[float, int]] = deque()  # (wall time, items done) of recent counts: the pace
        self._first: tuple[float, int] | None = None  # the first count: the pace since then tells a slowing run

    def declaring(self, items: int) -> None:
        """Work is still being described (a 1,024-GPU sync declares a million items before the first event)."""
        if self._plain:
            self._line("declaring", f"{items:,} transfers, tasks and delays")
        elif self._show("declaring", " items", items):
            self._bar.update(items - self._shown)
            self._shown = items

    def tick(self, now_s: float, events: int, active: int, done: int | None = None, total: int | None = None) -> None:
        """The run so far: simulated time, flow events, flows in flight; `done` of `total` items finished where
        the work is known up front (the compiled loop)."""
        state = f"simulated {now_s:.4g} s, {active:,} in flight"
        counted = f"{events:,} flow events, {state}"
        by_items = done is not None and bool(total)  # else counted in flow events
        if self._plain:
            text = f"{done:,} of {total:,} items done, {counted}{self._left(done, total)}" if by_items else counted
            self._line("simulating", text)
            return
        unit, count, postfix = (" items", done, counted) if by_items else (" flow events", events, state)
        if by_items and self._pace(done)[1]:  # (tqdm's own time-left estimate goes by the recent pace too)
            postfix += "; slowing down: the time left shown is a floor"
        if self._show("simulating", unit, count, total if by_items else None):
            self._bar.update(count - self._shown)
            self._shown = count
            self._bar.set_postfix_str(postfix, refresh=False)

    def _left(self, done: int, total: int) -> str:
        """', about N min left' at the pace of the last `PACE_WINDOW_S` or third of the run (empty until there is a
        pace to go by), or
        ', more than N min left' while the run is slowing down (`_pace`). Not the pace since the start: a large
        all-to-all finishes its first items fastest (the network fills up), so that estimate kept falling behind."""
        pace, slowing = self._pace(done)
        if pace is None:
            return ""
        left = pace * (total - done)
        said = "more than" if slowing else "about"
        return f", {said} {left / 60:.0f} min left" if left >= 90 else f", {said} {left:.0f} s left"

    def _pace(self, done: int) -> tuple[float | None, bool]:
        """(seconds per item over the last `PACE_WINDOW_S` (or third of the run), None before `ETA_AFTER_S` or without
        progress; whether that is `SLOWING` times slower than the pace since the first count)."""
        t = time.monotonic()
        paces = self._paces
        paces.append((t, done))
        if self._first is None:
            self._first = (t, done)
        if t - self._t0 < ETA_AFTER_S:
            return None, False
        window = min(PACE_WINDOW_S, PACE_WINDOW_SHARE * (t - self._t0))
        while len(paces) > 2 and t - paces[1][0] >= window:
            paces.popleft()
        t0, d0 = paces[0]
        if done <= d0 or t - t0 < 1.0:
            return None, False
        pace = (t - t0) / (done - d0)
        t1, d1 = self._first
        return pace, done > d1 and pace > SLOWING * (t - t1) / (done - d1)

    def _line(self, phase: str, text: str) -> None:
        """A plain line once per LOG_EVERY_S, and at once when the phase changes (after the delay)."""
        t = time.monotonic()
        if t >= self._next_line or (phase != self._phase and t - self._t0 >= self._delay):
            self._next_line = t + LOG_EVERY_S
            self._phase = phase
            print(f"fabricsim: {phase}: {text} ({t - self._t0:.0f} s)", file=sys.stderr, flush=True)

    def _show(self, phase: str, unit: str, count: int, total: int | None = None) -> bool:
        """Whether the bar is up (after the delay) and counts `phase`, starting a new one when the phase changed
        (with a `total`, tqdm shows the share done and its own estimate of the time left)."""
        if self._bar is None and time.monotonic() - self._t0 < self._delay:
            return False
        if self._phase != phase:
            self.close()
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=count, desc=f"fabricsim: {phase}", unit=unit, unit_scale=True,
                             file=sys.stderr, leave=False, mininterval=0.5, dynamic_ncols=True,
                             bar_format=None if total is None else EARLY_BAR)
            self._phase, self._shown = phase, count
        elif self._bar.bar_format is not None and time.monotonic() - self._t0 >= ETA_AFTER_S:
            self._bar.bar_format = None  # tqdm's own format, with its time-left estimate (see ETA_AFTER_S)
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._phase = ""
