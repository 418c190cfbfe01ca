"""Horizon offers: their JSON, their checks against certified limits, malformed input."""

from __future__ import annotations

import logging

import orjson
import pytest

from redy.errors import InvalidMessage
from redy.pki import Grant
from redy.planning.offer import (
    Block,
    Deferrable,
    HorizonOffer,
    Storage,
    admit,
    from_json,
    limits_refusal,
    read_offers,
)

pytestmark = pytest.mark.pure


def _house(node: str = "h1", pv_kw: float = 3.0) -> HorizonOffer:
    return HorizonOffer(
        node,
        40,
        [pv_kw - 1.0] * 4,
        storage=(Storage(10.0, 5.0, 3.0, 3.0, 0.95, 0.95, 0.08, 10.0),),
        deferrable=(Deferrable(6.0, 1, 4, 7.4),),
    )


def test_an_offer_survives_its_json() -> None:
    offer = HorizonOffer(
        "gas1", 7, [0.0, 0.0], blocks=(Block([5, 5], [90, 95]),), ramp_kw=2.0, dispatch_now_kw=1
    )
    for o in (offer, _house()):
        assert from_json(o.to_json()) == o


def test_the_widest_range_is_every_charge_and_draw_to_every_block_and_discharge() -> None:
    o = _house()
    assert o.injection_range_kw()[0] == (2.0 - 3.0, 2.0 + 3.0)
    assert o.injection_range_kw()[1] == (2.0 - 3.0 - 7.4, 2.0 + 3.0)


def test_an_offer_within_its_certified_limits_passes() -> None:
    assert limits_refusal(_house(), Grant(import_kw=10.0, export_kw=6.0).bounds_kw(1e5)) is None


def test_an_offer_beyond_its_limits_is_dropped_with_one_line_naming_the_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grants = {"h1": Grant(import_kw=10.0, export_kw=6.0), "h2": Grant(import_kw=5.0, export_kw=6.0)}
    with caplog.at_level(logging.WARNING, logger="redy.planning.offer"):
        kept = admit([_house("h2"), _house("h1")], grants, capacity_kw=1e5)
    assert [o.node for o in kept] == ["h1"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "h2" in lines[0] and "interval 41" in lines[0] and "certified limits" in lines[0]


def test_a_node_without_stated_limits_is_held_to_the_grid_bound() -> None:
    huge = HorizonOffer("big", 0, [50_000.0])
    assert admit([huge], {}, capacity_kw=100_000.0) == [huge]
    assert admit([huge], {}, capacity_kw=10_000.0) == []


def test_a_node_with_two_different_offers_is_left_out() -> None:
    assert admit([_house("h1"), _house("h1", pv_kw=4.0)], {}, capacity_kw=100.0) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'{"node": "a", "start": 0}',
        b'{"node": "a", "start": 0, "base_kw": ["x"]}',
        b'{"node": "a", "start": 0, "base_kw": [1.0], "extra": 1}',
        b'{"node": "a", "start": 0.5, "base_kw": [1.0]}',
        b'{"node": "a", "start": 0, "base_kw": [1.0], "storage": [{"capacity_kwh": 1}]}',
        b'{"node": "a", "start": 0, "base_kw": [1.0], "blocks": [{"kw": [1, 2], '
        b'"cost_eur_mwh": [1, 2]}]}',
        b'{"node": "a", "start": 0, "base_kw": [1.0], "deferrable": [{"energy_kwh": 1, '
        b'"begin": 0, "end": 5, "power_kw": 1}]}',
        b'{"node": "a", "start": 0, "base_kw": [1e999]}',
        b'{"node": "a", "start": 0, "base_kw": [1.0], "storage": [{"capacity_kwh": 1, '
        b'"soc_kwh": 2, "charge_kw": 1, "discharge_kw": 1}]}',
        orjson.dumps({"node": "a", "start": 0, "base_kw": [1.0], "ramp_kw": True}),
    ],
)
def test_a_malformed_offer_is_one_line_of_error(raw: bytes) -> None:
    with pytest.raises(InvalidMessage) as e:
        from_json(raw)
    assert "\n" not in str(e.value) and str(e.value)


def test_a_malformed_offer_among_good_ones_costs_one_log_line_naming_its_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = _house("h1")
    with caplog.at_level(logging.WARNING, logger="redy.planning.offer"):
        got = read_offers([("h1", good.to_json()), ("h9", b'{"node": "h9", "start": [')])
    assert got == [good]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "h9" in line and "not JSON" in line and "\n" not in line
