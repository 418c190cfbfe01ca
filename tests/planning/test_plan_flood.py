"""Horizon offers on the wire and passed on (redy.planning.wire, redy.planning.flood): signed with
real node keys, checked against the certified limits, flooded over a ring in memory until every
node holds every offer and solves the same plan; what is refused is dropped once, naming its
sender; a node with two offers is left out; a neighbour's early offers wait for their interval."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import pytest

from redy import messages, pki
from redy.balancing.offers import cert_missing
from redy.planning import supplier
from redy.planning.flood import Drop, PlanFlood, checker
from redy.planning.offer import Block, Deferrable, HorizonOffer, Storage, limits_refusal
from redy.planning.problem import solve
from redy.planning.wire import from_message, signed_body, to_message
from redy.signing import Signer, Verifier
from redy.units.node_state import NodeState
from redy.units.planner import ForecastError, MeterHistory, horizon_offer, schedule_digest

H = 8
START = 1000
Keys = tuple[Path, dict[str, Signer]]


def _offer(node: str, start: int = START, load_kw: float = 2.0) -> HorizonOffer:
    return HorizonOffer(
        node,
        start,
        [-load_kw] * H,
        blocks=(Block([3.0] * H, [60.0 + len(node)] * H),),
        storage=(Storage(5.0, 2.5, 2.0, 2.0, 0.95, 0.95, 0.08, 10.0),),
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    state = tmp_path_factory.mktemp("pki")
    ca, _ = pki.ensure_ca(state)
    signers = {
        n: Signer(pki.issue(state, n, ["127.0.0.1"], pki.Grant("node", 20.0, 10.0)), session=7)
        for n in ("a", "b", "c", "d", "e", "x")
    }
    return ca, signers


def _signed(signer: Signer, offer: HorizonOffer) -> messages.PlanOffer:
    sig = signer.sign_bytes(signed_body(offer, signer.session))
    return to_message(offer, sig=sig, session=signer.session, cert=signer.cert)


def _ca(keys: Keys) -> Path:
    return keys[0]


def _flood_of_a(keys: Keys) -> PlanFlood:
    """Node a's flood, begun with its own offer."""
    verifier = Verifier(_ca(keys), 1000.0)
    flood = PlanFlood("a", checker(verifier.signer_grant, 1000.0, H, 15.0))
    own = _offer("a")
    flood.begin(0.0, START, _signed(keys[1]["a"], own), own)
    return flood


def test_an_offer_survives_the_wire_and_its_signature_checks(keys: Keys) -> None:
    _, signers = keys
    offer = _offer("a")
    msg = _signed(signers["a"], offer)
    back = messages.decode("redy/b/grid/plan/a", messages.encode(messages.PlanGossip(
        sender="a", start=START, offers=(msg,))))  # fmt: skip
    assert from_message(back.offers[0]) == offer
    verifier = Verifier(_ca(keys), 1000.0)
    check = checker(verifier.signer_grant, 1000.0, H, 15.0)
    assert check(back.offers[0]) == offer
    # Another node's name on a's signature, a changed number, a bare copy with no certificate
    # held: each refused in words that name the offer's node.
    forged = attrs.evolve(msg, node="b")
    assert "signed by a's certificate" in str(check(forged))
    changed = attrs.evolve(msg, base_kw=(-3.0,) * H)
    assert "signature that does not match" in str(check(changed))
    assert Verifier(_ca(keys), 1000.0).signer_grant("a", None, b"", msg.sig) == cert_missing


def test_the_flood_gives_every_node_every_offer_and_the_same_plan(keys: Keys) -> None:
    _, signers = keys
    names = ["a", "b", "c", "d", "e"]
    verifier = {n: Verifier(_ca(keys), 1000.0) for n in names}
    floods = {n: PlanFlood(n, checker(verifier[n].signer_grant, 1000.0, H, 15.0)) for n in names}
    ring = {n: [names[(i + 1) % len(names)]] for i, n in enumerate(names)}  # directed: one out
    for n in names:
        offer = _offer(n, load_kw=1.0 + names.index(n))
        assert floods[n].begin(0.0, START, _signed(signers[n], offer), offer) == []
    drops: list[Drop] = []
    for _ in range(2 * len(names)):
        for n in names:
            for s in floods[n].wave(ring[n]):
                drops += floods[s.target].receive(1.0, n, s.start, s.offers, ring[s.target])
    assert drops == []
    held = {n: floods[n].offers() for n in names}
    assert all(len(h) == len(names) for h in held.values())
    b = supplier.boundary(START, H, 15.0, 100.0, 100.0)
    digests = {schedule_digest(solve(held[n], b)) for n in names}
    assert len(digests) == 1
    # Nothing new: the next wave sends nothing.
    assert all(floods[n].wave(ring[n]) == [] for n in names)


def test_beyond_its_limits_dropped_once_naming_the_sender_two_faced_left_out(keys: Keys) -> None:
    _, signers = keys
    flood = _flood_of_a(keys)
    big = HorizonOffer("x", START, [-9000.0] * H)
    beyond = _signed(signers["x"], big)
    drops = flood.receive(1.0, "b", START, [beyond], ["b"])
    assert drops == [
        Drop("b", "x", f"plan offer of x: interval {START}: net injection from -9000 to -9000 kW,"
             " beyond its certified limits of -20..10 kW")
    ]  # fmt: skip
    assert flood.receive(1.0, "c", START, [beyond], ["b"]) == []  # checked once
    wrong = HorizonOffer("b", START, [0.0] * (H - 1))
    [drop] = flood.receive(1.0, "b", START, [_signed(signers["b"], wrong)], ["b"])
    assert "expected 8 of 15 min" in drop.reason
    version = flood.version
    one, two = _offer("c", load_kw=1.0), _offer("c", load_kw=2.0)
    assert flood.receive(2.0, "b", START, [_signed(signers["c"], one)], ["b"]) == []
    assert flood.version == version + 1
    [drop] = flood.receive(2.0, "d", START, [_signed(signers["c"], two)], ["b"])
    assert drop.sender == "d" and "two different plan offers of c" in drop.reason
    assert [o.node for o in flood.offers()] == ["a"]
    # Both of c's offers go on (everyone who sees one sees the other); x's does not.
    sent = {o.sig for s in flood.wave(["e"]) for o in s.offers}
    assert beyond.sig not in sent and len(sent) == 3
    # Counted for the metrics: c's first offer taken in; each refusal by its kind.
    assert flood.admitted == 1
    assert flood.refused_by == {"limits": 1, "horizon": 1, "twice": 1}


def test_offers_for_the_next_interval_wait_for_it(keys: Keys) -> None:
    _, signers = keys
    flood = _flood_of_a(keys)
    early = _signed(signers["b"], _offer("b", START + 1))
    assert flood.receive(1.0, "b", START + 1, [early], ["b"]) == []
    assert [o.node for o in flood.offers()] == ["a"]
    nxt = _offer("a", START + 1)
    flood.begin(2.0, START + 1, _signed(signers["a"], nxt), nxt)
    assert [o.node for o in flood.offers()] == ["a", "b"]
    stale = _signed(signers["c"], _offer("c", START))
    assert flood.receive(3.0, "c", START, [stale], ["c"]) == []
    assert [o.node for o in flood.offers()] == ["a", "b"]


def test_the_supplier_is_the_same_on_every_call() -> None:
    a = supplier.boundary(5000, 96, 15.0, 100.0, 50.0)
    b = supplier.boundary(5000, 96, 15.0, 100.0, 50.0)
    assert a == b and len(a.import_eur_mwh) == 96
    for i, e in zip(a.import_eur_mwh, a.export_eur_mwh, strict=True):
        assert i - e == pytest.approx(2 * supplier.IMPORT_FEE_EUR_MWH)


def _unit(state: NodeState, name: str, role: str, quantity: str, rated: float, **kw: Any) -> None:
    meta = messages.UnitMeta(
        unit=name, role=role, device="x", quantity=quantity, rated_power_kw=rated,
        period_s=1.0, bd_seq=0, ts_s=0.0, capacity_kwh=kw.pop("capacity_kwh", None),
    )  # fmt: skip
    state.on_message(f"redy/n/units/{name}/meta", meta)
    state.on_message(f"redy/n/units/{name}/state", messages.UnitState(state="online", bd_seq=0))
    if role == "detection":
        state.on_message(
            f"redy/n/detection/{name}/measurement",
            messages.Measurement(seq=0, ts_s=0.0, energy_kwh=0.0, **kw),
        )
    else:
        state.on_message(
            f"redy/n/action/{name}/status",
            messages.ActuatorStatus(seq=0, ts_s=0.0, power_kw=0.0, on=True, **kw),
        )


def test_a_nodes_offer_from_its_units_reports_within_its_limits() -> None:
    state = NodeState("n")
    _unit(state, "pv", "detection", "production", 6.0, power_kw=2.0, forecast_kw=(4.0, 6.0))
    _unit(state, "load", "detection", "consumption", 3.0, power_kw=-1.0)
    _unit(state, "bat", "action", "storage", 5.0, min_kw=-5.0, max_kw=5.0, capacity_kwh=10.0)
    _unit(state, "gas", "action", "production", 20.0, min_kw=0.0, max_kw=4.0,
          marginal_cost_eur_mwh=(60.0, 80.0))  # fmt: skip
    _unit(state, "heater", "action", "consumption", 2.5, min_kw=-2.5, max_kw=0.0,
          marginal_cost_eur_mwh=120.0)  # fmt: skip
    offer = horizon_offer(state, 5, 12, 15.0, (-20.0, 40.0))[0]
    # The PV's forecast read between its power now (2 kW) and +1 h (4), +2 h (6), then held;
    # the load persists; the heater's full draw is in the base.
    assert offer.base_kw[0] == pytest.approx(2.0 + 2.0 * 0.125 - 1.0 - 2.5)
    assert offer.base_kw[-1] == pytest.approx(6.0 - 1.0 - 2.5)
    assert offer.storage == (
        Storage(10.0, 5.0, 5.0, 5.0, 0.95, 0.95, 0.08, 10.0),
    )  # fmt: skip
    assert [(b.kw[0], b.cost_eur_mwh[0]) for b in offer.blocks] == [
        (10.0, 65.0), (10.0, 75.0), (2.5, 120.0),
    ]  # fmt: skip
    # Held to tighter limits: the stores, then the dearest blocks, are left out.
    tight = horizon_offer(state, 5, 12, 15.0, (-4.0, 8.0))[0]
    assert tight.storage == () and len(tight.blocks) < 3
    assert limits_refusal(tight, (-4.0, 8.0)) is None


def test_forecast_errors_after_the_fact() -> None:
    errors = ForecastError()
    errors.start(2.0)  # nothing closed yet
    assert errors.last_kw is None and errors.mae_kw is None
    for kw in (1.0, 2.0, 3.0, 4.0):
        errors.sample(kw)
    errors.start(5.0)
    assert errors.last_kw == pytest.approx(0.5) and errors.mae_kw == pytest.approx(0.5)
    errors.sample(3.0)
    errors.start(0.0)
    assert errors.last_kw == pytest.approx(-2.0) and errors.mae_kw == pytest.approx(1.25)
    assert errors.intervals == 2


def test_a_store_starts_from_its_stated_charge_and_an_ev_is_a_deferrable_load() -> None:
    state = NodeState("n")
    _unit(state, "bat", "action", "storage", 5.0, min_kw=-5.0, max_kw=5.0, capacity_kwh=10.0,
          soc=0.8)  # fmt: skip
    _unit(state, "ev", "action", "consumption", 7.4, min_kw=-7.4, max_kw=0.0,
          energy_due_kwh=10.0, due_in_s=3600.0)  # fmt: skip
    offer = horizon_offer(state, 5, 12, 15.0, (-20.0, 40.0))[0]
    assert offer.storage[0].soc_kwh == pytest.approx(8.0)
    assert offer.deferrable == (Deferrable(10.0, 0, 4, 7.4),)
    assert offer.blocks == () and offer.base_kw == (0.0,) * 12
    # Due after the horizon: only what it could not draw after its end.
    later = NodeState("n")
    _unit(later, "ev", "action", "consumption", 7.4, min_kw=-7.4, max_kw=0.0,
          energy_due_kwh=30.0, due_in_s=4 * 3600.0)  # fmt: skip
    [due] = horizon_offer(later, 5, 12, 15.0, (-20.0, 40.0))[0].deferrable
    assert (due.end, due.energy_kwh) == (12, pytest.approx(30.0 - 7.4))


def test_a_restarted_node_s_new_offer_replaces_its_old_one_whatever_the_order(keys: Keys) -> None:
    _, signers = keys
    old_session, new_session = copy.copy(signers["c"]), copy.copy(signers["c"])
    old_session.session, new_session.session = 5, 9
    v1, v2, v3 = (_offer("c", load_kw=kw) for kw in (1.0, 2.0, 3.0))
    twice = [_signed(old_session, v1), _signed(old_session, v2)]  # two-faced in session 5
    restart = _signed(new_session, v3)  # then restarted
    held = []
    for order in ([*twice, restart], [restart, *twice], [twice[0], restart, twice[1]]):
        flood = _flood_of_a(keys)
        for o in order:
            flood.receive(1.0, "b", START, [o], ["b"])
        held.append(flood.offers())
    assert held[0] == held[1] == held[2] == [_offer("a"), v3]
    # A node restarting again and again within one interval is left out of it.
    flood = _flood_of_a(keys)
    drops = []
    for session in range(1, 6):
        restarted = copy.copy(signers["c"])
        restarted.session = session
        drops += flood.receive(1.0, "b", START, [_signed(restarted, v1)], ["b"])
    assert [o.node for o in flood.offers()] == ["a"]
    assert [d.reason for d in drops] == ["4 sessions of c"]


def test_a_restarted_neighbour_gets_every_offer_again(keys: Keys) -> None:
    _, signers = keys
    flood = _flood_of_a(keys)
    first, second = copy.copy(signers["c"]), copy.copy(signers["c"])
    first.session, second.session = 5, 6
    flood.receive(1.0, "c", START, [_signed(first, _offer("c"))], ["c"])
    assert {o.node for s in flood.wave(["c"]) for o in s.offers} == {"a"}
    assert flood.wave(["c"]) == []  # c has them all
    flood.receive(2.0, "c", START, [_signed(second, _offer("c"))], ["c"])  # c restarted
    assert {o.node for s in flood.wave(["c"]) for o in s.offers} == {"a", "c"}


def test_a_meter_without_a_forecast_is_expected_at_its_last_interval_s_mean() -> None:
    state = NodeState("n")
    history = MeterHistory()
    for kw in (-1.0, -3.0):
        _unit(state, "meter", "detection", "consumption", 5.0, power_kw=kw)
        history.sample(state)
    means = history.means()
    assert means == {"meter": -2.0} and history.means() == {}
    offer = horizon_offer(state, 5, 4, 15.0, (-20.0, 40.0), means)[0]
    assert offer.base_kw == (-2.0,) * 4
    assert horizon_offer(state, 5, 4, 15.0, (-20.0, 40.0))[0].base_kw == (-3.0,) * 4  # no history
