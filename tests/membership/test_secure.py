"""The signed shuffle's core (redy.membership.secure, issue 26): pure, milliseconds."""

from __future__ import annotations

import random

import pytest

from redy.errors import RedyError
from redy.membership.secure import Descriptor, SecureCyclon, fork_point

pytestmark = pytest.mark.pure


def _node(i: int, c: int = 4, sl: int = 2) -> SecureCyclon:
    return SecureCyclon(i, f"sim://{i}", c, sl, random.Random(i), detector="verify")


def _held(owner: int, holder: int, born: int = 0) -> Descriptor:
    return Descriptor(owner, f"sim://{owner}", born, (owner, holder))


def _with_view(i: int, owners: list[int], born: int = 0) -> SecureCyclon:
    n = _node(i)
    n.seed([], born)
    for o in owners:
        d = _held(o, i, born)
        n._view[o] = d
        n._seen[(o, born)] = d
    return n


def test_fork_point_names_the_node_where_two_chains_part() -> None:
    assert fork_point((1, 2, 3), (1, 2, 4)) == 2
    assert fork_point((1, 2), (1, 2, 3, 4)) is None  # one path, seen at two moments
    assert fork_point((1, 5), (1, 6)) == 1  # the owner handed its descriptor to two nodes


def test_a_shuffle_hands_each_entry_on_once_and_keeps_a_terminal_copy() -> None:
    a = _with_view(0, [1, 2, 3])
    out = a.tick(1)
    assert out is not None and out.token is not None
    q = out.target.owner
    assert out.token.chain[-1] == 0  # the token was handed to us: we may use it
    own = out.entries[-1]
    assert own == Descriptor(0, "sim://0", 1, (0, q))
    sent = [d.owner for d in out.entries[:-1]]
    assert len(sent) == 1 and all(d.chain[-1] == q for d in out.entries)
    # The copy kept is terminal: the next request cannot hand it on again.
    assert q not in a.neighbours()
    again = a.tick(2)
    assert again is not None
    assert sent[0] not in [d.owner for d in again.entries[:-1]]


def test_the_target_answers_once_per_token_and_no_more_than_it_got() -> None:
    q = _with_view(1, [5, 6, 7])
    token = _held(1, 0)
    entries = [Descriptor(2, "sim://2", 0, (2, 0, 1)), Descriptor(0, "sim://0", 1, (0, 1))]
    reply = q.on_request(0, token, entries, 1)
    assert reply is not None and len(reply) == 2
    assert all(d.chain[-2:] == (1, 0) for d in reply)
    assert {0, 2} <= set(q.neighbours())
    # Given one entry, it answers with one: it never gives more than it takes.
    r = _with_view(3, [5, 6, 7])
    one = r.on_request(0, _held(3, 0), [Descriptor(0, "sim://0", 1, (0, 3))], 1)
    assert one is not None and len(one) == 1
    # The same token again (a copy, or a replay): refused, and no verdict (one path).
    assert q.on_request(0, token, entries, 1) is None
    assert q.convicted == {}


def test_a_token_handed_on_twice_convicts_the_node_that_forked_it() -> None:
    q = _with_view(1, [5, 6, 7])
    # Member 9 got q's descriptor from 0 and handed it to both 2 and 3.
    t2 = Descriptor(1, "sim://1", 0, (1, 0, 9, 2))
    t3 = Descriptor(1, "sim://1", 0, (1, 0, 9, 3))
    assert q.on_request(2, t2, [Descriptor(2, "sim://2", 1, (2, 1))], 1) is not None
    assert q.on_request(3, t3, [Descriptor(3, "sim://3", 1, (3, 1))], 1) is None
    assert 9 in q.convicted
    assert [v.culprit for v in q.take_verdicts()] == [9]
    assert q.news() and q.news()[0].culprit == 9


def test_copies_of_one_descriptor_met_anywhere_convict_the_copier() -> None:
    h = _with_view(1, [5, 6, 7])
    # Member 9 issued its descriptor of period 3 to two nodes: h sees one copy in a request,
    # the other in a partner's view digest.
    token = _held(1, 4)
    got = h.on_request(4, token, [Descriptor(9, "sim://9", 3, (9, 4, 1))], 3)
    assert got is not None
    h._observe(8, [Descriptor(9, "sim://9", 3, (9, 8))])
    assert 9 in h.convicted
    assert 9 not in h.neighbours()  # and its entry left the view


def test_a_forged_dead_or_misaddressed_entry_convicts_its_sender() -> None:
    for bad in (
        Descriptor(7, "sim://elsewhere", 5, (7, 4, 1), valid=False),  # signature fails
        Descriptor(7, "sim://7", -50, (7, 4, 1)),  # long dead: honest nodes drop those
        Descriptor(7, "sim://7", 5, (7, 6, 1)),  # not handed to us by the sender
        Descriptor(7, "sim://7", 5, (7, 2, 3, 8, 6, 4, 1)),  # handed on past the limit
    ):
        h = _with_view(1, [5, 6])
        assert h.on_request(4, _held(1, 4), [_held(4, 1, 5), bad], 5) is None
        assert 4 in h.convicted, bad


def test_convictions_spread_with_the_messages_and_close_the_door() -> None:
    h = _with_view(1, [5, 6, 9])
    from redy.membership.secure import Verdict

    h.learn([Verdict(9, "handed 9/3 on twice")])
    assert 9 not in h.neighbours() and 9 in h.convicted
    assert h.on_request(9, _held(1, 9), [_held(9, 1, 1)], 1) is None
    assert h.take_verdicts() == []  # learnt, not found: not ours to log as found


def test_an_untokened_contact_places_only_its_sender_sl_times_a_period() -> None:
    h = _with_view(1, [5, 6, 7])
    joiner = [Descriptor(8, "sim://8", 2, (8, 1)), Descriptor(5, "sim://5", 2, (5, 8, 1))]
    reply = h.on_request(8, None, joiner, 2)
    assert reply is not None and len(reply) == 1
    assert 8 in h.neighbours()
    assert h.on_request(3, None, [Descriptor(3, "sim://3", 2, (3, 1))], 2) is not None
    # SL (2) such contacts a period, no more; one without its own descriptor is refused.
    assert h.on_request(4, None, [Descriptor(4, "sim://4", 2, (4, 1))], 2) is None
    assert h.on_request(9, None, [], 3) is None


def test_unreachable_and_dead_descriptors_leave_the_view() -> None:
    h = _with_view(1, [5, 6, 7])
    h.on_unreachable(5)
    assert 5 not in h.neighbours()
    out = h.tick(h.max_age + 5)  # everything is older than its lifetime now
    assert out is None and len(h) == 0


def test_parameters_are_checked() -> None:
    with pytest.raises(RedyError, match="shuffle length"):
        SecureCyclon(0, "x", 3, 3, random.Random(1))


def test_a_starved_node_asks_a_sampled_node_instead_of_shuffling() -> None:
    """Only terminal entries left (members answered short): the next period contacts a node
    the samplers hold, without a token, carrying only our own descriptor."""
    h = _with_view(1, [5, 6])
    h._saw(7, "sim://7")
    h._terminal.update({5, 6})
    assert h.starved
    out = h.tick(1)
    assert out is not None and out.token is None and out.target.owner == 7
    assert [d.owner for d in out.entries] == [1]
    assert set(h.neighbours()) == {5, 6}  # nothing redeemed, nothing handed on


def test_a_fork_carries_the_two_copies_that_prove_it() -> None:
    q = _with_view(1, [5, 6, 7])
    t2 = Descriptor(1, "sim://1", 0, (1, 0, 9, 2))
    t3 = Descriptor(1, "sim://1", 0, (1, 0, 9, 3))
    q.on_request(2, t2, [Descriptor(2, "sim://2", 1, (2, 1))], 1)
    q.on_request(3, t3, [Descriptor(3, "sim://3", 1, (3, 1))], 1)
    (v,) = q.take_verdicts()
    assert v.proof == (t2, t3) and fork_point(v.proof[0].chain, v.proof[1].chain) == 9
    # A forged token convicts where it arrives, with nothing to show others.
    h = _with_view(4, [5, 6])
    bad = Descriptor(4, "sim://4", 0, (4, 8), valid=False)
    assert h.on_request(8, bad, [Descriptor(8, "sim://8", 1, (8, 4))], 1) is None
    assert [v.proof for v in h.take_verdicts()] == [()]


def test_what_an_untokened_contact_carries_beyond_its_own_descriptor_is_checked() -> None:
    """Member 9 handed its descriptor of period 2 to member 8 and to us: 8's first contact
    carries the one copy, 9's the other; the two part at 9."""
    h = _with_view(1, [5, 6, 7])
    via8 = Descriptor(9, "sim://9", 2, (9, 8, 1))
    assert h.on_request(8, None, [via8, Descriptor(8, "sim://8", 2, (8, 1))], 2) is not None
    assert 9 not in h.neighbours()  # not placed: only the sender's own descriptor is
    direct = Descriptor(9, "sim://9", 2, (9, 1))
    assert h.on_request(9, None, [direct], 2) is None
    (v,) = h.take_verdicts()
    assert v.culprit == 9 and v.proof == (via8, direct)
    assert 8 in h.neighbours()  # 8 handed on what it got once: nothing against it


def test_one_descriptor_a_period_even_if_the_clock_steps_back_or_the_process_restarts() -> None:
    a = _with_view(0, [1, 2, 3, 4])
    assert a.tick(5) is not None
    assert a.tick(5) is None and a.tick(4) is None  # a second of period 5 would be a fork
    assert a.tick(6) is not None
    b = _with_view(0, [1, 2, 3], born=5)
    b.resume(9)  # restarted in period 9: that period's may be out already
    assert b.tick(9) is None
    out = b.tick(10)
    assert out is not None and out.entries[-1].born == 10


def test_a_copy_of_a_node_we_lost_still_proves_a_fork() -> None:
    """Member 9's broker did not answer our dial (tombstoned), yet its second copy of one
    descriptor convicts it."""
    h = _with_view(1, [5, 6, 7])
    via8 = Descriptor(9, "sim://9", 2, (9, 8, 1))
    assert h.on_request(8, None, [via8, Descriptor(8, "sim://8", 2, (8, 1))], 2) is not None
    h.on_unreachable(9)
    assert h.on_request(9, None, [Descriptor(9, "sim://9", 2, (9, 1))], 2) is None
    assert 9 in h.convicted
