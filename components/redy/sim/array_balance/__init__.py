"""The market of `redy sim balance` over arrays, compiled: `redy sim balance --engine fast`.

Why a second engine: the core-driven one (every node a `PriceDiscovery` over a `PushSum` or a
`FlowUpdating`, redy.sim.balance) spends ~35 us of interpreter time per push-sum message and
~20 us per Flow Updating message (attrs messages, dicts of flows, the driver loop); a 1,000-node
epoch of Flow Updating sends ~470,000 messages. This engine runs the same rounds, event for event
and in the same order (asynchronous rounds: the live nodes act in a random order, a message
arrives before the next node acts), on one row of floats per node, compiled with numba, over the
overlay of the compiled shuffle (redy.sim.array_cyclon). The bids, the reference optimum and the
exact cost are the core engine's own: the same seeds draw the same bids. It cannot replay the
core's random streams, so tests/sim/test_array_balance.py holds its metrics against the core
engine on the same seeds, within their seed-to-seed spread.

What mirrors what:
- `PriceDiscovery`: phases on the coarse grid (with the load at the cap and the must-run at the
  floor appended), then windows around the price found; `clear`, the shortage and surplus shares
  and the window rule are written out in `end_phase`. One difference: nodes whose prices fall
  in different cells pick different windows, and in the core the lowest window spreads by gossip
  (a node restarts on it when it hears of it); here every node starts the phase on the lowest
  window at once. The nodes' prices differ by far less than a cell, so this is rare.
- `PushSum` (`pushsum_kernel`): keep half, push half (at most MAX_PUSH_WEIGHT) to one random view entry; a refused push (a dead
  node's broker) brings the mass back, removes the entry (`Cyclon.on_unreachable`) and tries
  another, three tries in all; a lost push or one to a node that has finished loses its mass.
- `FlowUpdating`: two kernels. `flow_exact` keeps, as the core does, a flow and an estimate per
  link (memory: 2 x links x k floats), and is used for a phase with a crash or with message
  loss. `pull_rounds` needs no per-link state: with reliable, immediate delivery both ends of a
  link hold opposite flows and the same estimate, the one of whichever end acted last, so a node
  rebuilds its flows' sum from its neighbours' current estimates (those that acted since it
  last did; the flows telescope). It does the same arithmetic in another order, so the two
  agree to rounding (a test holds them together); it is what lets 100,000 nodes fit.

The kernels are in `bids` (curves, crossings, settlement), `pushsum`, `flow` (Flow Updating)
and `phases` (the end of a phase); `market` holds the driver, `FastMarket`.

Flow Updating's cost is reading the neighbours' estimates: ~20 rows of k floats per node per
round (those that acted since it last did) at random in memory, ~100 ns each at 10^5 nodes.
Every column of the grid gets its own arithmetic, the same for all, so three ways gossip fewer
columns and give the very numbers of the whole grid, bit for bit (tests hold each against the
whole grid): a run of columns equal in every node gossips once (`distinct_columns`: the curves
are flat outside the bids' prices); the columns above a little past the true crossing wait
(`FastMarket._band`: a node reads them only if all below are < 0, and then the phase runs again
on the whole grid); and the columns go in two blocks, one per core. Who hears from whom in a
round depends on the order alone, so it is worked out once per round for all blocks (`heard_kernel`,
both cores), and each block then runs the round from those lists (`flow`), asking for the rows
of the node a few turns ahead before it needs them (redy.sim.prefetch). The estimates are kept,
as a message would carry them, in single precision (`flow_estimate_dtype`): half the bytes per
row; each node's value (rounded once to single) and flows stay in double, and a node moves its
flows by its estimate as stored, the very number its neighbours read. Prices come out within
1e-6 EUR/MWh of double precision (a test holds them).
"""

from __future__ import annotations

from redy.sim.array_balance.bids import BidTable
from redy.sim.array_balance.market import STATUS_NAMES, FastMarket

__all__ = ["STATUS_NAMES", "BidTable", "FastMarket"]
