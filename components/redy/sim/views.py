"""The views of a simulated overlay as a graph, measured independently of the engine that made
them: from the rows of node ids alone, with scipy's graph routines and numpy (the sweep, the
churn day and the study read their figures here)."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components, shortest_path

_PATH_SOURCES = 200  # sources of the sampled shortest paths


class Views:
    """The live nodes' views as a graph: entries (i -> j) read from the id rows."""

    def __init__(self, ids: np.ndarray, length: np.ndarray, alive: np.ndarray) -> None:
        n, c = ids.shape
        self.n = n
        self.alive = alive.copy()
        self.live = np.flatnonzero(alive)
        slot = np.arange(c)[None, :]
        held = (slot < length[:, None]) & alive[:, None] & (ids >= 0)
        src = np.repeat(np.arange(n), c).reshape(n, c)[held]
        dst = ids[held].astype(np.int64)
        dead = ~alive[dst]
        self.entries = len(dst)
        self.dead_entries = int(dead.sum())
        self._dead_targets = dst[dead]
        keep = ~dead & (src != dst)
        self.src, self.dst = src[keep], dst[keep]
        self._indeg = np.bincount(self.dst, minlength=n)

    def in_degree(self) -> np.ndarray:
        """How many live views name each live node."""
        return self._indeg[self.live]

    def in_degree_of(self, node: int) -> int:
        return int(self._indeg[node])

    def names_any(self, nodes: np.ndarray) -> bool:
        return bool(np.isin(self._dead_targets, nodes).any())

    def _undirected(self) -> csr_array:
        rows = np.concatenate([self.src, self.dst])
        cols = np.concatenate([self.dst, self.src])
        g = csr_array((np.ones(len(rows)), (rows, cols)), shape=(self.n, self.n))
        g.data[:] = 1.0  # duplicates summed: back to a simple graph
        return g

    def largest_component_fraction(self) -> float:
        if not len(self.live):
            return 0.0
        _, labels = connected_components(self._undirected(), directed=False)
        return float(np.bincount(labels[self.live]).max() / len(self.live))

    def clustering(self) -> float:
        """Mean local clustering coefficient of the live nodes (0 where degree < 2)."""
        a = self._undirected()
        deg = np.asarray(a.sum(axis=1)).ravel()
        closed = np.asarray((a @ a).multiply(a).sum(axis=1)).ravel()  # 2 x triangles
        with np.errstate(divide="ignore", invalid="ignore"):
            local = np.where(deg > 1, closed / (deg * (deg - 1)), 0.0)
        return float(local[self.live].mean()) if len(self.live) else 0.0

    def path_length(self, rng: random.Random) -> float:
        """Mean hop count between live nodes that reach each other, from up to
        `_PATH_SOURCES` random sources."""
        live = self.live.tolist()
        sources = live if len(live) <= _PATH_SOURCES else rng.sample(live, _PATH_SOURCES)
        dist = shortest_path(self._undirected(), unweighted=True, indices=sources)
        dist = dist[:, self.live]
        ok = np.isfinite(dist) & (dist > 0)
        return float(dist[ok].mean()) if ok.any() else 0.0

    def neighbours(self) -> list[np.ndarray]:
        """Each node's view (live entries only), as arrays; empty for dead nodes."""
        order = np.argsort(self.src, kind="stable")
        src, dst = self.src[order], self.dst[order]
        cuts = np.searchsorted(src, np.arange(self.n + 1))
        return [dst[cuts[i] : cuts[i + 1]] for i in range(self.n)]


def views_of(ov: Any) -> Views:
    """The views of an overlay of the fast engine (its id rows, lengths and live flags)."""
    return Views(ov.ids[: ov.n], ov.length[: ov.n], ov.alive[: ov.n])


# The overlay's figures both membership engines report (redy.sim.membership, redy.sim.array_cyclon).
SOURCES = 100  # BFS sources for the path length, the first of those samples
SAMPLES = 500  # clustering samples for large overlays


def largest_component(adj: list[list[int]], live: list[int]) -> int:
    """Size of the largest connected component among `live` nodes."""
    seen = bytearray(len(adj))
    best = 0
    for s in live:
        if seen[s]:
            continue
        seen[s] = 1
        size, queue = 0, deque([s])
        while queue:
            u = queue.popleft()
            size += 1
            for v in adj[u]:
                if not seen[v]:
                    seen[v] = 1
                    queue.append(v)
        best = max(best, size)
    return best


def metric_sample(live: list[int], rng: random.Random) -> list[int]:
    """The nodes clustering is averaged over; the first `SOURCES` are the path-length sources."""
    return live if len(live) <= SAMPLES else rng.sample(live, SAMPLES)


def overlay_report(
    live: int, deg: np.ndarray, clustering: float, path: float, samples: int, largest: int
) -> dict[str, Any]:
    return {
        "nodes": live,
        "in_degree": {
            "mean": float(deg.mean()) if len(deg) else 0.0,
            "std": float(deg.std()) if len(deg) else 0.0,
            "min": int(deg.min()) if len(deg) else 0,
            "max": int(deg.max()) if len(deg) else 0,
        },
        "clustering": clustering,
        "avg_path_length": path,
        "path_length_sources": min(samples, SOURCES),
        "clustering_samples": samples,
        "largest_component_fraction": largest / live if live else 0.0,
    }
