"""Graph checks on views (node -> the nodes it lists), shared by the overlay tests."""

from __future__ import annotations

from collections import deque


def connected(views: dict[str, set[str]]) -> bool:
    """Whether the nodes of `views` form one component, edges taken both ways (links to nodes
    outside `views` ignored)."""
    nodes = set(views)
    if not nodes:
        return False
    adj: dict[str, set[str]] = {n: set() for n in nodes}
    for n, vs in views.items():
        for m in vs & nodes:
            adj[n].add(m)
            adj[m].add(n)
    start = next(iter(nodes))
    seen, queue = {start}, deque([start])
    while queue:
        for m in adj[queue.popleft()]:
            if m not in seen:
                seen.add(m)
                queue.append(m)
    return seen == nodes
