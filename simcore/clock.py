"""Wake-ups at an absolute simulated time on a simpy clock.

simpy schedules by delay (`now + delay`), and `now + (t - now)` is not always `t` in floating point: the sum can
land an ulp past `t` and no delay hits `t` exactly. Two items declared to start at the same `t`, one released by
a dependency at an odd time, would then reach a FIFO engine in the wrong order, and the simpy path would disagree
with the compiled loop (`simcore._eventloop`), which keeps absolute times. `timeout_at` puts the event on simpy's
queue at `t` itself.
"""

from __future__ import annotations

from heapq import heappush

import simpy
from simpy.events import NORMAL


class At(simpy.Timeout):
    """A `simpy.Timeout` that fires at absolute time `t` (never before now)."""

    def __init__(self, env: simpy.Environment, t: float) -> None:
        t = max(float(t), float(env.now))
        # Timeout.__init__ inlined as simpy does, but with the absolute time; relies on simpy 4's queue layout
        self.env = env
        self.callbacks = []
        self._value = None
        self._delay = t - env.now
        self._ok = True
        heappush(env._queue, (t, NORMAL, next(env._eid), self))  # type: ignore[attr-defined]


def timeout_at(env: simpy.Environment, t: float) -> simpy.Timeout:
    """An event that fires at simulated time exactly `t` (or now, if `t` has passed)."""
    return At(env, t)
