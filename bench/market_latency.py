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

Steady state, before anything is measured: every node has reported a cleared price at least
once, and the host's idle share (from /proc/stat, over windows of one epoch, so that each holds
one burst) has moved by less than 5 points over three windows; `--warmup-s` is the most it
waits for that (it says so if it did not settle). The host's idle share over the measured epochs is printed beside the figures: a
figure taken with no idle CPU measures the host, not the grid.

Per process, over the measured epochs (/proc/PID/stat and /proc/PID/io every 250 ms, folded
onto the epoch): CPU as a share of one core in the epoch's burst (its first `--burst-s`) and
between epochs (its second half), for the node processes (`--compose`: one per node, its
governance and units) and their brokers; and per broker, the bytes it read (what the node's
peers and units sent it) and wrote (what its governance, units and this bench's observer got)
per epoch. Mosquitto reads and writes its sockets with read() and write(), which /proc/PID/io
counts (rchar, wchar); the node processes use recv() and send(), which it does not, so their
bytes are their broker's.

    python bench/market_latency.py [--nodes 12] [--epochs 8] [--epoch-s 4] [--plan-intervals N]

With `--plan-intervals N` the grid also plans (issue 29: `plan_intervals:=N`) and the bench
counts the whole planning intervals (not the one the observation ends in) in which every node
published its plan, and of those the ones in which every node's last plan has the same digest;
for one with several it prints how many offers each digest counted; and the exchange with the
supplier the plans schedule, against the load (the launched grid is an island: its 1 Hz
balance is |sum net| / load whatever the plans assume).

With `--sim-hour H` the measurement starts once every node's state says the simulated clock has
reached H hours into the day (after steady state; if steady state comes later, it starts then
and says so): runs of one launch file and speed then measure the same simulated hours, whose
loads and sun differ (issue 29: a run's warm-up moved its samples across the day). The
simulated hours measured are printed, and the JSON's `balance` holds the share within 1 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
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

import docpage

from redy import messages
from redy.brokers import load_credentials, port_is_free
from redy.errors import InvalidMessage
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


_TICK_S = os.sysconf("SC_CLK_TCK")


def _host_cpu() -> tuple[float, float]:
    """(idle, total) jiffies of the host since boot."""
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v[:8])


def _descendants(root: int) -> dict[int, str]:
    """pid -> 'broker' or 'node' for every process under `root` (the launcher)."""
    parent: dict[int, int] = {}
    kind: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        kind[int(d.name)] = "broker" if "mosquitto" in cmd else "node"
    out = {}
    for pid in parent:
        p = pid
        while p in parent and p != root and p > 1:
            p = parent[p]
        if p == root and pid != root:
            out[pid] = kind[pid]
    return out


def _usage(pid: int) -> tuple[float, float, float] | None:
    """(CPU s, bytes read, bytes written) of a process so far; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except (OSError, ValueError):
        return None
    cpu = (float(fields[11]) + float(fields[12])) / _TICK_S
    return cpu, float(io["rchar"]), float(io["wchar"])


class Sampler:
    """Every 100 ms: each process's CPU and bytes, folded onto the epoch's burst and idle
    phases, and the host's idle share."""

    def __init__(self, launcher: int, epoch_s: float, burst_s: float) -> None:
        self.launcher, self.epoch_s, self.burst_s = launcher, epoch_s, burst_s
        self.procs: dict[int, str] = {}
        self._last: dict[int, tuple[float, float, float, float]] = {}
        # (kind, phase) -> [cpu s, wall s x processes]; kind -> [bytes in, bytes out]
        self.cpu: dict[tuple[str, str], list[float]] = {}
        self.io: dict[str, list[float]] = {}
        self.host = _host_cpu()

    def refresh(self) -> None:
        self.procs = _descendants(self.launcher)

    def _phase(self, t: float) -> str:
        at = t % self.epoch_s
        return "burst" if at < self.burst_s else "idle" if at >= self.epoch_s / 2 else ""

    def sample(self, measuring: bool) -> None:
        for pid, kind in self.procs.items():
            u = _usage(pid)
            # Each process's own time of reading: on a loaded host this loop is preempted, and
            # one time for all would give some processes' CPU a longer interval than counted.
            now = time.time()
            phase = self._phase(now)
            if u is None:
                continue
            last = self._last.get(pid)
            self._last[pid] = (now, *u)
            if last is None or not measuring:
                continue
            dt = now - last[0]
            if phase and phase == self._phase(last[0]) and dt < 1.0:
                acc = self.cpu.setdefault((kind, phase), [0.0, 0.0])
                acc[0] += u[0] - last[1]
                acc[1] += dt
            b = self.io.setdefault(kind, [0.0, 0.0])
            b[0] += u[1] - last[2]
            b[1] += u[2] - last[3]

    def host_idle(self, since: tuple[float, float]) -> float:
        idle, total = _host_cpu()
        return (idle - since[0]) / max(total - since[1], 1.0)


class Observer:
    def __init__(self, epoch_s: float) -> None:
        self.epoch_s = epoch_s
        self.states: dict[str, messages.NodeEnergyState] = {}
        self.first_seen: dict[tuple[int, str], tuple[float, float | None, str | None]] = {}
        self.rtts: list[float] = []
        self.balance: list[tuple[float, float]] = []  # (t, |sum net| / load)
        self._sent: dict[int, float] = {}
        # --plan-intervals: per planning interval, the digest of the last plan each node
        # published for it and the offers it counted; an interval's length in real seconds
        self.plans: dict[int, dict[str, tuple[str, int]]] = {}
        self.plan_interval_s = 0.0
        self.latest_plans: dict[str, messages.Plan] = {}
        self.scheduled: list[float] = []  # per balance sample, |the scheduled exchange| / load
        self.ended = 0.0  # when the observation ended
        self.sim_hours: list[float] = []  # per balance sample, the simulated hour the nodes state

    def sim_hour(self) -> float | None:
        """The simulated hour into the day the nodes' states have all reached (the earliest of
        their clocks); None before every node has stated one."""
        if not self.states:
            return None
        return min(s.ts_s for s in self.states.values()) / 3600.0

    def scheduled_kw(self, now: float) -> float:
        """The community's net injection the plans schedule now (export minus import, kW): the
        median over the nodes' latest plans that cover the current interval; 0 with none (an
        island, as without plans)."""
        if not self.plan_interval_s:
            return 0.0
        k = int(now // self.plan_interval_s)
        got = [
            p.export_kw[k - p.start] - p.import_kw[k - p.start]
            for p in self.latest_plans.values()
            if 0 <= k - p.start < len(p.export_kw)
        ]
        return statistics.median(got) if got else 0.0

    def on_message(self, topic: str, payload: bytes, _props: dict[str, Any]) -> None:
        now = time.time()
        try:
            s = messages.decode(topic, payload)
        except InvalidMessage:
            return
        if isinstance(s, messages.Command):
            t0 = self._sent.pop(s.seq, None)
            if t0 is not None:
                self.rtts.append(time.perf_counter() - t0)
            return
        if isinstance(s, messages.Plan):
            self.plans.setdefault(s.start, {})[s.node] = (s.digest, s.offers)
            self.plan_interval_s = s.interval_s
            self.latest_plans[s.node] = s
            return
        if not isinstance(s, messages.NodeEnergyState):
            return
        self.states[s.node] = s
        if s.epoch is not None:
            self.first_seen.setdefault((s.epoch, s.node), (now, s.price_eur_mwh, s.status))


async def _observe(
    args: argparse.Namespace, state: Path, ports: dict[str, int], launcher: subprocess.Popen[bytes]
) -> tuple[Observer, Sampler, float, float, bool]:
    """The observation; the sampler; when measuring started; the host's idle share while
    measuring; and whether steady state was reached before `warmup_s` ran out."""
    obs = Observer(args.epoch_s)
    sampler = Sampler(launcher.pid, args.epoch_s, args.burst_s)
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
            subscriptions=(
                f"redy/{node}/governance/state",
                f"redy/{node}/governance/plan",
                f"redy/{node}/action/bench/command",
            ),
            on_message=obs.on_message,
        )
        await link.connect_retrying(attempts=30)
        links[node] = link
    nodes = list(ports)
    give_up = time.time() + args.warmup_s
    window, idles = _host_cpu(), list[float]()
    next_window = time.time() + args.epoch_s
    settled = False
    while time.time() < give_up:
        await asyncio.sleep(0.2)
        if time.time() >= next_window:
            idles.append(sampler.host_idle(window))
            window, next_window = _host_cpu(), time.time() + args.epoch_s
        cleared = {n for (_e, n), v in obs.first_seen.items() if v[2] == "cleared"}
        recent = idles[-3:]
        if len(cleared) == len(nodes) and len(recent) == 3 and max(recent) - min(recent) < 0.05:
            settled = True
            break
    late_start = False
    if args.sim_hour is not None:
        while len(obs.states) < len(nodes) or (hour := obs.sim_hour() or 0.0) < args.sim_hour:
            if launcher.poll() is not None:
                raise SystemExit("the launch stopped; see its log (--keep)")
            await asyncio.sleep(0.05)
        # A few simulated minutes past it: the wait polls, and states come once a second.
        late_start = hour > args.sim_hour + 0.1
    sampler.refresh()
    measure_from = time.time()
    host0 = _host_cpu()
    t_end = measure_from + args.epochs * args.epoch_s
    next_sample = time.time()
    next_probe = time.time()
    next_cpu = time.time()
    while time.time() < t_end:
        if time.time() >= next_cpu:  # every 250 ms: reading /proc costs this host too
            sampler.sample(True)
            next_cpu += 0.25
        if time.time() >= next_probe:
            # One plain publish to a random node's broker, timed until it comes back.
            node = random.choice(nodes)
            tag = random.randrange(1, 2**31)
            obs._sent[tag] = time.perf_counter()
            cmd = messages.Command(seq=tag, ts_s=time.time(), setpoint_kw=0.0)
            topic = f"redy/{node}/action/bench/command"
            await links[node].publish(topic, messages.encode(cmd), qos=1)
            next_probe += 0.1
        if time.time() >= next_sample and len(obs.states) == len(nodes):
            net = sum(s.net_kw for s in obs.states.values())
            load = sum(s.consumption_kw for s in obs.states.values())
            obs.balance.append((time.time(), abs(net) / load if load > 0 else 0.0))
            obs.sim_hours.append(obs.sim_hour() or 0.0)
            # With plans: the exchange with the supplier they schedule, which this grid (an
            # island: no supplier in the processes) cannot make.
            scheduled = abs(obs.scheduled_kw(time.time()))
            obs.scheduled.append(scheduled / load if load > 0 else 0.0)
            next_sample += 1.0
        await asyncio.sleep(0.1)
    idle = sampler.host_idle(host0)
    obs.ended = time.time()
    for link in links.values():
        await link.close()
    if late_start:
        print(
            f"the simulated clock was {hour:.2f} h, past {args.sim_hour:g} h, when steady state"
            " came: measured from then"
        )
    return obs, sampler, measure_from, idle, settled


def _report(
    obs: Observer,
    n: int,
    args: argparse.Namespace,
    sampler: Sampler,
    start: float,
    idle: float,
    settled: bool,
) -> None:
    by_epoch: dict[int, dict[str, tuple[float, float | None, str | None]]] = {}
    for (e, node), v in obs.first_seen.items():
        by_epoch.setdefault(e, {})[node] = v
    first = int(start // args.epoch_s) + 1
    last = int((start + args.epochs * args.epoch_s) // args.epoch_s) - 1
    times, spreads, full = [], [], 0
    for e, row in sorted(by_epoch.items()):
        if not first <= e <= last or len(row) < n:
            continue
        prices = [p for _t, p, s in row.values() if p is not None and s == "cleared"]
        if len(prices) < n:
            continue
        full += 1
        spreads.append(max(prices) - min(prices))
        times.append(max(t for t, _p, _s in row.values()) - e * args.epoch_s)
    rtt = statistics.median(obs.rtts) if obs.rtts else float("nan")
    how = "steady state" if settled else f"NOT settled within {args.warmup_s:g} s"
    print(
        f"nodes {n}, epoch {args.epoch_s:g} s, {how}; {full} of {last - first + 1} measured"
        f" epochs with every node cleared; host idle {idle * 100:.0f} % while measuring"
    )
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
    late = [b for t, b in obs.balance if t >= start]
    hours = [h for (t, _b), h in zip(obs.balance, obs.sim_hours, strict=True) if t >= start]
    if hours:
        print(f"simulated hours measured: {min(hours):.2f} to {max(hours):.2f}")
    if late:
        within = sum(b <= 0.01 for b in late) / len(late)
        print(
            f"1 Hz grid balance |sum net| / load: median {statistics.median(late) * 100:.2f} %,"
            f" p95 {sorted(late)[int(0.95 * (len(late) - 1))] * 100:.2f} %,"
            f" within 1 %: {within * 100:.0f} % of {len(late)} samples"
        )
        # Where in the epoch the samples that miss 1 % fall: before the price (the market's
        # latency) or after it (the dispatch and the devices).
        cut = max(times) if times else 1.0
        samples = [(t % args.epoch_s < cut, b) for t, b in obs.balance if t >= start]
        for label, want in (("before the last price", True), ("after it", False)):
            part = [b for before, b in samples if before == want]
            if part:
                print(
                    f"  samples {label}: {sum(b <= 0.01 for b in part)} of {len(part)} within"
                    f" 1 %, max {max(part) * 100:.2f} %"
                )
        # With plans: the samples in the first two epochs of a planning interval, where the
        # planned setpoints change (the previous solve's second interval, then the new solve).
        if obs.plan_interval_s:
            lead = 2 * args.epoch_s
            for label, want in (
                (f"in a planning interval's first {lead:g} s", True),
                ("later", False),
            ):
                part = [
                    b
                    for t, b in obs.balance
                    if t >= start and (t % obs.plan_interval_s < lead) == want
                ]
                if part:
                    print(
                        f"  samples {label}: {sum(b <= 0.01 for b in part)} of {len(part)}"
                        f" within 1 %, max {max(part) * 100:.2f} %"
                    )
    # Every node's last plan of each interval all of them published, for the intervals that
    # ended while observing: one digest, or several. The interval the observation ends in is
    # left out: a node may not yet have solved again with an offer that came late.
    ended = obs.ended // obs.plan_interval_s if obs.plan_interval_s else math.inf
    plans = {k: held for k, held in obs.plans.items() if len(held) == n and k < ended}
    same = 0
    if args.plan_intervals:
        same = sum(len({d for d, _ in held.values()}) == 1 for held in plans.values())
        print(
            f"plans over {args.plan_intervals} intervals: {len(plans)} whole intervals with every"
            f" node's plan, {same} of them with one plan (the same digest) on every node"
        )
        if obs.scheduled:
            print(
                "  the plans' scheduled exchange with the supplier |export - import| / load:"
                f" median {statistics.median(obs.scheduled) * 100:.2f} %,"
                f" max {max(obs.scheduled) * 100:.2f} %"
            )
        for k, held in sorted(plans.items()):
            digests = sorted({d for d, _ in held.values()})
            if len(digests) > 1:  # what each node's last plan of it counted
                print(
                    f"  interval {k}: "
                    + "; ".join(
                        f"{d[:12]} on {sum(x == d for x, _ in held.values())} nodes from"
                        f" {sorted({o for x, o in held.values() if x == d})} offers"
                        for d in digests
                    )
                )
    print(
        "per process | count | CPU in the burst | CPU between epochs | read/epoch | written/epoch"
    )
    per: dict[str, dict[str, float]] = {}
    for kind in ("node", "broker"):
        count = sum(1 for k in sampler.procs.values() if k == kind)
        cells = {}
        for phase in ("burst", "idle"):
            cpu, wall = sampler.cpu.get((kind, phase), [0.0, 0.0])
            cells[phase] = cpu / wall if wall else float("nan")
        rd, wr = sampler.io.get(kind, [0.0, 0.0])
        per_epoch = max(count, 1) * args.epochs
        cells["read_b"], cells["written_b"] = rd / per_epoch, wr / per_epoch
        per[kind] = cells
        io = (
            f"{cells['read_b'] / 1e3:,.1f} kB | {cells['written_b'] / 1e3:,.1f} kB"
            if kind == "broker"
            else "(its broker's) | (its broker's)"
        )
        print(
            f"{kind} | {count} | {cells['burst'] * 100:.1f} % | {cells['idle'] * 100:.1f} % | {io}"
        )
    print(
        json.dumps(
            {
                "nodes": n,
                "settled": settled,
                "host_idle": idle,
                "rtt_s": rtt,
                "common_price_s": times,
                "spread": spreads,
                "per_process": per,
                "plans": {
                    str(k): len({d for d, _ in v.values()}) for k, v in sorted(plans.items())
                },
                "plan_intervals": args.plan_intervals,
                "plans_whole": len(plans),
                "plans_one_digest": same,
                "balance": {
                    "samples": len(late),
                    "within_1pct": sum(b <= 0.01 for b in late) / len(late) if late else None,
                    "median": statistics.median(late) if late else None,
                },
                "sim_hours": [min(hours), max(hours)] if hours else None,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--epoch-s", type=float, default=4.0)
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=180.0,
        help="the most to wait for steady state (every node cleared once, host CPU settled)",
    )
    ap.add_argument("--burst-s", type=float, default=1.0, help="the epoch's burst, from its start")
    ap.add_argument("--launch", type=Path, help="a launch file instead of a generated grid")
    ap.add_argument(
        "--market", choices=("pushsum", "offers"), default="offers", help="how the grid clears"
    )
    ap.add_argument(
        "--plan-intervals",
        type=int,
        default=0,
        help="the grid also plans over N intervals (plan_intervals:=N); reports whether every"
        " node published the same plan",
    )
    ap.add_argument(
        "--sim-hour",
        type=float,
        help="start measuring once the nodes' simulated clock reaches this hour of the day"
        " (the same hours in every run of one launch file and speed)",
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
             *([f"plan_intervals:={args.plan_intervals}"] if args.plan_intervals else []),
             "--compose", "--state-dir", str(state)],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
        )  # fmt: skip
        try:
            obs, sampler, start, idle, settled = asyncio.run(_observe(args, state, ports, launcher))
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
            log.close()
        _report(obs, len(ports), args, sampler, start, idle, settled)


if __name__ == "__main__":
    with docpage.recorded("market_latency"):  # --docs: its page of the site too
        main()
