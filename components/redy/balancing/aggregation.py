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
        self._s *= 0.5
        self._w *= 0.5
        return [GossipOut(target, self.node, self.epoch, self._round, self._w, self._s.copy())]

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
