"""`FifoEngine`: a copy engine that serves one transfer at a time, in request order.

Requests made at one simulated instant are served in declaration order, not in the order simpy happens to
process that instant's events: grants are made at the end of the instant (an event of lower priority than
simpy's own), lowest (request time, declaration index) first. That rule is what lets the compiled event loop
(`simcore._eventloop`), which has no simpy event order to copy, give the same answers as this path.
"""

from __future__ import annotations

import heapq

import simpy

GRANT_PRIORITY = 1.5  # after simpy's NORMAL (1) events of an instant, before the fluid network's solve (2)


class FifoEngine:
    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self._busy = False
        self._queue: list[tuple[float, int, simpy.Event]] = []
        self._grant_pending = False

    def request(self, order: int) -> simpy.Event:
        """An event that fires when the engine is this request's; `order` breaks ties within an instant."""
        ev = self.env.event()
        heapq.heappush(self._queue, (self.env.now, order, ev))
        self._grant_later()
        return ev

    def release(self) -> None:
        self._busy = False
        self._grant_later()

    def _grant_later(self) -> None:
        if not self._grant_pending and not self._busy and self._queue:
            self._grant_pending = True
            ev = simpy.Event(self.env)
            ev._ok, ev._value = True, None  # triggered; simpy's own Timeout sets these the same way
            ev.callbacks.append(self._grant)
            self.env.schedule(ev, GRANT_PRIORITY)

    def _grant(self, _ev: simpy.Event) -> None:
        self._grant_pending = False
        if not self._busy and self._queue:
            self._busy = True
            heapq.heappop(self._queue)[2].succeed()
