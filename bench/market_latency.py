"""Time from a market epoch's start to a common price in real processes, against the round trip
of a plain MQTT publish through the same brokers, measured in the same run.

Generates a grid (`redy grid generate`, random free ports), launches it (`redy launch --compose`)
and subscribes to every node's retained NodeEnergyState on its own broker (the governance unit
publishes it as soon as its market clears). Per epoch, once every node reports it: the price
spread among nodes, and the time from the epoch's start (epoch * epoch_s on the shared clock) to
the arrival of the last node's price. Meanwhile it publishes plain QoS 1 messages to each node's
broker and times their return (publish -> subscribed delivery: one broker hop and back, what a
gossip push costs). Also samples the grid balance at 1 Hz: |sum of net injections| / load,
from the same retained states.

    python bench/market_latency.py [--nodes 12] [--epochs 8] [--epoch-s 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redy import messages
from redy.brokers import load_credentials, port_is_free
from redy.launch.parser import parse
from redy.transport.client import AsyncLink

ROOT = Path(__file__).resolve().parents[1]


def _mix(n: int) -> str:
    """A mixed grid of `n` nodes: about a tenth gas plants, a tenth factories, the rest houses
    with batteries, one EV station and one solar plant."""
    gas = max(1, n // 10)
    factory = max(1, n // 10)
    other = 2 if n >= 6 else 0
    houses = n - gas - factory - other
    parts = [f"gas_plant={gas}", f"factory={factory}", f"eco_house_battery={houses}"]
    if other:
        parts += ["ev_station=1", "solar_plant=1"]
    return ",".join(parts)


def _free_base(n: int) -> int:
    for _ in range(200):
        # Grid ports are base + 10000 + i: keep them under the ephemeral range (32768).
        base = random.randrange(20000, 22700 - n)
        if all(port_is_free(base + i) and port_is_free(base + 10000 + i) for i in range(n)):
            return base
    raise SystemExit("no free port range")


class Observer:
    def __init__(self, epoch_s: float) -> None:
        self.epoch_s = epoch_s
        self.states: dict[str, messages.NodeEnergyState] = {}
        self.first_seen: dict[tuple[int, str], tuple[float, float | None, str | None]] = {}
        self.rtts: list[float] = []
        self.balance: list[tuple[float, float]] = []  # (t, |sum net| / load)
        self._sent: dict[int, float] = {}

    def on_message(self, topic: str, payload: bytes, _props: dict[str, Any]) -> None:
        now = time.time()
        try:
            s = messages.decode(topic, payload)
        except messages.InvalidMessage:
            return
        if isinstance(s, messages.Command):
            t0 = self._sent.pop(s.seq, None)
            if t0 is not None:
                self.rtts.append(time.perf_counter() - t0)
            return
        if not isinstance(s, messages.NodeEnergyState):
            return
        self.states[s.node] = s
        if s.epoch is not None:
            self.first_seen.setdefault((s.epoch, s.node), (now, s.price_eur_mwh, s.status))


async def _observe(
    args: argparse.Namespace, state: Path, ports: dict[str, int], launcher: subprocess.Popen[bytes]
) -> Observer:
    obs = Observer(args.epoch_s)
    links: dict[str, AsyncLink] = {}
    for node, port in ports.items():
        creds = state / node / "credentials.json"
        while not creds.exists():
            if launcher.poll() is not None:
                raise SystemExit("the launch stopped; see its log (--keep)")
            await asyncio.sleep(0.2)
        link = AsyncLink(
            f"mqtt://127.0.0.1:{port}",
            f"bench-{node}-{os.getpid()}",
            user="operator",
            password=load_credentials(creds).password("operator"),
            timeout_s=3.0,
            subscriptions=(f"redy/{node}/governance/state", f"redy/{node}/action/bench/command"),
            on_message=obs.on_message,
        )
        await link.connect_retrying(attempts=30)
        links[node] = link
    t_end = time.time() + args.warmup_s + args.epochs * args.epoch_s
    nodes = list(ports)
    next_sample = time.time()
    while time.time() < t_end:
        # One plain publish to a random node's broker, timed until it comes back.
        node = random.choice(nodes)
        tag = random.randrange(1, 2**31)
        obs._sent[tag] = time.perf_counter()
        cmd = messages.Command(seq=tag, ts_s=time.time(), setpoint_kw=0.0)
        await links[node].publish(f"redy/{node}/action/bench/command", messages.encode(cmd), qos=1)
        if time.time() >= next_sample and len(obs.states) == len(nodes):
            net = sum(s.net_kw for s in obs.states.values())
            load = sum(s.consumption_kw for s in obs.states.values())
            obs.balance.append((time.time(), abs(net) / load if load > 0 else 0.0))
            next_sample += 1.0
        await asyncio.sleep(0.1)
    for link in links.values():
        await link.close()
    return obs


def _report(obs: Observer, n: int, args: argparse.Namespace, start: float) -> None:
    by_epoch: dict[int, dict[str, tuple[float, float | None, str | None]]] = {}
    for (e, node), v in obs.first_seen.items():
        by_epoch.setdefault(e, {})[node] = v
    first = int((start + args.warmup_s) // args.epoch_s) + 1
    times, spreads, full = [], [], 0
    for e, row in sorted(by_epoch.items()):
        if e < first or len(row) < n:
            continue
        prices = [p for _t, p, s in row.values() if p is not None and s == "cleared"]
        if len(prices) < n:
            continue
        full += 1
        spreads.append(max(prices) - min(prices))
        times.append(max(t for t, _p, _s in row.values()) - e * args.epoch_s)
    rtt = statistics.median(obs.rtts) if obs.rtts else float("nan")
    print(f"nodes {n}, epoch {args.epoch_s:g} s, {full} epochs with every node cleared")
    print(f"plain MQTT publish round trip: median {rtt * 1000:.2f} ms over {len(obs.rtts)}")
    if times:
        med = statistics.median(times)
        print(
            f"epoch start -> last node's price: median {med:.3f} s, max {max(times):.3f} s"
            f" (ratio to the round trip: {med / rtt:.0f})"
        )
        print(
            f"price spread among nodes: median {statistics.median(spreads):.4f},"
            f" max {max(spreads):.4f} EUR/MWh"
        )
    late = [b for t, b in obs.balance if t >= start + args.warmup_s + 2 * args.epoch_s]
    if late:
        within = sum(b <= 0.01 for b in late) / len(late)
        print(
            f"1 Hz grid balance |sum net| / load: median {statistics.median(late) * 100:.2f} %,"
            f" p95 {sorted(late)[int(0.95 * (len(late) - 1))] * 100:.2f} %,"
            f" within 1 %: {within * 100:.0f} % of {len(late)} samples"
        )
    print(json.dumps({"nodes": n, "rtt_s": rtt, "common_price_s": times, "spread": spreads}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--epoch-s", type=float, default=4.0)
    ap.add_argument("--warmup-s", type=float, default=20.0)
    ap.add_argument("--launch", type=Path, help="a launch file instead of a generated grid")
    ap.add_argument(
        "--market", choices=("pushsum", "offers"), default="offers", help="how the grid clears"
    )
    ap.add_argument("--keep", action="store_true", help="keep the state and logs (printed)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = tempfile.mkdtemp(prefix="redy-latency-")
        if args.keep:
            print(f"state and logs in {tmp}")
        else:
            stack.callback(shutil.rmtree, tmp, True)
        state = Path(tmp) / "state"
        grid = args.launch
        if grid is None:
            grid = Path(tmp) / "grid.yaml"
            subprocess.run(
                [sys.executable, "-m", "redy", "grid", "generate", "--mix", _mix(args.nodes),
                 "--ports", str(_free_base(args.nodes)), "--epoch-s", str(args.epoch_s),
                 "-o", str(grid)],
                check=True, cwd=ROOT,
            )  # fmt: skip
        ports = {nd.node: nd.broker.port for nd in parse(grid).nodes}
        log = open(Path(tmp) / "launch.log", "wb")  # noqa: SIM115
        launcher = subprocess.Popen(
            [sys.executable, "-m", "redy", "launch", str(grid), f"epoch_s:={args.epoch_s:g}",
             f"market:={args.market}",
             "--compose", "--state-dir", str(state)],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
        )  # fmt: skip
        start = time.time()
        try:
            obs = asyncio.run(_observe(args, state, ports, launcher))
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
            log.close()
        _report(obs, len(ports), args, start)


if __name__ == "__main__":
    main()
