"""Plans over a rolling horizon: horizon offers, their checks, and the community's multi-period LP.

`offer` states what a node offers over the horizon (forecast, blocks, storage, deferrable
energy, ramp limits) and checks it against the node's certified limits; `problem` builds the
one LP every node solves from the same offers and solves it with HiGHS (prices per interval and
every node's plan); `reference` builds the same problem independently (linopy), for tests and
benchmarks only.
"""
