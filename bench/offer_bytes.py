"""Bytes per offer and per node per epoch on the wire, with each offer carrying its signer's
certificate (as before) and with certificates riding along only while new (now), in the same
run.

N nodes with real grid certificates (ECDSA P-256, limits stated) run `OfferCore` over in-memory
links (5 ms, the unit tests' `Net`) for `--epochs` epochs of 4 s, their views drawn afresh each
epoch (as shuffles move them: 3-6 of 8 entries per epoch at 1-2 s shuffle periods; `--fixed`
keeps them); every message is encoded with the codec the governance units use
(`messages.encode_with`, byte for byte what goes to a neighbour's broker) and counted. Steady
state: the first FRESH_EPOCHS epochs, in which every node is new to every other, are reported
on their own; the figures are the mean over the later epochs. Both ways clear the same price
(checked against the reference solver every epoch).

    python bench/offer_bytes.py [--nodes 12,50] [--epochs 8] [--fixed]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

import docpage

from redy import messages, pki
from redy.balancing import reference
from redy.balancing.offers import FRESH_EPOCHS, Action, OfferCore, Send, Timing
from redy.signing import Signer, Verifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "balancing"))
from test_offers import CAPACITY_KW, Net, _grid

EPOCH_S = 4.0
START = 400.0


def _payload(a: Send, node: str) -> int:
    msg = messages.Gossip(
        sender=node, epoch=a.epoch, round=0, algorithm="offers", weight=0.0, values=(), ts_s=1.0
    )
    return len(messages.encode_with(msg, "offers", [messages.encode(o) for o in a.offers]))


def _run(
    d: Path, n: int, epochs: int, once: bool, fixed: bool
) -> tuple[list[int], list[int], list[int], bool]:
    """Per epoch: bytes sent (all nodes), offers carried, of which with a certificate; and
    whether every node cleared the reference price with every peer every epoch."""
    bids, views, _, _ = _grid(d, n, seed=3, c=8)
    ca = pki.pki_dir(d) / "ca.crt"
    cores = {}
    for name in bids:
        signer = Signer(pki.identity(d, name), session=1)
        verifier = Verifier(ca, CAPACITY_KW)
        cores[name] = OfferCore(
            name,
            Timing(epoch_s=EPOCH_S),
            lambda b=bids[name]: b,
            lambda v=views[name]: v,
            signer.sign,
            verifier.refusal,
            CAPACITY_KW,
            bounds_kw=signer.grant.bounds_kw(CAPACITY_KW),
            cert_of=verifier.cert_of if once else None,
        )
    net = Net(views, latency_s=0.005)
    sent: dict[int, int] = {}
    offers: dict[int, int] = {}
    certs: dict[int, int] = {}
    act = net._act

    def count(node: str, now: float, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                sent[a.epoch] = sent.get(a.epoch, 0) + _payload(a, node)
                offers[a.epoch] = offers.get(a.epoch, 0) + len(a.offers)
                certs[a.epoch] = certs.get(a.epoch, 0) + sum(o.cert is not None for o in a.offers)
        act(node, now, actions)

    net._act = count  # type: ignore[method-assign]
    ref = reference.solve([bids[k] for k in sorted(bids)]).price_eur_mwh
    rng = random.Random(5)
    names = sorted(bids)
    exact = True
    first = int(START // EPOCH_S)
    for epoch in range(first, first + epochs):
        if not fixed and epoch > first:  # shuffles moved the views since the last epoch
            for name in names:
                views[name][:] = rng.sample([m for m in names if m != name], len(views[name]))
        net.run(cores, epoch * EPOCH_S - 0.1, epoch * EPOCH_S + EPOCH_S / 2)
        for cl in net.cleared.values():
            last = cl[-1]
            exact &= last.epoch == epoch and last.heard == n - 1
            exact &= abs(last.result.price_eur_mwh - ref) < 1e-6
    order = sorted(sent)
    return [sent[e] for e in order], [offers[e] for e in order], [certs[e] for e in order], exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="12,50")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--fixed", action="store_true", help="views that never change")
    a = ap.parse_args()
    views = "fixed views" if a.fixed else "views drawn afresh each epoch"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki.ensure_ca(d)
        print(
            f"{views}; N | way | first {FRESH_EPOCHS} epochs: B/node | later: B/node,"
            " B/offer carried, share of offers with a certificate | exact price every epoch"
        )
        for n in (int(x) for x in a.nodes.split(",")):
            row = {}
            for once in (False, True):
                sent, carried, certs, exact = _run(d, n, a.epochs, once, a.fixed)
                k = FRESH_EPOCHS
                per_node = statistics.mean(sent[k:]) / n
                per_offer = sum(sent[k:]) / max(1, sum(carried[k:]))
                share = sum(certs[k:]) / max(1, sum(carried[k:]))
                row[once] = per_node
                way = "certificate while new" if once else "certificate in every offer"
                print(
                    f"{n} | {way} | {statistics.mean(sent[:k]) / n:,.0f} | {per_node:,.0f},"
                    f" {per_offer:,.0f}, {share:.3f} | {exact}"
                )
            print(f"{n} | ratio of B/node, later epochs | {row[True] / row[False]:.3f}")


if __name__ == "__main__":
    with docpage.recorded("offer_bytes"):  # --docs: its page of the site too
        main()
