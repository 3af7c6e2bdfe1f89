"""Array layout of the fluid network's state, shared by `simcore.fluid` (owner) and `simcore._fluidcore` (compiled
loops): column numbers of the per-flow and per-resource tables, and the engine's tolerances. Kept apart so the
owner can build the arrays without importing numba."""

# Flow slots hold route classes: every active flow (a "member", numbered by its own member slot) belongs to one
# class, and flows with one route number, weight and cap that overlap in time share a class. Max-min gives them
# the same rate, so the solver sees a class as one flow of weight n x w and cap n x cap (n members), and a rate
# change costs per class, not per flow: each class keeps a virtual clock VSERV (bytes served to each member so
# far) and a heap of its members' finish targets (VSERV value at which each is done), so only the member that
# finishes first has an entry in the finish-time heap.
# ff columns (float64): W, CAP, UB are the class's (n x member's); W0, CAP0 one member's weight and cap; RATE the
# class's total; TRATE: a rate the incremental solve proposes, before it is checked and applied.
W, CAP, UB, W0, CAP0, VSERV, RATE, TLAST, TRATE = range(9)
NFF = 9
# fi columns (int64). VER only ever grows, also across reuse of a slot, so old heap entries stay stale. ROUTE
# numbers the class's route (-1: none given, a class of one). BOT: the class's bottleneck in the current
# allocation (a saturated binding resource on its route where its level rate/weight is the highest), -1 when its
# cap limits it, -2 when unknown; TBOT: the one proposed with TRATE. NMEM: members; MROOT: the member that
# finishes first (root of the members' skew heap), -1 when none.
ACTIVE, VER, FRESH, ROUTE, BOT, TBOT, NMEM, MROOT = range(8)
NFI = 8
# member tables: mf (float64) TARGET, the class's VSERV at which the member is done, and MBYTES, its size; mi
# (int64) MCLASS, its class slot, and the skew heap's LEFT and RIGHT children (-1: none)
TARGET, MBYTES = 0, 1
NMF = 2
MCLASS, LEFT, RIGHT = 0, 1, 2
NMI = 3
# rf columns (float64). RESID: capacity left to a region by the flows outside it; LOADP, MAXLEV: load and highest
# level (rate/weight) under the proposed rates; SCANLV, SCANTOP: the lowest level above which the region check
# collected this resource's outside flows, and their highest level (where ri SCANNED says so) (scratch of the
# incremental solve). DLEV: the lowest level (rate / weight) a class that lost members at this instant had on
# this resource (while ri DSEEN says so; see `_fluidcore._floor`, which needs only their minimum: kept per
# resource because the core's state has no float scalars).
RCAP, SUMUB, LOAD, RESID, LOADP, MAXLEV, OUT, SCANLV, SCANTOP, DLEV = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
NRF = 10
# ri columns (int64)
# NBOT: how many classes have this resource as their bottleneck (BOT); NFL: how many classes use it; NREG: how
# many of them are in the incremental solve's region (scratch); SCANNED: 1 while SCANLV and SCANTOP hold (scratch);
# DSEEN: while the resource is on the instant's list of resources that classes losing members used, 2 if it was
# binding before they lost them, else 1; DLIST holds that list in its first ctr[N_DRES] rows (a list by row, not a
# column of the resource itself)
HEAD, BINDING, NBOT, NFL, NREG, SCANNED, DSEEN, DLIST = 0, 1, 2, 3, 4, 5, 6, 7
NRI = 8
# ctr entries (int64): finish-heap size, heap push sequence, solver mode (INCREMENTAL, FULL or FLOOR), then
# counters of the incremental solve (for benchmarks): solves, rounds, fallbacks, flows re-solved; then the number
# of active classes (kept by the core) and how many coming solves skip the incremental attempt, after how many
# fallbacks in a row; the share of the active classes (percent) a region may reach before the classes above the
# floor are solved instead; how many class slots are free (the stack `cfree[:NCFREE]`); for benchmarks, how many
# solves took the whole component (FULL mode) and the classes they solved; the length of the instant's DLIST;
# for benchmarks, how many solves took the classes above the instant's floor (FLOOR mode, a skipped incremental
# attempt, or a fallback; see `_fluidcore._floor`) and the classes they solved; for benchmarks, how many classes
# the solves changed (a new rate, or members joined): the work an exact solver cannot avoid
(HSIZE, HSEQ, MODE, N_SOLVES, N_ROUNDS, N_FALLBACKS, N_REGION, N_ACTIVE, N_SKIP, N_STREAK, REGION_PCT, NCFREE,
 N_WHOLE, N_WHOLE_CLS, N_DRES, N_FLOOR, N_FLOOR_CLS, N_CHANGED) = range(18)
NCTR = 18
INCREMENTAL, FULL, FLOOR = 0, 1, 2

TIME_TOL = 1e-12  # relative: finish times closer than this to "now" complete now
BYTE_TOL = 1e-9   # relative: a flow with this fraction of its bytes left is done
BIND_TOL = 1e-9   # a resource binds when the flows' upper bounds sum to at least (1 - this) x capacity
CHECK_TOL = 1e-11  # relative: the incremental solve's saturation and level comparisons
SHORT_LIST = 32  # a resource with at most this many flows has its outside load summed exactly, not estimated
LOAD_MARGIN = 1e-7  # relative: a resource whose tracked load is this far below capacity is taken as not saturated
# without adding up its flows (the tracked load drifts by rounding only, ~1e-16 per change; exact sums re-sync it)
MAX_ROUNDS = 8     # incremental solve rounds before it solves the classes above the floor instead
REGION_SHARE_PCT = 25  # ... or once its region holds this share of the active flows (ctr[REGION_PCT])
FLOOR_TOL = 1e-9  # relative: classes this close below the floor level are re-solved too (rounding in levels)
REBASE = 2.0 ** 20  # a flow joins a class only while the class's clock (bytes per member) is below this x its size
MAX_SKIP = 63  # after n fallbacks in a row, the next min(2^n - 1, this) solves skip the incremental attempt:
# where changes spread through the whole network (one NVSwitch) the attempt is wasted work; both give the same rates


def scratch_sizes(slots: int, width: int) -> tuple[int, int]:
    """(int64s, float64s) of solver scratch that a solve over up to `slots` classes of route width `width` carves
    its tables from: its rates and bottlenecks (a class each), then `max_min`'s tables (8 m + 4 n + 2 and
    5 m + n, m <= n x width route entries), or `_fluidcore._saturation_floor`'s three lists (a resource's
    incidences, at most slots x width). The caller owns them, so that no solve allocates (see
    `_maxmin.NO_REFCOUNT`)."""
    return slots * (8 * width + 5) + 2, slots * (5 * width + 2) + 2
