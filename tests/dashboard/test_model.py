"""The dashboard's pure model: rows, liveness, overlay edges, common price and balance."""

from __future__ import annotations

import pytest

from redy import messages
from redy.dashboard.model import GridModel
from redy.topics import render

pytestmark = pytest.mark.pure


def _state(node: str, epoch: int, price: float, net_kw: float) -> bytes:
    prod, cons = max(net_kw, 0.0), max(-net_kw, 0.0)
    return messages.encode(
        messages.NodeEnergyState(
            node=node, ts_s=1.0, production_kw=prod, consumption_kw=cons, net_kw=net_kw,
            flex_up_kw=0.0, flex_down_kw=0.0, cost_eur_h=0.0, storage_kwh=0.0,
            storage_capacity_kwh=0.0, forecast_kw=(), units_online=1, units_total=1,
            epoch=epoch, price_eur_mwh=price, status="cleared",
        )
    )  # fmt: skip


def _grid() -> GridModel:
    m = GridModel(stale_after_s=10)
    for node in ("a", "b", "c"):
        m.expect(f"mqtt://127.0.0.1:1{node}", node)
        m.on_connection(f"mqtt://127.0.0.1:1{node}", True)
    return m


def test_common_price_is_the_median_of_the_latest_full_epoch_and_balance_sums_its_nets() -> None:
    m = _grid()
    for node, price, net in (("a", 90.0, 100.0), ("b", 90.2, -60.0), ("c", 95.0, -30.0)):
        m.on_message(
            f"mqtt://127.0.0.1:1{node}",
            render("node_state", node=node),
            _state(node, 7, price, net),
            0.0,
        )
    # epoch 8 has only one report so far: the common price stays on epoch 7
    m.on_message(
        "mqtt://127.0.0.1:1a", render("node_state", node="a"), _state("a", 8, 91.0, 5.0), 0.0
    )
    snap = m.snapshot(1.0)
    assert snap["common_price"] == {"epoch": 7, "price_eur_mwh": 90.2, "agree": 2, "of": 3}
    (e7, e8) = snap["epochs"]
    assert e7["balance_kw"] == pytest.approx(10.0) and e7["nodes"] == 3 and e8["nodes"] == 1
    assert [r["node"] for r in snap["nodes"]] == ["a", "b", "c"]


def test_liveness_follows_connections_and_the_age_of_the_last_state() -> None:
    m = _grid()
    m.on_message(
        "mqtt://127.0.0.1:1a", render("node_state", node="a"), _state("a", 1, 1.0, 1.0), 0.0
    )
    m.on_message(
        "mqtt://127.0.0.1:1b", render("node_state", node="b"), _state("b", 1, 1.0, 1.0), 0.0
    )
    m.on_connection("mqtt://127.0.0.1:1b", False)
    live = {r["node"]: r["liveness"] for r in m.snapshot(5.0)["nodes"]}
    assert live == {"a": "up", "b": "unreachable", "c": "waiting"}
    assert {r["node"]: r["liveness"] for r in m.snapshot(11.0)["nodes"]}["a"] == "stale"


def test_units_online_come_from_the_units_retained_states_and_edges_from_views() -> None:
    m = _grid()
    url = "mqtt://127.0.0.1:1a"
    for unit, state in (("meter", "online"), ("heater", "offline")):
        body = messages.encode(messages.UnitState(state=state, bd_seq=1))
        m.on_message(url, render("unit_state", node="a", unit=unit), body, 0.0)
    entries = tuple(messages.ViewEntry(node=n, broker="mqtt://127.0.0.1:2", age=0) for n in "bz")
    view = messages.encode(messages.View(node="a", ts_s=0.0, entries=entries))
    m.on_message(url, render("view", node="a"), view, 0.0)
    snap = m.snapshot(0.0)
    row = next(r for r in snap["nodes"] if r["node"] == "a")
    assert (row["units_online"], row["units_total"]) == (1, 2)
    assert snap["edges"] == [["a", "b"], ["a", "z"]]
    assert "z" in snap["vertices"] and "z" not in [r["node"] for r in snap["nodes"]]


def test_invalid_or_foreign_messages_change_nothing() -> None:
    m = _grid()
    before = m.version
    assert not m.on_message("u", render("node_state", node="a"), b"{not json", 0.0)
    assert not m.on_message("u", "elsewhere/topic", b"{}", 0.0)
    # a state whose body names another node than its topic is refused
    assert not m.on_message("u", render("node_state", node="a"), _state("b", 1, 1.0, 1.0), 0.0)
    assert m.version == before


def test_the_model_keeps_what_the_launch_summary_prints() -> None:
    """The table of `redy launch --table` reads this model too: per node the states taken,
    their mean net and the peaks, the flexibility, and the simulated time of the latest state."""
    m = GridModel()
    m.expect("c", "house-1")
    m.on_connection("c", True)
    for ts, prod, cons in ((3600.0, 4.0, 1.0), (7200.0, 2.0, 3.0)):
        state = messages.NodeEnergyState(
            node="house-1",
            ts_s=ts,
            production_kw=prod,
            consumption_kw=cons,
            net_kw=prod - cons,
            flex_up_kw=1.5,
            flex_down_kw=0.5,
            cost_eur_h=0.0,
            storage_kwh=0.0,
            storage_capacity_kwh=0.0,
            units_online=2,
            units_total=2,
        )
        m.on_message("c", "redy/house-1/governance/state", messages.encode(state), ts)
    snap = m.snapshot(7200.0)
    (row,) = snap["nodes"]
    assert (row["states"], row["mean_net_kw"]) == (2, 1.0)
    assert (row["peak_production_kw"], row["peak_consumption_kw"]) == (4.0, 3.0)
    assert (row["flex_up_kw"], row["flex_down_kw"]) == (1.5, 0.5)
    assert snap["sim_time_s"] == 7200.0
