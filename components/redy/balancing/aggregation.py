"""Gossip averaging of curve vectors, sans-IO: push-sum and Flow Updating behind one interface.

Both take `start_epoch(epoch, values)`, give the messages of one round with `round(neighbours)`,
take `on_message(msg)` and `on_undeliverable(msg)` (the target's broker refused it), and answer
`estimate()`: the node's estimate of the average of all
nodes' values. Messages carry the epoch and round; other epochs, and a duplicate (same sender,
epoch, round), are ignored. A node that starts mid-epoch waits for the next one.

- Push-sum (Kempe, Dobra, Gehrke, FOCS 2003): each round a node keeps half of its mass (sum
  vector s, weight w) and pushes the other half to one random neighbour; s/w converges to the
  average. Mass lost with a message or a crash is lost for the epoch.
- Flow Updating (Jesus, Baquero, Almeida, SRDS 2010): a node keeps, per neighbour, the flow it
  has sent and that neighbour's last estimate; its estimate averages its own value corrected by
  the flows with its neighbours' estimates. A message overwrites state instead of adding mass,
  so a lost message is repaired by the next one and nothing is lost for good.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any

import attrs
import numpy as np

NodeId = Any


@attrs.frozen(eq=False)
class GossipOut:
    """One message: to `target`, from `sender`, for `epoch`/`round`."""

    target: NodeId
    sender: NodeId
    epoch: int
    round: int
    weight: float
    values: np.ndarray
    estimate: np.ndarray | None = None


# The most weight one push carries. An honest node holds weight 1 on average but often more than
# 2 (several pushes reach it in one round): capping its push at 1 slowed push-sum so much that
# 400 simulated nodes after a crash were 1.9 EUR/MWh apart after 30 rounds instead of 0.0002. At
# 4 no honest push in our runs reaches the cap; a member gains nothing from the difference, as
# it may send a push every round anyway.
MAX_PUSH_WEIGHT = 4.0
# Pushes a node tries per round when a neighbour's broker refuses them (a dead node): both
# simulator engines' push-sum.
PUSH_TRIES = 3
# The grid's default bound on one node's net injection at any price (kW): above the largest
# device the project ships (a 50 MW CSP plant); a grid of households sets far less.
CAPACITY_KW = 100_000.0


@attrs.frozen
class MassBounds:
    """What one push-sum message may carry, so that a member, honest about its name but not
    about its mass, hands a node no more than an honest node could.

    An honest node's mass is a sum of curves scaled by weights that add up to its own weight, so
    every value lies within weight x the largest net injection a node may have (`capacity_kw`,
    a grid setting), and the curve part (the first `k` values) does not fall as the price rises
    (supply rises and demand falls with the price). An honest node never pushes more than
    MAX_PUSH_WEIGHT (see `PushSum.round`), and a phase has at most `rounds` pushes.
    """

    capacity_kw: float = CAPACITY_KW
    rounds: int = 60

    def refusal(self, weight: float, values: np.ndarray, k: int, round_: int) -> str | None:
        """Why a message breaks the bounds (None: it keeps them)."""
        if not 0 < weight <= MAX_PUSH_WEIGHT * (1 + 1e-12):
            return f"weight {weight:g}, expected in (0, {MAX_PUSH_WEIGHT:g}]"
        if not 1 <= round_ <= self.rounds:
            return f"round {round_}, expected 1..{self.rounds}"
        if values.size == 0 or not np.all(np.isfinite(values)):
            return "values that are not finite numbers"
        limit = weight * self.capacity_kw
        worst = float(np.max(np.abs(values)))
        if worst > limit * (1 + 1e-9):
            return (
                f"a value of {worst:.6g} kW, beyond weight x capacity = {limit:.6g} kW"
                f" (capacity {self.capacity_kw:g} kW)"
            )
        fall = float(np.max(values[: k - 1] - values[1:k])) if k > 1 else 0.0
        if fall > limit * 1e-9:
            return f"a curve that falls by {fall:.6g} kW as the price rises"
        return None


class PushSum:
    """Push-sum for one node."""

    algorithm = "pushsum"

    def __init__(self, node: NodeId, rng: random.Random) -> None:
        self.node = node
        self._rng = rng
        self.epoch = -1
        self._round = 0
        self._s: np.ndarray = np.zeros(0)
        self._w = 0.0
        self._seen: set[tuple[Hashable, int]] = set()

    def start_epoch(self, epoch: int, values: np.ndarray) -> None:
        self.epoch = epoch
        self._round = 0
        self._s = np.array(values, dtype=float)
        self._w = 1.0
        self._seen.clear()

    def round(self, neighbours: Sequence[NodeId]) -> list[GossipOut]:
        self._round += 1
        if not neighbours or self.epoch < 0:
            return []
        target = neighbours[self._rng.randrange(len(neighbours))]
        # Half of the mass, but never more than MAX_PUSH_WEIGHT (what a receiver accepts): a node
        # that gathered more keeps the rest for its next rounds.
        share = min(0.5, MAX_PUSH_WEIGHT / self._w) if self._w > 0 else 0.5
        sent_s, sent_w = self._s * share, self._w * share
        self._s -= sent_s
        self._w -= sent_w
        return [GossipOut(target, self.node, self.epoch, self._round, sent_w, sent_s)]

    def on_undeliverable(self, msg: GossipOut) -> None:
        """The target's broker refused the message: the mass comes back instead of vanishing."""
        if msg.epoch == self.epoch:
            self._s += msg.values
            self._w += msg.weight

    def on_message(self, msg: GossipOut) -> bool:
        if msg.epoch != self.epoch or (msg.sender, msg.round) in self._seen:
            return False
        if msg.values.shape != self._s.shape or not msg.weight >= 0:
            return False  # not this market's curve, or no mass: it would corrupt the sum
        self._seen.add((msg.sender, msg.round))
        self._s += msg.values
        self._w += msg.weight
        return True

    def estimate(self) -> np.ndarray | None:
        return self._s / self._w if self._w > 0 else None


class FlowUpdating:
    """Flow Updating for one node."""

    algorithm = "flow"

    def __init__(self, node: NodeId, rng: random.Random) -> None:
        self.node = node
        self.epoch = -1
        self._round = 0
        self._v: np.ndarray = np.zeros(0)
        self._flow: dict[NodeId, np.ndarray] = {}
        self._est: dict[NodeId, np.ndarray] = {}
        self._e: np.ndarray | None = None
        self._last_round: dict[NodeId, int] = {}

    def start_epoch(self, epoch: int, values: np.ndarray) -> None:
        self.epoch = epoch
        self._round = 0
        self._v = np.array(values, dtype=float)
        self._flow.clear()
        self._est.clear()
        self._last_round.clear()
        self._e = self._v.copy()

    def round(self, neighbours: Sequence[NodeId]) -> list[GossipOut]:
        self._round += 1
        if self.epoch < 0 or self._e is None:
            return []
        # Forget neighbours that left the view: their flows leave with them.
        for gone in [j for j in self._flow if j not in neighbours]:
            del self._flow[gone]
            self._est.pop(gone, None)
        zero = np.zeros_like(self._v)
        own = self._v - sum((self._flow.get(j, zero) for j in neighbours), zero)
        e = (own + sum((self._est.get(j, self._e) for j in neighbours), zero)) / (
            len(neighbours) + 1
        )
        out = []
        for j in neighbours:
            f = self._flow.get(j, zero) + (e - self._est.get(j, self._e))
            self._flow[j] = f
            self._est[j] = e
            out.append(GossipOut(j, self.node, self.epoch, self._round, 0.0, f, e))
        self._e = e
        return out

    def on_undeliverable(self, msg: GossipOut) -> None:
        """Nothing to restore: the flow to that neighbour is dropped with it next round."""

    def on_message(self, msg: GossipOut) -> bool:
        if msg.epoch != self.epoch or msg.estimate is None:
            return False
        if msg.values.shape != self._v.shape or msg.estimate.shape != self._v.shape:
            return False  # not this market's curve
        if self._last_round.get(msg.sender, -1) >= msg.round:
            return False  # a duplicate or an older message: state only moves forward
        self._last_round[msg.sender] = msg.round
        self._flow[msg.sender] = -msg.values
        self._est[msg.sender] = msg.estimate
        return True

    def estimate(self) -> np.ndarray | None:
        return self._e


Aggregator = PushSum | FlowUpdating
ALGORITHMS: dict[str, type[PushSum] | type[FlowUpdating]] = {
    "pushsum": PushSum,
    "flow": FlowUpdating,
}
