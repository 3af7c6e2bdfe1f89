"""Array layout of the fluid network's state, shared by `simcore.fluid` (owner) and `simcore._fluidcore` (compiled
loops): column numbers of the per-flow and per-resource tables, and the engine's tolerances. Kept apart so the
owner can build the arrays without importing numba."""

# ff columns (float64)
W, CAP, UB, BYTES, REM, RATE, TLAST = 0, 1, 2, 3, 4, 5, 6
NFF = 7
# fi columns (int64). VER only ever grows, also across reuse of a slot, so old heap entries stay stale. ROUTE
# numbers the flow's route (-1: none given); flows with one route, weight and cap are solved as one class.
ACTIVE, VER, FRESH, ROUTE = 0, 1, 2, 3
NFI = 4
# rf columns (float64)
RCAP, SUMUB, LOAD = 0, 1, 2
NRF = 3
# ri columns (int64)
HEAD, BINDING = 0, 1
NRI = 2
# ctr entries (int64): finish-heap size, heap push sequence
HSIZE, HSEQ = 0, 1
NCTR = 2

TIME_TOL = 1e-12  # relative: finish times closer than this to "now" complete now
BYTE_TOL = 1e-9   # relative: a flow with this fraction of its bytes left is done
BIND_TOL = 1e-9   # a resource binds when the flows' upper bounds sum to at least (1 - this) x capacity
