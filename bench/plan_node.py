"""What planning costs one governance unit per interval: the signed horizon offers of N nodes
decoded, checked and solved, as redy.units.planner does it.

The offers are `redy sim plan`'s community at the start of its first day over 96 intervals
(redy.sim.plan.day_offers), each signed with a node certificate of a fresh grid CA
(redy.planning.wire, redy.signing) and carried in PlanGossip messages of the flood's batches.
One receiving node then, timed in CPU seconds of this process (one core):

- `decode`: the messages through the codec (topics.yaml's checks);
- `check`: every offer through the flood core (redy.planning.flood): rebuilt from its message,
  its horizon, its signature against its certificate, its certified limits per interval;
- `solve`: the community's LP from the admitted offers (redy.planning.problem.solve).

    python bench/plan_node.py [--nodes 12,50,200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from redy import messages, pki
from redy.planning.flood import PlanFlood, _batches, checker
from redy.planning.problem import solve
from redy.planning.wire import signed_body, to_message
from redy.signing import Signer, Verifier
from redy.sim.plan import day_offers

H = 96


def run(n: int, state: Path) -> dict[str, float]:
    offers, boundary = day_offers(n, seed=1, horizon=H)
    grant = pki.Grant("node", 1e5, 1e5)
    signed = []
    for o in offers:
        signer = Signer(pki.issue(state, o.node, ["127.0.0.1"], grant), session=1)
        sig = signer.sign_bytes(signed_body(o, 1))
        signed.append(to_message(o, sig=sig, session=1, cert=signer.cert))
    me = signed[0]
    payloads = [
        messages.encode(messages.PlanGossip(sender="peer", start=me.start, offers=b))
        for b in _batches(signed[1:])
    ]
    topic = f"redy/{offers[0].node}/grid/plan/peer"
    verifier = Verifier(state / "pki" / "ca.crt", 1e5)
    flood = PlanFlood(offers[0].node, checker(verifier.signer_grant, 1e5, H, 15.0))
    flood.begin(0.0, me.start, me, offers[0])
    t0 = time.process_time()
    received = [messages.decode(topic, p) for p in payloads]
    t1 = time.process_time()
    for g in received:
        assert flood.receive(1.0, "peer", g.start, g.offers, ["peer"]) == []
    t2 = time.process_time()
    held = flood.offers()
    assert len(held) == n
    solve(held, boundary)
    t3 = time.process_time()
    kib = sum(len(p) for p in payloads) / 1024
    return {"decode": t1 - t0, "check": t2 - t1, "solve": t3 - t2, "kib": kib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="12,50,200")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(
        f"{'nodes':>6} {'KiB in':>8} {'decode s':>9} {'check s':>9} {'solve s':>9} {'total s':>9}"
    )
    for n in (int(x) for x in args.nodes.split(",")):
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as d:
                runs.append(run(n, Path(d)))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = med["decode"] + med["check"] + med["solve"]
        print(
            f"{n:>6} {med['kib']:>8.0f} {med['decode']:>9.3f} {med['check']:>9.3f}"
            f" {med['solve']:>9.3f} {total:>9.3f}"
        )


if __name__ == "__main__":
    main()
