"""`RouteTable`: a simulation's distinct routes, numbered once each, as flat lists of resource numbers and
coefficients.

Why flat lists and not a pair of arrays per route: a 1,024-GPU pull-on-publish sync has 262,144 distinct routes,
and two small NumPy arrays and a tuple per route cost more than the rest of declaring the route did (and are
~790k objects to allocate and free). The compiled loop wants every route's entries in one array anyway
(`gather`); only flows on the simpy path ask for one route's arrays (`arrays`, made on first use and kept).
"""

from __future__ import annotations

import numpy as np


class RouteTable:
    """Distinct routes by content (a path's sorted (resource name, coefficient) pairs), numbered in order of first
    use: route n's resource numbers are `res[off[n]:off[n + 1]]`, its coefficients `coef[...]` alike."""

    def __init__(self, index: dict[str, int]) -> None:
        self._index = index  # resource name -> the simulation's resource number
        self._number: dict[tuple[tuple[str, float], ...], int] = {}
        self.off: list[int] = [0]
        self.res: list[int] = []
        self.coef: list[float] = []
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.off) - 1

    def number(self, resources: tuple[tuple[str, float], ...]) -> int:
        """The route number of a path's resources, added on first sight."""
        n = self._number.get(resources)
        if n is None:
            n = self._number[resources] = len(self.off) - 1
            index = self._index
            self.res.extend([index[r] for r, _ in resources])
            self.coef.extend([c for _, c in resources])
            self.off.append(len(self.res))
        return n

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Route n as (resource number array, coefficient array), made once."""
        got = self._arrays.get(n)
        if got is None:
            a, b = self.off[n], self.off[n + 1]
            got = self._arrays[n] = (np.array(self.res[a:b], np.int64), np.array(self.coef[a:b], np.float64))
        return got

    def gather(self, used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The routes numbered `used`, in that order, as (offsets, resource numbers, coefficients): route k of the
        result is `rres[roff[k]:roff[k + 1]]`."""
        off = np.array(self.off, np.int64)
        starts, lens = off[used], off[used + 1] - off[used]
        roff = np.zeros(len(used) + 1, np.int64)
        np.cumsum(lens, out=roff[1:])
        pick = np.repeat(starts - roff[:-1], lens) + np.arange(roff[-1], dtype=np.int64)
        return roff, np.array(self.res, np.int64)[pick], np.array(self.coef, np.float64)[pick]
