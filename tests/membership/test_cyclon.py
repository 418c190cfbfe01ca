"""The shuffle core: CYCLON's rules, the redy detector, and properties over random runs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redy.errors import RedyError
from redy.membership.cyclon import Cyclon, Neighbour

pytestmark = pytest.mark.pure


def _e(node: str, age: int = 0) -> Neighbour:
    return Neighbour(node, f"mqtt://127.0.0.1:{20000 + hash(node) % 1000}", age)


def _node(name: str = "p", c: int = 4, sl: int = 2, detector: str = "redy") -> Cyclon:
    return Cyclon(name, f"mqtt://{name}:1", c, sl, random.Random(7), detector=detector)


def test_shuffle_length_must_be_below_view_size() -> None:
    with pytest.raises(RedyError, match="0 < SL < c"):
        Cyclon("p", "mqtt://p:1", 4, 4, random.Random(1))


def test_tick_ages_picks_the_oldest_and_removes_it_before_sending() -> None:
    p = _node()
    p.seed([_e("a", 3), _e("b", 1), _e("c", 5)])
    out = p.tick()
    assert out is not None
    assert out.target.node == "c" and out.target.age == 6
    assert "c" not in {e.node for e in p.view}
    assert {e.node: e.age for e in p.view} == {"a": 4, "b": 2}


def test_request_holds_sl_minus_one_others_and_the_fresh_own_entry() -> None:
    p = _node(c=6, sl=3)
    p.seed([_e(n, i) for i, n in enumerate("abcde")])
    out = p.tick()
    assert out is not None
    assert len(out.entries) == 3
    assert out.entries[-1] == Neighbour("p", "mqtt://p:1", 0)
    assert out.target.node not in {e.node for e in out.entries}


def test_merge_fills_empty_slots_then_replaces_sent_entries_never_self_or_duplicates() -> None:
    q = _node("q", c=3, sl=2)
    q.seed([_e("a", 5), _e("b", 5), _e("c", 5)])
    reply = q.on_request(_e("p"), [_e("x", 1), _e("p", 0), _e("q", 0), _e("a", 1)])
    view = {e.node: e.age for e in q.view}
    assert len(view) <= 3 and "q" not in view
    assert view.get("a", 1) == 1  # if kept, a duplicate keeps its younger copy
    assert len(reply) == 2 and all(e.node != "p" for e in reply)
    # Replaced entries are only ones q sent back.
    sent = {e.node for e in reply}
    assert set("abc") - set(view) <= sent


def test_a_duplicate_keeps_the_younger_copy() -> None:
    q = _node("q", c=4, sl=2)
    q.seed([_e("a", 5)])
    q.on_request(_e("p"), [_e("a", 1), _e("b", 7)])
    q.on_request(_e("p"), [_e("b", 9)])
    assert {e.node: e.age for e in q.view} == {"a": 1, "b": 7}


def test_request_is_answered_while_own_request_is_pending() -> None:
    p = _node(c=4, sl=2)
    p.seed([_e("a", 2), _e("b", 1)])
    out = p.tick()
    assert out is not None
    reply = p.on_request(_e("z"), [_e("z", 0), _e("y", 0)])
    assert reply  # answered
    assert p.on_reply(out.nonce, [_e("w", 0)])
    assert "w" in {e.node for e in p.view}


def test_stale_or_unknown_reply_is_dropped() -> None:
    p = _node()
    p.seed([_e("a", 2), _e("b", 1)])
    out = p.tick()
    assert out is not None
    assert p.on_reply(out.nonce, [_e("w", 0)])
    assert not p.on_reply(out.nonce, [_e("v", 0)])  # duplicate: already answered
    assert not p.on_reply(12345, [_e("u", 0)])
    assert {"v", "u"}.isdisjoint(e.node for e in p.view)


def test_cyclon_timeout_keeps_the_target_removed() -> None:
    p = _node(detector="cyclon")
    p.seed([_e("a", 2), _e("b", 1)])
    out = p.tick()
    assert out is not None
    p.on_timeout(out.nonce)
    assert out.target.node not in {e.node for e in p.view}


def test_redy_timeout_is_weak_evidence_three_strikes_drop_the_target() -> None:
    p = _node(c=4, sl=2)
    p.seed([_e("a", 9), _e("b", 1)])
    for strike in range(3):
        out = p.tick()
        assert out is not None and out.target.node == "a"
        p.on_timeout(out.nonce)
        present = "a" in {e.node for e in p.view}
        assert present == (strike < 2)


def test_redy_unreachable_drops_at_once_and_refuses_stale_copies() -> None:
    p = _node(c=4, sl=2)
    p.seed([_e("a", 1), _e("b", 1)])
    p.tick()
    p.on_unreachable("b")
    assert "b" not in {e.node for e in p.view}
    p.on_request(_e("z"), [_e("b", 5)])  # an old copy passed around by others
    assert "b" not in {e.node for e in p.view}
    p.tick()
    p.tick()
    p.on_request(_e("z"), [_e("b", 0)])  # fresh from b itself: b is back
    assert "b" in {e.node for e in p.view}


def test_a_dead_address_passed_around_for_a_live_node_gets_only_that_address_refused() -> None:
    """Evidence is about an address: failing to reach b at an address a member invented
    tombstones that address, not b; b's own entries still merge."""
    p = _node(c=4, sl=2)
    p.seed([_e("a", 1)])
    bogus = Neighbour("b", "mqtts://127.0.0.1:9", 3)
    p.on_request(_e("evil"), [bogus])
    p.on_unreachable("b", bogus.broker)
    assert "b" not in {e.node for e in p.view}
    p.on_request(_e("z"), [bogus])  # the dead address again: refused
    assert "b" not in {e.node for e in p.view}
    p.on_request(_e("y"), [_e("b", 5)])  # b at its real address, even an old copy: taken
    assert ("b", _e("b").broker) in {(e.node, e.broker) for e in p.view}


def test_a_third_party_cannot_re_point_a_nodes_address() -> None:
    """A younger copy of a neighbour with another broker, from someone else, is ignored (it
    would send our pushes to a bogus address and lose the neighbour); the node itself may move.
    Entries that claim other nodes at the sender's own broker are dropped."""
    p = _node(c=8, sl=2)
    p.seed([_e("a", 5), _e("b", 5)])
    evil = _e("evil")
    p.on_request(
        evil, [Neighbour("a", "mqtts://127.0.0.1:9", 0), Neighbour("twin", evil.broker, 0)]
    )
    brokers = {e.node: e.broker for e in p.view}
    assert brokers["a"] == _e("a").broker and "twin" not in brokers
    p.tick()
    p.on_request(_e("b"), [Neighbour("b", "mqtts://127.0.0.1:8", 0)])  # b moved, says b
    assert {e.node: e.broker for e in p.view}["b"] == "mqtts://127.0.0.1:8"


def test_one_sender_places_at_most_sl_entries_per_period() -> None:
    p = _node(c=16, sl=2)
    evil = _e("evil")
    for i in range(5):
        p.on_request(evil, [_e(f"fake-{i}-a", 0), _e(f"fake-{i}-b", 0)])
    assert len(p.view) == 2  # the first request's two: the rest came in the same period


def test_cyclon_detector_ignores_unreachable_reports() -> None:
    p = _node(detector="cyclon")
    p.seed([_e("a", 1), _e("b", 1)])
    p.on_unreachable("b")
    assert "b" in {e.node for e in p.view}


# -- properties over random runs of a small overlay -----------------------------------------

_events = st.lists(
    st.tuples(st.sampled_from(["tick", "lose", "crash", "unreachable"]), st.integers(0, 9)),
    min_size=1,
    max_size=120,
)


@given(
    events=_events,
    seed=st.integers(0, 2**32),
    detector=st.sampled_from(["cyclon", "redy", "verify"]),
)
@settings(max_examples=120, deadline=None)
def test_views_never_hold_self_duplicates_too_many_or_negative_ages(
    events: list[tuple[str, int]], seed: int, detector: str
) -> None:
    rng = random.Random(seed)
    n, c, sl = 10, 4, 2
    names = [f"n{i}" for i in range(n)]
    nodes = {
        x: Cyclon(x, f"mqtt://{x}:1", c, sl, random.Random(rng.random()), detector=detector)
        for x in names
    }
    for i, x in enumerate(names):
        nodes[x].seed([Neighbour(names[(i + 1) % n], f"mqtt://{names[(i + 1) % n]}:1", 0)])
    alive = set(names)
    ever_sent = {Neighbour(x, f"mqtt://{x}:1", 0)[:2] for x in names}
    for kind, k in events:
        x = names[k]
        if x not in alive:
            continue
        if kind == "crash" and len(alive) > 2:
            alive.discard(x)
            continue
        if kind == "unreachable":
            victims = [e.node for e in nodes[x].view if e.node not in alive]
            for v in victims:
                nodes[x].on_unreachable(v)
            continue
        out = nodes[x].tick()
        if out is None:
            continue
        ever_sent.update(e[:2] for e in out.entries)
        q = out.target.node
        if q not in alive or kind == "lose":
            nodes[x].on_timeout(out.nonce)
            continue
        reply = nodes[q].on_request(Neighbour(x, f"mqtt://{x}:1", 0), out.entries)
        ever_sent.update(e[:2] for e in reply)
        nodes[x].on_reply(out.nonce, reply)
        for node in nodes.values():
            view = node.view
            ids = [e.node for e in view]
            assert node.me not in ids
            assert len(ids) == len(set(ids))
            assert len(ids) <= c
            assert all(e.age >= 0 for e in view)
            assert all(e[:2] in ever_sent for e in view)


def test_probe_reaches_a_node_outside_the_view_and_its_reply_merges() -> None:
    c = Cyclon("a", "mqtt://a", 4, 2, random.Random(1))
    c.seed([Neighbour("b", "mqtt://b", 0)])
    c.on_unreachable("b")  # lost: tombstoned
    assert len(c) == 0
    out = c.probe(Neighbour("b", "mqtt://b", 0))
    assert out.target.node == "b" and out.entries[-1] == Neighbour("a", "mqtt://a", 0)
    assert c.on_reply(out.nonce, [Neighbour("c", "mqtt://c", 1), Neighbour("d", "mqtt://d", 2)])
    assert {e.node for e in c.view} == {"c", "d"}


def test_an_unanswered_probe_changes_nothing() -> None:
    c = Cyclon("a", "mqtt://a", 4, 2, random.Random(1))
    c.seed([Neighbour("c", "mqtt://c", 0)])
    out = c.probe(Neighbour("z", "mqtt://z", 0))
    c.on_timeout(out.nonce)
    assert [e.node for e in c.view] == ["c"]


def test_verify_lists_each_admitted_entry_once_for_the_driver_to_dial() -> None:
    p = _node(c=4, sl=2, detector="verify")
    p.seed([_e("a"), _e("b")])
    assert set(p.take_admitted()) == {"a", "b"}
    assert p.take_admitted() == ()
    out = p.tick()
    assert out is not None
    p.on_reply(out.nonce, [_e("c"), _e("a", 9)])  # "a" is a duplicate: not admitted again
    assert p.take_admitted() == ("c",)


def test_verify_drops_an_admitted_entry_whose_dial_fails_and_refuses_its_copies() -> None:
    p = _node(c=4, sl=2, detector="verify")
    p.seed([_e("a"), _e("dead", 2)])
    for node in p.take_admitted():
        if node == "dead":
            p.on_unreachable(node)  # the driver's dial was refused
    assert {e.node for e in p.view} == {"a"}
    p.on_request(_e("q"), [_e("dead", 5)])  # a stale copy from before the evidence
    assert "dead" not in {e.node for e in p.view}
    assert "dead" not in p.take_admitted()


def test_redy_and_cyclon_list_nothing_to_dial() -> None:
    for detector in ("redy", "cyclon"):
        p = _node(detector=detector)
        p.seed([_e("a"), _e("b")])
        assert p.take_admitted() == ()
