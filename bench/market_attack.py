"""How far one member moves everyone's price, measured on market cores over in-memory links.

N honest nodes (the bids of tests/balancing/test_epochs.py) clear one epoch; one member answers
every honest push with a push of its own, to the same node, epoch, phase, window and round,
whose curve crosses at the price it wants (400 EUR/MWh here, then -100). Three attacks:

- `weightless`: weight 0 and +-1e12 kW (the attack as first found);
- `legal max`: weight 1 and +-capacity (the bounds let it carry up to 4 times that);

each with and without the bounds (MassBounds, capacity 1,000 kW). The baseline is the price the
reference solver (redy.balancing.reference, exact, independent of the gossip) finds for the
honest bids alone, and for the honest bids plus an honest member of the same capacity bidding
its full range around the attacker's price (storage of -capacity..+capacity at that price): what
an honest member of that size could do. Prints, per N, each price and its distance from the
honest optimum.

    python bench/market_attack.py [--nodes 6,12,50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import docpage
import numpy as np

from redy.balancing.aggregation import MassBounds
from redy.balancing.curves import Dispatchable
from redy.balancing.reference import solve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "balancing"))
from test_epochs import _bids, _prices_under, _steering

CAPACITY_KW = 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="6,12,50")
    a = ap.parse_args()
    bounds = MassBounds(CAPACITY_KW)
    for n in (int(x) for x in a.nodes.split(",")):
        honest = [_bids(i) for i in range(n)]
        optimum = solve(honest).price_eur_mwh
        print(f"N={n}: honest optimum {optimum:.2f} EUR/MWh")
        for target in (400.0, -100.0):
            peer = solve([*honest, [Dispatchable(-CAPACITY_KW, CAPACITY_KW, target)]])
            print(
                f"  target {target:g}: an honest member of {CAPACITY_KW:g} kW bidding its full"
                f" range there moves the price to {peer.price_eur_mwh:.2f}"
                f" ({peer.price_eur_mwh - optimum:+.2f})"
            )
            for name, weight, amplitude in (("weightless", 0.0, 1e12), ("legal max", 1.0, 1e3)):
                for label, b in (("no bounds", None), ("bounds", bounds)):
                    got, _ = _prices_under(_steering(target, weight, amplitude), b, n)
                    mean = float(np.mean(got))
                    print(
                        f"    {name:10s} {label:9s}: {len(got)} nodes cleared at"
                        f" {min(got):.2f}..{max(got):.2f} ({mean - optimum:+.2f} from the optimum)"
                    )


if __name__ == "__main__":
    with docpage.recorded("market_attack"):  # --docs: its page of the site too
        main()
