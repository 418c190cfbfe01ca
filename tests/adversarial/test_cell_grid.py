"""The cell market in real processes: six honest nodes (brokers, governance units, meters and
gas plants: tests/faults/faultgrid.py) with `market: cells` and `cell_size: 3` find each other's
signed cards over the overlay, place themselves in two cells of three, and every node clears,
epoch after epoch, the reference solver's price on the honest offers (read off the cell-mates'
brokers, where each offer travels). One `CELLS ...` line with the figures
(`pytest -s tests/adversarial/test_cell_grid.py`)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from redy import messages
from redy.balancing import reference
from redy.balancing.curves import Bid, Dispatchable, Fixed
from redy.errors import InvalidMessage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultgrid import CLEARED, EPOCH_S, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HONEST = 6
CELL_SIZE = 3  # six members: two cells of three
STARTUP_S = 60.0
WATCH_EPOCHS = 5


def _as_bids(values: list[float]) -> list[Bid]:
    """An offer's values as the reference solver's bids: its base, then one bid per block."""
    out: list[Bid] = [Fixed(values[0])]
    for kw, lo, hi in zip(values[1::3], values[2::3], values[3::3], strict=True):
        out.append(Dispatchable(0.0, kw, lo, cost_max_eur_mwh=hi if hi > lo else None))
    return out


def test_six_nodes_in_two_cells_clear_the_reference_price(tmp_path: Path, mqtt_client: Any) -> None:
    t_start = time.monotonic()
    with running(tmp_path, HONEST, STARTUP_S, market="cells", cell_size=CELL_SIZE) as grid:
        up_s = time.monotonic() - t_start
        watches = []
        for i, node in enumerate(grid.nodes):
            creds = grid.state / node / "credentials.json"
            password = json.loads(creds.read_text())["users"]["operator"]
            w = mqtt_client(grid.ports[i][0], "operator", password)
            w.subscribe(f"redy/{node}/grid/cells/+", qos=0)
            watches.append(w)
        t0 = time.time()
        time.sleep(WATCH_EPOCHS * EPOCH_S)
        first, last = int(t0 // EPOCH_S) + 1, int(time.time() // EPOCH_S) - 1
        # Every offer, as the cell-mates' brokers carry it.
        offers: dict[int, dict[str, list[float]]] = {}
        cell_bytes = 0
        for w in watches:
            for m in w.drain():
                cell_bytes += len(m.payload)
                with contextlib.suppress(InvalidMessage):
                    msg = messages.decode(m.topic, m.payload)
                    body = orjson.loads(msg.body) if msg.body else {}
                    for o in body.get("o", []) if body.get("t") == "offers" else []:
                        offers.setdefault(o["epoch"], {})[o["node"]] = o["values"]
        table = grid.by_epoch()
        checked = []
        for epoch in range(first, last + 1):
            got = offers.get(epoch, {})
            assert sorted(got) == grid.nodes, (epoch, sorted(got))
            ref = reference.solve([_as_bids(got[n]) for n in sorted(got)])
            row = table.get(epoch, {})
            prices = [p for p, status in row.values() if status in CLEARED]
            assert len(prices) == HONEST, grid.describe()
            for p in prices:
                assert p == pytest.approx(ref.price_eur_mwh, abs=1e-6), (epoch, p, ref, got)
            checked.append(ref.price_eur_mwh)
        assert len(checked) >= WATCH_EPOCHS - 2, grid.describe()
        logs = {f.name: f.read_text() for f in (grid.state / "logs").glob("*.governance.log")}
        # Each node's last word on its cell (before every card had come, it was alone in one).
        cells = [
            re.findall(r"members' offers counted, cell (\d) of (\d)", t)[-1] for t in logs.values()
        ]
        assert sorted(cells) == [("0", "2")] * 3 + [("1", "2")] * 3, cells
        assert not any("Traceback" in t for t in logs.values())
        assert all(grid.governance_alive().values())
    print(
        f"CELLS {HONEST} nodes in 2 cells of 3: grid up and cleared in {up_s:.0f} s; every node"
        f" the reference price in epochs {first}..{last} ({', '.join(f'{p:g}' for p in checked)}"
        f" EUR/MWh); {cell_bytes / HONEST / (last - first + 1) / 1024:.1f} KiB of cell messages"
        " per node and epoch"
    )
