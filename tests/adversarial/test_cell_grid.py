"""The cell market in real processes: six honest nodes (brokers, governance units, meters and
gas plants: tests/faults/faultgrid.py) with `market: cells` and `cell_size: 3` find each other's
signed cards over the overlay, place themselves in two cells of three, and every node clears,
epoch after epoch, the reference solver's price on the honest offers (read off the cell-mates'
brokers, where each offer travels). A member with a valid certificate that signs 9 MW at the
price floor, some 400 times its certified export, is refused by its cell-mates, named in their
logs, and the honest nodes keep the reference price on their own offers. One `CELLS ...` line each with the figures
(`pytest -s tests/adversarial/test_cell_grid.py`)."""

from __future__ import annotations

import contextlib
import json
import os
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
from faultgrid import CLEARED, EPOCH_S, FaultGrid, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HONEST = 6
CELL_SIZE = 3  # six members: two cells of three
STARTUP_S = 60.0
WATCH_EPOCHS = 5
LIAR_SITE = Path(__file__).with_name("liar_site")  # its sitecustomize makes a node lie


def _as_bids(values: list[float]) -> list[Bid]:
    """An offer's values as the reference solver's bids: its base, then one bid per block."""
    out: list[Bid] = [Fixed(values[0])]
    for kw, lo, hi in zip(values[1::3], values[2::3], values[3::3], strict=True):
        out.append(Dispatchable(0.0, kw, lo, cost_max_eur_mwh=hi if hi > lo else None))
    return out


def _watch(grid: FaultGrid, mqtt_client: Any) -> list[Any]:
    """The operator of every node, reading the cell messages its broker carries."""
    watches = []
    for i, node in enumerate(grid.nodes):
        creds = grid.state / node / "credentials.json"
        password = json.loads(creds.read_text())["users"]["operator"]
        w = mqtt_client(grid.ports[i][0], "operator", password)
        w.subscribe(f"redy/{node}/grid/cells/+", qos=0)
        watches.append(w)
    return watches


def _offers(watches: list[Any]) -> tuple[dict[int, dict[str, list[float]]], int]:
    """Every offer the watched brokers carried (epoch -> node -> values), and their bytes."""
    offers: dict[int, dict[str, list[float]]] = {}
    size = 0
    for w in watches:
        for m in w.drain():
            size += len(m.payload)
            with contextlib.suppress(InvalidMessage):
                msg = messages.decode(m.topic, m.payload)
                body = orjson.loads(msg.body) if msg.body else {}
                for o in body.get("o", []) if body.get("t") == "offers" else []:
                    offers.setdefault(o["epoch"], {})[o["node"]] = o["values"]
    return offers, size


def _reference_prices(
    grid: FaultGrid, offers: dict[int, dict[str, list[float]]], honest: list[str], epochs: range
) -> list[float]:
    """Per epoch, the reference price on the honest offers, asserted to be every honest node's."""
    table = grid.by_epoch()
    checked = []
    for epoch in epochs:
        got = {n: v for n, v in offers.get(epoch, {}).items() if n in honest}
        assert sorted(got) == sorted(honest), (epoch, sorted(got))
        ref = reference.solve([_as_bids(got[n]) for n in sorted(got)])
        row = table.get(epoch, {})
        prices = [row[n][0] for n in honest if n in row and row[n][1] in CLEARED]
        assert len(prices) == len(honest), grid.describe()
        for p in prices:
            assert p == pytest.approx(ref.price_eur_mwh, abs=1e-6), (epoch, p, ref, got)
        checked.append(ref.price_eur_mwh)
    return checked


def _governance_logs(grid: FaultGrid) -> dict[str, str]:
    """Each governance unit's log, asserted free of tracebacks, every governance alive."""
    logs = {f.name: f.read_text() for f in (grid.state / "logs").glob("*.governance.log")}
    assert not any("Traceback" in t for t in logs.values())
    assert all(grid.governance_alive().values())
    return logs


def test_six_nodes_in_two_cells_clear_the_reference_price(tmp_path: Path, mqtt_client: Any) -> None:
    t_start = time.monotonic()
    with running(tmp_path, HONEST, STARTUP_S, market="cells", cell_size=CELL_SIZE) as grid:
        up_s = time.monotonic() - t_start
        watches = _watch(grid, mqtt_client)
        t0 = time.time()
        time.sleep(WATCH_EPOCHS * EPOCH_S)
        first, last = int(t0 // EPOCH_S) + 1, int(time.time() // EPOCH_S) - 1
        offers, cell_bytes = _offers(watches)
        checked = _reference_prices(grid, offers, grid.nodes, range(first, last + 1))
        assert len(checked) >= WATCH_EPOCHS - 2, grid.describe()
        logs = _governance_logs(grid)
        # Each node's last word on its cell (before every card had come, it was alone in one).
        cells = [
            re.findall(r"members' offers counted, cell (\d) of (\d)", t)[-1] for t in logs.values()
        ]
        assert sorted(cells) == [("0", "2")] * 3 + [("1", "2")] * 3, cells
    print(
        f"CELLS {HONEST} nodes in 2 cells of 3: grid up and cleared in {up_s:.0f} s; every node"
        f" the reference price in epochs {first}..{last} ({', '.join(f'{p:g}' for p in checked)}"
        f" EUR/MWh); {cell_bytes / HONEST / (last - first + 1) / 1024:.1f} KiB of cell messages"
        " per node and epoch"
    )


def test_a_member_beyond_its_certified_limits_is_refused_and_named(
    tmp_path: Path, mqtt_client: Any
) -> None:
    # Seven members in one cell (f = 2): the liar n6 runs the honest code but for its offer.
    liar = {
        HONEST: {"PYTHONPATH": os.pathsep.join([str(LIAR_SITE), os.environ.get("PYTHONPATH", "")])}
    }
    honest = [f"n{i}" for i in range(HONEST)]
    with running(
        tmp_path, HONEST + 1, STARTUP_S, market="cells", cell_size=8, env=liar, common=honest
    ) as grid:
        watches = _watch(grid, mqtt_client)
        t0 = time.time()
        time.sleep(WATCH_EPOCHS * EPOCH_S)
        first, last = int(t0 // EPOCH_S) + 1, int(time.time() // EPOCH_S) - 1
        offers, _ = _offers(watches)
        lies = {tuple(o["n6"]) for o in offers.values() if "n6" in o}
        assert lies == {(0.0, 9000.0, -500.0, -500.0)}, lies
        checked = _reference_prices(grid, offers, honest, range(first, last + 1))
        assert len(checked) >= WATCH_EPOCHS - 2, grid.describe()
        logs = _governance_logs(grid)
        named = [
            n
            for n, t in logs.items()
            if re.search(
                r"dropped a cell message from n6: offer of n6: net injection from 0 to 9000 kW,"
                r" beyond its certified limits of -[0-9.]+\.\.[0-9.]+ kW",
                t,
            )
        ]
        assert sorted(named) == [f"{n}.governance.log" for n in honest], named
    print(
        f"CELLS a liar of 9 MW at -500 EUR/MWh among {HONEST} honest nodes in one cell: refused"
        f" and named by all {HONEST}; every honest node the reference price on the honest offers"
        f" in epochs {first}..{last} ({', '.join(f'{p:g}' for p in checked)} EUR/MWh)"
    )
