"""The dashboard's plan view: the latest interval's plan most nodes hold, its next 24 h of prices
and each holder's planned injection."""

from __future__ import annotations

import pytest

from redy import messages
from redy.dashboard.model import GridModel
from redy.topics import render

pytestmark = pytest.mark.pure


def _plan(node: str, start: int, digest: str, n: int = 192) -> bytes:
    return messages.encode(
        messages.Plan(
            node=node, ts_s=1.0, start=start, interval_s=5.0, interval_min=15.0, offers=3,
            digest=digest, objective_eur=1.0, price_eur_mwh=tuple(float(t) for t in range(n)),
            status=("cleared",) * n, import_kw=(0.0,) * n, export_kw=(0.0,) * n,
            injection_kw=(float(ord(node[0])),) * n,
        )
    )  # fmt: skip


def test_the_page_shows_the_latest_plan_most_nodes_hold_over_24_h() -> None:
    m = GridModel()
    assert m.snapshot(0.0)["plan"] is None
    for node, start, digest in (("a", 9, "d1"), ("b", 10, "d2"), ("c", 10, "d2"), ("d", 10, "d3")):
        assert m.on_message("x", render("plan", node=node), _plan(node, start, digest), 0.0)
    plan = m.snapshot(0.0)["plan"]
    assert (plan["start"], plan["digest"], plan["agree"], plan["of"]) == (10, "d2", 2, 3)
    assert len(plan["price_eur_mwh"]) == len(plan["hours"]) == 96  # 24 h of 15 minutes
    assert plan["hours"][4] == 1.0
    assert sorted(plan["injection_kw"]) == ["b", "c"]
    # A plan in another node's name is not taken.
    assert not m.on_message("x", render("plan", node="a"), _plan("b", 11, "d4"), 0.0)
