"""Compiled shortest-route search of `hwmodels.routing.RouteIndex`: networkx's bidirectional Dijkstra, replayed.

Why this module exists: a point-to-point weight sync on a 512-GPU cluster asks for 65,536 distinct routes, and
networkx's search (a Python weight callback per edge, dicts keyed by node name) cost ~0.5 ms each: half a
minute of routing before the first byte moved. Here the same search runs compiled over the index's arrays.

Why a replay and not any shortest-path algorithm: equal-cost routes are common (every rail of a cluster, every
PCIe switch pair of a node), and which of them a copy takes decides which links it shares. This function makes
the same moves as `networkx.bidirectional_dijkstra` (networkx 3.x), so it picks the same route among ties:
the two searches alternate (forward first), each pops the least (distance, push counter) of its own heap, the
counter is shared by both heaps and counts pushes only, neighbours are scanned in the graph's adjacency order,
a relaxation needs a strictly shorter distance, the meeting node is replaced only by a strictly shorter total,
and the search stops when one node has been settled from both sides. An edge whose weight the old callback
answered with None is skipped before it touches anything, exactly as networkx skips it. Any heap that pops
the least (distance, counter) pops in the same order (counters are unique), so the array heap below needs no
other property. Plain Python over numpy arrays: `NUMBA_DISABLE_JIT=1` runs the identical algorithm interpreted.

Per-query state lives in arrays the index owns, stamped with a query number instead of cleared (clearing four
arrays of a 3,500-node cluster per query cost more than the search).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _push(hd: np.ndarray, hc: np.ndarray, hn: np.ndarray, size: int, d: float, c: int, n: int) -> int:
    """Add (d, c, n) to the array heap of `size` entries ordered by (d, c); returns the new size."""
    i = size
    while i > 0:
        p = (i - 1) >> 1
        if d < hd[p] or (d == hd[p] and c < hc[p]):
            hd[i] = hd[p]
            hc[i] = hc[p]
            hn[i] = hn[p]
            i = p
        else:
            break
    hd[i] = d
    hc[i] = c
    hn[i] = n
    return size + 1


@njit(cache=True)
def _pop(hd: np.ndarray, hc: np.ndarray, hn: np.ndarray, size: int) -> tuple[float, int, int]:
    """Remove the least (d, c) entry of a non-empty heap: (its distance, its node, the new size)."""
    d0, n0 = hd[0], hn[0]
    size -= 1
    d, c, n = hd[size], hc[size], hn[size]
    i = 0
    while True:
        k = 2 * i + 1
        if k >= size:
            break
        if k + 1 < size and (hd[k + 1] < hd[k] or (hd[k + 1] == hd[k] and hc[k + 1] < hc[k])):
            k += 1
        if hd[k] < d or (hd[k] == d and hc[k] < c):
            hd[i] = hd[k]
            hc[i] = hc[k]
            hn[i] = hn[k]
            i = k
        else:
            break
    if size > 0:
        hd[i] = d
        hc[i] = c
        hn[i] = n
    return d0, n0, size


@njit(cache=True)
def route(indptr: np.ndarray, nbr: np.ndarray, wt: np.ndarray, is_ep: np.ndarray, foreign: np.ndarray,
          closed_s: np.ndarray, closed_t: np.ndarray, s: int, t: int, qid: int, settled: np.ndarray,
          seen: np.ndarray, seen_d: np.ndarray, pred: np.ndarray, hd: np.ndarray, hc: np.ndarray, hn: np.ndarray,
          out: np.ndarray) -> int:
    """`bidirectional` with the NICs `closed_s` and `closed_t` (those of the two ends) marked in `foreign` for
    the one search, and unmarked after (marking them here spares two numpy calls per route)."""
    for i in closed_s:
        foreign[i] = True
    for i in closed_t:
        foreign[i] = True
    n = bidirectional(indptr, nbr, wt, is_ep, foreign, s, t, qid, settled, seen, seen_d, pred, hd, hc, hn, out)
    for i in closed_s:
        foreign[i] = False
    for i in closed_t:
        foreign[i] = False
    return n


@njit(cache=True)
def bidirectional(indptr: np.ndarray, nbr: np.ndarray, wt: np.ndarray, is_ep: np.ndarray, foreign: np.ndarray,
                  s: int, t: int, qid: int, settled: np.ndarray, seen: np.ndarray, seen_d: np.ndarray,
                  pred: np.ndarray, hd: np.ndarray, hc: np.ndarray, hn: np.ndarray, out: np.ndarray) -> int:
    """The route s -> t (s != t) written into `out`; returns its node count, or -1 when there is none.

    Graph: CSR adjacency `indptr`/`nbr` in networkx adjacency order, `wt` the weight of each entry. A node is
    closed to the search where the old weight callback said so: `foreign[n]` (a NIC paired with another GPU of
    an end's machine), or an endpoint (`is_ep[n]`) other than s as the edge's tail or other than t as its head.
    `settled`, `seen` (int64) hold the query number `qid` where a node is settled / seen in direction 0
    (forward) or 1; `seen_d`, `pred` are valid only there. `hd`, `hc`, `hn`: one heap per direction, each row
    long enough for every adjacency entry plus one."""
    seen[0, s] = qid
    seen_d[0, s] = 0.0
    pred[0, s] = -1
    seen[1, t] = qid
    seen_d[1, t] = 0.0
    pred[1, t] = -1
    size0 = _push(hd[0], hc[0], hn[0], 0, 0.0, 0, s)
    size1 = _push(hd[1], hc[1], hn[1], 0, 0.0, 1, t)
    counter = 2
    have_final = False
    finaldist = 0.0
    meet = -1
    direction = 1
    while size0 > 0 and size1 > 0:
        direction = 1 - direction
        if direction == 0:
            dist, v, size0 = _pop(hd[0], hc[0], hn[0], size0)
        else:
            dist, v, size1 = _pop(hd[1], hc[1], hn[1], size1)
        if settled[direction, v] == qid:
            continue
        settled[direction, v] = qid
        if settled[1 - direction, v] == qid:
            if meet < 0:
                return -2  # cannot happen with positive weights; networkx would fail here too
            n = 0
            x = meet
            while x >= 0:
                n += 1
                x = pred[0, x]
            x = meet
            for i in range(n - 1, -1, -1):
                out[i] = x
                x = pred[0, x]
            x = pred[1, meet]
            while x >= 0:
                out[n] = x
                n += 1
                x = pred[1, x]
            return n
        # v is the edge's tail going forward, its head going backward: closed, it relaxes nothing
        own_end = s if direction == 0 else t
        if foreign[v] or (is_ep[v] and v != own_end):
            continue
        other_end = t if direction == 0 else s
        for k in range(indptr[v], indptr[v + 1]):
            w = nbr[k]
            if foreign[w] or (is_ep[w] and w != other_end):
                continue
            if settled[direction, w] == qid:
                continue
            vw = dist + wt[k]
            if seen[direction, w] != qid or vw < seen_d[direction, w]:
                seen[direction, w] = qid
                seen_d[direction, w] = vw
                if direction == 0:
                    size0 = _push(hd[0], hc[0], hn[0], size0, vw, counter, w)
                else:
                    size1 = _push(hd[1], hc[1], hn[1], size1, vw, counter, w)
                counter += 1
                pred[direction, w] = v
                if seen[1 - direction, w] == qid:
                    total = vw + seen_d[1 - direction, w]
                    if not have_final or finaldist > total:
                        finaldist = total
                        meet = w
                        have_final = True
    return -1


@njit(cache=True)
def route_many(indptr: np.ndarray, nbr: np.ndarray, wt: np.ndarray, is_ep: np.ndarray, foreign: np.ndarray,
               closed_off: np.ndarray, closed: np.ndarray, srcs: np.ndarray, dsts: np.ndarray, qid: int,
               settled: np.ndarray, seen: np.ndarray, seen_d: np.ndarray, pred: np.ndarray, hd: np.ndarray,
               hc: np.ndarray, hn: np.ndarray, out: np.ndarray, start: np.ndarray, count: np.ndarray) -> int:
    """`route` for many pairs in one call (a call costs ~2 us of argument checks, as much as a search): pair k is
    (srcs[k], dsts[k]), s != t, searched as query `qid + 1 + k`, with the NICs closed to node n being
    `closed[closed_off[n]:closed_off[n + 1]]`. Its `count[k]` nodes go to `out[start[k]:]`; a count of -1 says
    there is no route (-2: see `bidirectional`). Stops before a pair whose route might not fit in what is left of
    `out` (a route has at most as many nodes as the graph); returns how many pairs it did."""
    nn = indptr.shape[0] - 1
    pos = 0
    for k in range(srcs.shape[0]):
        if pos + nn > out.shape[0]:
            return k
        s, t = srcs[k], dsts[k]
        for q in range(closed_off[s], closed_off[s + 1]):
            foreign[closed[q]] = True
        for q in range(closed_off[t], closed_off[t + 1]):
            foreign[closed[q]] = True
        m = bidirectional(indptr, nbr, wt, is_ep, foreign, s, t, qid + 1 + k, settled, seen, seen_d, pred, hd, hc,
                          hn, out[pos:])
        for q in range(closed_off[s], closed_off[s + 1]):
            foreign[closed[q]] = False
        for q in range(closed_off[t], closed_off[t + 1]):
            foreign[closed[q]] = False
        start[k] = pos
        count[k] = m
        if m > 0:
            pos += m
    return srcs.shape[0]
