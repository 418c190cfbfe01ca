"""CPU and memory of `redy dashboard` serving a generated N-node grid (default 100), as a ratio
to one governance unit of the same grid, measured over the same window.

The grid runs with `redy launch --compose` (one process per node); one more node (probe-1, an
eco house) joins it in separate-process mode so that its governance unit is a process of its
own to compare with. The dashboard watches every broker of the launch state and one client
reads its server-sent events, as an open browser tab does.

    python bench/dashboard_footprint.py [--nodes 100] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import docpage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from unit_footprint import _cpu_s, _kb  # noqa: E402

REDY = [sys.executable, "-m", "redy"]
SHARES = {"gas_plant": 3, "factory": 7, "eco_house_battery": 55, "eco_house": 10,
          "solar_plant": 10, "wind_farm": 5, "ev_station": 10}  # fmt: skip


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _block(n: int) -> int:
    for base in range(20000, 21500 - n, 10):
        if all(_free(p) and _free(p + 10000) for p in range(base, base + n)):
            return base
    raise SystemExit(f"no block of {n} free port pairs")


def _mix(n: int) -> str:
    total = sum(SHARES.values())
    counts = {k: max(1, round(v * n / total)) for k, v in SHARES.items()}
    counts["eco_house_battery"] += n - sum(counts.values())
    return ",".join(f"{k}={v}" for k, v in counts.items() if v > 0)


def _pid_of(pattern: str) -> int:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    pids = [int(ln.split()[0]) for ln in out.stdout.splitlines() if re.search(pattern, ln)]
    if not pids:
        raise SystemExit(f"no process matches {pattern!r}")
    return pids[0]


def _state(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "api/state", timeout=60) as r:
            return json.loads(r.read())
    except OSError:  # a grid still starting can starve the server for a while
        return {"nodes": [], "edges": []}


def _read_events(url: str, stop: threading.Event, count: list[int]) -> None:
    with urllib.request.urlopen(url + "events", timeout=120) as r:
        while not stop.is_set():
            line = r.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                count[0] += 1


def _grid_cost(state: Path) -> str:
    """CPU and PSS of the compose containers and brokers of the launch, per node."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    pids = [int(ln.split()[0]) for ln in out.stdout.splitlines()
            if str(state) in ln and ("redy.launch.compose" in ln or "mosquitto" in ln)]  # fmt: skip
    cpu0 = {p: _cpu_s(p) for p in pids}
    time.sleep(5)
    cpu = sum(_cpu_s(p) - cpu0[p] for p in pids) / 5
    pss = sum(_kb(p, "Pss:", "smaps_rollup") for p in pids) / 1024
    return f"{len(pids)} processes, CPU {cpu * 100:.0f} % of a core, PSS {pss:.0f} MiB in all"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--up-timeout", type=float, default=420.0)
    args = ap.parse_args()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        state, grid = Path(tmp) / "state", Path(tmp) / "grid.yaml"
        base = _block(args.nodes + 1)
        subprocess.run([*REDY, "grid", "generate", "--mix", _mix(args.nodes), "--ports",
                        str(base), "--epoch-s", "4", "-o", str(grid)], check=True)  # fmt: skip
        try:
            t0 = time.monotonic()
            procs.append(subprocess.Popen(
                [*REDY, "launch", str(grid), "--compose", "--state-dir", str(state)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            while not (state / "gas-plant-1" / "credentials.json").exists():
                time.sleep(0.5)
            probe_port = base + args.nodes
            procs.append(subprocess.Popen(
                [*REDY, "launch", str(ROOT / "launch" / "eco_house_battery.yaml"),
                 "node:=probe-1", f"port:={probe_port}", "epoch_s:=4",
                 f"introducer:=mqtt://127.0.0.1:{base + 10000}", "--state-dir", str(state)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            while len(list(state.glob("*/credentials.json"))) < args.nodes + 1:
                time.sleep(0.5)
            web = subprocess.Popen([*REDY, "dashboard", "--launch-state", str(state),
                                    "--http-port", "0"], stdout=subprocess.PIPE, text=True)  # fmt: skip
            procs.append(web)
            assert web.stdout is not None
            url = re.search(r"http://\S+", web.stdout.readline()).group(0)  # type: ignore[union-attr]
            deadline = time.monotonic() + args.up_timeout
            up = 0
            while time.monotonic() < deadline:
                up = sum(n["liveness"] == "up" for n in _state(url)["nodes"])
                if up >= args.nodes + 1:
                    break
                time.sleep(2)
            print(f"{up} of {args.nodes + 1} nodes up after {time.monotonic() - t0:.0f} s; "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
            stop, events = threading.Event(), [0]
            reader = threading.Thread(target=_read_events, args=(url, stop, events), daemon=True)
            reader.start()
            time.sleep(5)
            gov = _pid_of(r"redy governance .*--node probe-1")
            pids = {"dashboard": web.pid, "governance unit (probe-1)": gov}
            cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
            ev0 = events[0]
            time.sleep(args.seconds)
            cpu = {k: (_cpu_s(p) - cpu0[k]) / args.seconds for k, p in pids.items()}
            rss = {k: _kb(p, "VmRSS", "status") / 1024 for k, p in pids.items()}
            pss = {k: _kb(p, "Pss:", "smaps_rollup") / 1024 for k, p in pids.items()}
            snap = _state(url)
            stop.set()
            for k in pids:
                print(f"  {k:<26} CPU {cpu[k] * 100:6.2f} % of a core  RSS {rss[k]:6.1f} MiB  "
                      f"PSS {pss[k]:6.1f} MiB")  # fmt: skip
            d, g = "dashboard", "governance unit (probe-1)"
            print(f"  dashboard served {len(snap['nodes'])} nodes, {len(snap['edges'])} overlay "
                  f"edges, {events[0] - ev0} SSE updates in {args.seconds:g} s")  # fmt: skip
            print(f"load average {os.getloadavg()[0]:.1f}; grid: " + _grid_cost(state))
            print(f"dashboard / governance unit: CPU {cpu[d] / cpu[g]:.2f}x, "
                  f"RSS {rss[d] / rss[g]:.2f}x, PSS {pss[d] / pss[g]:.2f}x")  # fmt: skip
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in reversed(procs):
                try:
                    p.wait(120)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    with docpage.recorded("dashboard_footprint"):  # --docs: its page of the site too
        main()
