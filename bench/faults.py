"""launch/grid12.yaml through the faults of the fault-injection suite, against an undisturbed run.

Launches grid12 (12 nodes, one `redy launch`) and records every node's retained state from its
own broker (tests/faults/recorder.py). Then, one after another, each fault of a node's broker or
governance unit, held `--hold` seconds, each followed by `--settle` seconds of recovery. Prints,
per fault: the epochs until every node cleared a common price again, the fraction of
node-epochs cleared during the fault and its recovery window, and the same fraction for an
undisturbed window of the same length measured in the same run (the baseline; the ratio is the
figure to read).

    python bench/faults.py [--hold 12] [--settle 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docpage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "faults"))

from faultgrid import CLEARED, broker_pid, governance_pid  # noqa: E402

from redy.launch.parser import parse  # noqa: E402

GRID = ROOT / "launch" / "grid12.yaml"
EPOCH_S = 4.0  # grid12's default


def _states(rec: Path) -> list[tuple[float, dict]]:
    out = []
    with contextlib.suppress(OSError):
        for line in rec.read_text().splitlines():
            with contextlib.suppress(ValueError):
                r = json.loads(line)
                if r["topic"].endswith("governance/state") and r["msg"]:
                    out.append((r["t"], r["msg"]))
    return out


class Grid12:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.desc = parse(GRID, {})
        self.nodes = [n.node for n in self.desc.nodes]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        log = open(self.tmp / "launch.log", "wb")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "redy", "launch", str(GRID), "--state-dir", str(self.state)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        for n in self.desc.nodes:
            creds = self.state / n.node / "credentials.json"
            deadline = time.monotonic() + 60
            while not creds.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "tests" / "faults" / "recorder.py"),
                        "--broker",
                        n.broker.local_uri,
                        "--credentials",
                        str(creds),
                        "--node",
                        n.node,
                        "--out",
                        str(self.tmp / f"rec-{n.node}.jsonl"),
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def table(self) -> dict[int, dict[str, tuple[float | None, str]]]:
        out: dict[int, dict[str, tuple[float | None, str]]] = {}
        for node in self.nodes:
            for _t, s in _states(self.tmp / f"rec-{node}.jsonl"):
                if s.get("epoch") is not None:
                    out.setdefault(s["epoch"], {})[node] = (s.get("price_eur_mwh"), s["status"])
        return out

    def common(self, epoch: int, tol: float = 5.0) -> bool:
        row = self.table().get(epoch, {})
        if len(row) < len(self.nodes) or any(s not in CLEARED for _p, s in row.values()):
            return False
        prices = [p for p, _s in row.values() if p is not None]
        return len(prices) == len(row) and max(prices) - min(prices) <= tol

    def cleared_fraction(self, first: int, last: int) -> float:
        """Cleared node-epochs over all node-epochs in first..last."""
        table = self.table()
        total = len(self.nodes) * (last - first + 1)
        done = sum(
            1 for e in range(first, last + 1) for _p, s in table.get(e, {}).values() if s in CLEARED
        )
        return done / total


def _epoch(t: float) -> int:
    return int(t // EPOCH_S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hold", type=float, default=12.0, help="seconds each fault lasts")
    ap.add_argument("--settle", type=float, default=16.0, help="seconds of recovery after")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="redy-bench-faults-") as tmp:
        g = Grid12(Path(tmp))
        g.start()
        try:
            return _run(g, args.hold, args.settle)
        finally:
            g.stop()


def _run(g: Grid12, hold: float, settle: float) -> int:
    deadline = time.monotonic() + 90
    while not any(g.common(e) for e in g.table()):
        if time.monotonic() > deadline:
            print("grid12 never reached a common price; see launch.log", file=sys.stderr)
            return 1
        time.sleep(1)
    window = hold + settle

    def stop_cont(pid: Callable[[], int | None]) -> Callable[[], None]:
        p = pid()
        assert p is not None
        os.kill(p, signal.SIGSTOP)
        time.sleep(hold)
        os.kill(p, signal.SIGCONT)
        return lambda: None

    def kill(pid: Callable[[], int | None]) -> Callable[[], None]:
        p = pid()
        assert p is not None
        os.kill(p, signal.SIGKILL)
        time.sleep(hold)
        return lambda: None

    state = g.state
    faults: list[tuple[str, Callable[[], object]]] = [
        ("none (baseline)", lambda: time.sleep(hold)),
        ("broker SIGSTOP", lambda: stop_cont(lambda: broker_pid(state, "factory-1"))),
        ("broker kill -9", lambda: kill(lambda: broker_pid(state, "house-3"))),
        ("governance SIGSTOP", lambda: stop_cont(lambda: governance_pid(state, "ev-1"))),
        ("governance kill -9", lambda: kill(lambda: governance_pid(state, "house-5"))),
    ]
    rows = []
    for name, fault in faults:
        t0 = time.time()
        fault()
        t1 = time.time()
        time.sleep(settle)
        first, end, last = _epoch(t0), _epoch(t1), _epoch(t0 + window) - 1
        back = next((e for e in range(end + 1, last + 1) if g.common(e)), None)
        rows.append(
            (name, back - end if back is not None else None, g.cleared_fraction(first, last))
        )
    base = rows[0][2] or 1.0
    print(
        f"grid12 faults: each held {hold:g} s, then {settle:g} s of recovery; epoch {EPOCH_S:g} s"
    )
    print(f"{'fault':22} {'recovery epochs':>16} {'node-epochs cleared':>20} {'vs baseline':>12}")
    for name, back, frac in rows:
        rec = "-" if back is None else str(back)
        print(f"{name:22} {rec:>16} {frac:>20.3f} {frac / base:>12.2f}")
    return 0


if __name__ == "__main__":
    with docpage.recorded("faults"):  # --docs: its page of the site too
        sys.exit(main())
