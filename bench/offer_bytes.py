"""Bytes per offer and per node per epoch on the wire, with each offer carrying its signer's
certificate (as before) and with the certificate sent once per neighbour (now), in the same run.

N nodes with real grid certificates (ECDSA P-256, limits stated) run `OfferCore` over in-memory
links (5 ms, the unit tests' `Net`) for `--epochs` epochs of 4 s; every message is encoded with
the codec the governance units use (`messages.encode_with`, byte for byte what goes to a
neighbour's broker) and counted. Steady state: the first epoch, in which every neighbour still
lacks every certificate, is reported on its own; the figures are the mean over the later
epochs. Both ways clear the same price (checked against the reference solver each epoch).
"certificates after epoch 1": certificates still carried then; with the certificate sent once,
these are first sends to a neighbour that was not yet a relay (past 20 peers a node passes
offers on to 8 of its neighbours, drawn afresh each epoch), so they fall epoch by epoch.

    python bench/offer_bytes.py [--nodes 12,50] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from redy import messages, pki
from redy.balancing import reference
from redy.balancing.offers import Action, OfferCore, Send, Signer, Timing, Verifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "balancing"))
from test_offers import CAPACITY_KW, Net, _grid

EPOCH_S = 4.0
START = 400.0


def _payload(a: Send, node: str) -> int:
    msg = messages.Gossip(
        sender=node, epoch=a.epoch, round=0, algorithm="offers", weight=0.0, values=(), ts_s=1.0
    )
    return len(messages.encode_with(msg, "offers", [messages.encode(o) for o in a.offers]))


def _run(d: Path, n: int, epochs: int, once: bool) -> tuple[list[int], list[int], int, bool]:
    """Bytes sent per epoch (all nodes), offers carried per epoch, certificates carried after
    the first epoch, and whether every node cleared the reference price every epoch."""
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
    certs_late = 0
    act = net._act

    def count(node: str, now: float, actions: list[Action]) -> None:
        nonlocal certs_late
        for a in actions:
            if isinstance(a, Send):
                sent[a.epoch] = sent.get(a.epoch, 0) + _payload(a, node)
                offers[a.epoch] = offers.get(a.epoch, 0) + len(a.offers)
                if a.epoch > int(START // EPOCH_S):
                    certs_late += sum(o.cert is not None for o in a.offers)
        act(node, now, actions)

    net._act = count  # type: ignore[method-assign]
    net.run(cores, START - 1, START + epochs * EPOCH_S - 0.1)
    ref = reference.solve([bids[k] for k in sorted(bids)]).price_eur_mwh
    exact = all(
        abs(c.result.price_eur_mwh - ref) < 1e-6 and c.heard == n - 1
        for cl in net.cleared.values()
        for c in cl
        if c is cl[-1]
    )
    order = sorted(sent)
    return [sent[e] for e in order], [offers[e] for e in order], certs_late, exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="12,50")
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki.ensure_ca(d)
        print(
            "N | way | first epoch: B/node | later epochs: B/node, B/offer carried"
            " | certificates after epoch 1 | exact price"
        )
        for n in (int(x) for x in a.nodes.split(",")):
            row = {}
            for once in (False, True):
                sent, carried, late, exact = _run(d, n, a.epochs, once)
                per_node = statistics.mean(sent[1:]) / n
                per_offer = sum(sent[1:]) / max(1, sum(carried[1:]))
                row[once] = per_node
                way = "cert once" if once else "cert each"
                print(
                    f"{n} | {way} | {sent[0] / n:,.0f} | {per_node:,.0f}, {per_offer:,.0f}"
                    f" | {late} | {exact}"
                )
            print(f"{n} | ratio once/each, later epochs | {row[True] / row[False]:.3f}")


if __name__ == "__main__":
    main()
