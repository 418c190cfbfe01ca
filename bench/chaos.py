"""A grid under random, overlapping faults, and a checker of what must hold afterwards (issue 30).

    python bench/chaos.py [--grid launch/grid12.yaml] [--minutes 60] [--seed S] [--json]

Launches the grid (`redy launch --metrics`), waits until every node has cleared a price (steady
state), runs it undisturbed for `--baseline-minutes` (default: as long as the chaos), then for
`--minutes` while a scheduler draws faults at random: start times of a Poisson process (mean gap
`--mean-gap-s`), each fault held a uniform 3-12 s on a random node, so several overlap at times:

- `broker-kill`: kill -9 of a node's broker (the launcher restarts it; the fault lasts until
  the new broker process is there);
- `broker-stop`: SIGSTOP of a node's broker, SIGCONT after the hold;
- `governance-kill`: kill -9 of a node's governance unit (the launcher respawns it; the fault
  lasts until the new process serves: its state on its broker again);
- `governance-stop`: SIGSTOP of a governance unit, SIGCONT after the hold;
- `hostile-member`: a member with a valid certificate of the grid's CA connects to a node's grid
  listener, floods it with malformed gossip and shuffle requests that name a closed port, and
  leaves after the hold;
- `partition`: the node is cut off from every other node, both ways, while its units still
  reach its broker: iptables drops what arrives on its broker's grid port and, by a cgroup v2
  match, what its governance sends to any port but its own broker's. Drawn where that works
  (root, iptables with the cgroup match, a cgroup2 mount); the report says whether it did. The
  rules carry the comment `redy-chaos` and are removed after each hold and at exit.

`--spare K` nodes (2 by default, drawn by the seed) get no fault at all: their brokers and
governance units run the whole hour, so their growth is measured (a restarted process is
another process). Clock steps are not drawn: one launch starts every node's processes under one
clock, and a skew needs a clock per node from the start (faketime, as tests/faults does).

Which node cleared in which epoch comes from what each governance unit logged as it cleared (an
operator's view of the retained states misses epochs whenever a broker fault cuts it off); every
node's retained states are read from its own broker as an operator, and /metrics is scraped every
`--scrape-s`. The checker then asserts:

1. no process lost for good: every process and broker up at the end, none given up;
2. every node cleared again within `--recovery-epochs` epochs of each fault's end (a fault with
   another one active within that window is judged with the one that ends last);
3. no retained state that lies: at the end, every node's retained state comes from a running
   governance and names a recent epoch, and every unit's retained state says `online`;
4. growth per process from the chaos's first sixth to its end of resident memory and open file
   descriptors, and per node of peer links and tasks, for the processes that ran all that time
   (reported; judged against `--growth`, 5 %, only for runs of 10 minutes or more: a shorter
   run still warms up).

Prints the fraction of node-epochs cleared during the chaos against the undisturbed baseline of
the same run (goal 0.95) and the longest recovery, and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
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
from typing import Any

import docpage
from prometheus_client.parser import text_string_to_metric_families

from redy import messages, pki
from redy.brokers import load_credentials
from redy.launch.parser import parse
from redy.topics import render, subscription
from redy.transport.paho_client import new_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "faults"))

from faultgrid import broker_pid, governance_pid  # noqa: E402 (the fault tests' process finders)

CLEARED = ("cleared", "shortage", "surplus")
_CLEARED_LINE = re.compile(r"node=(\S+) epoch (\d+) price \S+ EUR/MWh \((\w+)\)")
FAULTS = (
    "broker-kill",
    "broker-stop",
    "governance-kill",
    "governance-stop",
    "hostile-member",
    "partition",
)
_TAG = "redy-chaos"  # the comment on every iptables rule this bench adds
# Growth judged against --growth (per process), and growth only reported (small counts, per
# node: one more peer link of ten is +10 %).
_JUDGED = ("redy_process_resident_memory_bytes", "redy_process_open_fds")
_REPORTED = ("redy_peer_links", "redy_governance_tasks")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """Every node's retained governance state and units' states, as an operator reads them."""

    def __init__(self, state: Path, nodes: list[Any]) -> None:
        self.lock = threading.Lock()
        self.states: list[tuple[float, str, dict[str, Any]]] = []  # (t, node, state)
        self.units: dict[tuple[str, str], str] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self._clients = []
        for n in nodes:
            password = load_credentials(state / n.node / "credentials.json").password("operator")
            c = new_client(f"chaos-rec-{n.node}", user="operator", password=password)
            c.on_connect = lambda cl, *_a, node=n.node: self._subscribe(cl, node)
            c.on_message = self._message
            host, port = messages.parse_uri(n.broker.local_uri)
            c.connect_async(host, port, keepalive=5)
            c.loop_start()
            self._clients.append(c)

    def _subscribe(self, c: Any, node: str) -> None:
        c.subscribe(render("node_state", node=node), qos=1)
        c.subscribe(subscription("unit_state", node=node), qos=1)

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            decoded = messages.decode(msg.topic, msg.payload)
        except Exception:  # a bench records what it can read
            return
        now = time.time()
        with self.lock:
            if isinstance(decoded, messages.NodeEnergyState):
                row = {"epoch": decoded.epoch, "status": decoded.status, "ts_s": decoded.ts_s}
                self.states.append((now, decoded.node, row))
                self.last[decoded.node] = {**row, "t": now}
            elif isinstance(decoded, messages.UnitState):
                parts = msg.topic.split("/")
                self.units[(parts[1], parts[3])] = decoded.state

    def serving(self, node: str, since: float) -> bool:
        """Whether `node`'s governance has published a state (not its Will) since `since`."""
        with self.lock:
            last = self.last.get(node)
        return last is not None and last["t"] >= since and last["status"] != "offline"

    def close(self) -> None:
        for c in self._clients:
            c.disconnect()
            c.loop_stop()


def scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


class Hostile:
    """A member with a valid certificate on one node's grid listener, misbehaving until closed."""

    def __init__(self, state: Path, target: Any, rng: random.Random) -> None:
        identity = pki.issue(state, "chaos-evil", ["127.0.0.1"])
        self.target = target.node
        self.c = new_client(f"chaos-evil-{rng.randrange(10**6)}", tls=identity)
        host, port = messages.parse_uri(target.broker.grid_uri)
        self._stop = threading.Event()
        self.c.connect_async(host, port, keepalive=5)
        self.c.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        gossip = render("gossip", node=self.target, peer="chaos-evil")
        shuffle = render("shuffle", node=self.target, peer="chaos-evil")
        closed = f"mqtts://127.0.0.1:{_free_port()}"
        nonce = 0
        while not self._stop.wait(0.05):
            for _ in range(10):
                self.c.publish(gossip, b'{"sender": "chaos-evil", "epoch": "soon"}', qos=0)
            nonce += 1
            request = messages.ShuffleRequest(sender="chaos-evil", broker=closed, nonce=nonce)
            self.c.publish(shuffle, messages.encode(request), qos=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.c.disconnect()
        self.c.loop_stop()


def _iptables(*args: str) -> bool:
    return subprocess.run(["iptables", *args], capture_output=True).returncode == 0


def _cgroup2_root() -> Path | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


class Partitions:
    """Cut a node off from the others on one loopback (see the module docstring)."""

    def __init__(self) -> None:
        self.root = _cgroup2_root()
        self.why_not = self._check()
        self._rules: dict[str, list[list[str]]] = {}

    def _check(self) -> str | None:
        if os.geteuid() != 0:
            return "not root"
        if subprocess.run(["sh", "-c", "command -v iptables"], capture_output=True).returncode:
            return "no iptables"
        if self.root is None:
            return "no cgroup2 mount"
        probe = self.root / f"{_TAG}-probe"
        rule = ["OUTPUT", "-o", "lo", "-m", "cgroup", "--path", probe.name, "-j", "ACCEPT"]
        try:
            probe.mkdir(exist_ok=True)
            if not _iptables("-I", *rule):
                return "iptables has no cgroup match"
            _iptables("-D", *rule)
        except OSError as exc:
            return f"cannot make a cgroup: {exc}"
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
        return None

    def cut(self, node: str, broker: Any, governance: int) -> None:
        assert self.root is not None
        group = self.root / f"{_TAG}-{node}"
        group.mkdir(exist_ok=True)
        (group / "cgroup.procs").write_text(str(governance))
        own = f"{broker.port},{broker.grid_port},{broker.unit_port}"
        tag = ["-m", "comment", "--comment", _TAG, "-j", "DROP"]
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(broker.grid_port), *tag],
            [
                *("OUTPUT", "-o", "lo", "-p", "tcp", "-m", "cgroup", "--path", group.name),
                *("-m", "multiport", "!", "--dports", own, *tag),
            ],
        ]
        for rule in rules:
            _iptables("-I", *rule)
        self._rules[node] = rules

    def heal(self, node: str) -> None:
        for rule in self._rules.pop(node, []):
            _iptables("-D", *rule)
        assert self.root is not None
        group = self.root / f"{_TAG}-{node}"
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.procs").write_text(pid)
            group.rmdir()

    def heal_all(self) -> None:
        """Every rule and cgroup of this bench, this run's or a crashed one's."""
        for node in list(self._rules):
            self.heal(node)
        listing = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            if f"--comment {_TAG}" in line and line.startswith("-A "):
                _iptables("-D", *line[3:].split())
        if self.root is not None:
            for group in self.root.glob(f"{_TAG}-*"):
                with contextlib.suppress(OSError):
                    for pid in (group / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            (self.root / "cgroup.procs").write_text(pid)
                    group.rmdir()


class Chaos:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.state = tmp / "state"
        self.desc = parse(args.grid, {})
        self.nodes = [n.node for n in self.desc.nodes]
        gov = self.desc.nodes[0].governance
        assert gov is not None, "a grid of governance units"
        self.epoch_s = float(gov.value("epoch_s"))
        self.rng = random.Random(args.seed)
        self.metrics_port = _free_port()
        self.faults: list[dict[str, Any]] = []  # name, node, start, end
        self.scrapes: list[tuple[float, dict[str, list[Any]]]] = []
        self.launcher: subprocess.Popen[bytes] | None = None
        self.partitions = Partitions()
        drawn = args.faults.split(",") if args.faults else FAULTS
        self.kinds = [f for f in drawn if f != "partition" or self.partitions.why_not is None]
        self.spared = sorted(self.rng.sample(self.nodes, min(args.spare, len(self.nodes) - 1)))
        self.targets = [n for n in self.nodes if n not in self.spared]

    # -- the grid --------------------------------------------------------------------------------

    def start(self) -> None:
        log = open(self.tmp / "launch.log", "wb")  # noqa: SIM115 (closed with the process)
        self.launcher = subprocess.Popen(
            [
                *(sys.executable, "-m", "redy", "launch", str(self.args.grid)),
                *("--state-dir", str(self.state), "--metrics", str(self.metrics_port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for n in self.desc.nodes:
            creds = self.state / n.node / "credentials.json"
            deadline = time.monotonic() + 60
            while not creds.exists():
                if time.monotonic() > deadline or self.launcher.poll() is not None:
                    raise SystemExit(f"the launch did not come up; see {self.tmp}/launch.log")
                time.sleep(0.2)
        self.rec = Recorder(self.state, self.desc.nodes)

    def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            self.rec.close()
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(60)
            except subprocess.TimeoutExpired:
                self.launcher.kill()

    def wait_steady(self, timeout_s: float) -> float:
        """Until every node has cleared in one epoch; the time it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if any(len(v) == len(self.nodes) for v in self.cleared().values()):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise SystemExit(f"no epoch with every node cleared in {timeout_s:g} s")

    def _scrape(self) -> None:
        with contextlib.suppress(OSError):
            self.scrapes.append((time.time(), scrape(self.metrics_port)))

    def quiet(self, seconds: float) -> tuple[float, float]:
        t0 = time.time()
        end = t0 + seconds
        while time.time() < end:
            self._scrape()
            time.sleep(min(self.args.scrape_s, max(0.0, end - time.time())))
        return t0, time.time()

    # -- faults ----------------------------------------------------------------------------------

    def _pid(self, kind: str, node: str) -> int | None:
        return (broker_pid if kind == "broker" else governance_pid)(self.state, node)

    def _fault(self, name: str, node: str, hold_s: float) -> None:
        start = time.time()
        target = next(n for n in self.desc.nodes if n.node == node)
        kind = name.split("-")[0]
        if name == "hostile-member":
            evil = Hostile(self.state, target, self.rng)
            time.sleep(hold_s)
            evil.close()
        elif name == "partition":
            pid = self._pid("governance", node)
            if pid is not None and node not in self.partitions._rules:
                try:
                    self.partitions.cut(node, target.broker, pid)
                    time.sleep(hold_s)
                finally:
                    self.partitions.heal(node)
        elif name.endswith("-stop"):
            pid = self._pid(kind, node)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(hold_s)
                os.kill(pid, signal.SIGCONT)
        else:  # a kill lasts until the launcher has brought the process back and it serves
            pid = self._pid(kind, node)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    time.sleep(0.2)
                    now = self._pid(kind, node)
                    if now is not None and now != pid:
                        break
                if kind == "governance":  # serving: its state on its broker again
                    back = time.time()
                    while time.monotonic() < deadline and not self.rec.serving(node, back):
                        time.sleep(0.2)
        self.faults.append({"fault": name, "node": node, "start": start, "end": time.time()})

    def chaos(self, seconds: float) -> tuple[float, float]:
        t0 = time.time()
        end = t0 + seconds
        running: list[threading.Thread] = []
        next_at = t0 + self.rng.expovariate(1 / self.args.mean_gap_s)
        while time.time() < end:
            if time.time() >= next_at:
                name = self.rng.choice(self.kinds)
                node = self.rng.choice(self.targets)
                hold = self.rng.uniform(3.0, 12.0)
                hold = min(hold, max(0.5, end - time.time()))
                th = threading.Thread(target=self._fault, args=(name, node, hold), daemon=True)
                th.start()
                running.append(th)
                next_at += self.rng.expovariate(1 / self.args.mean_gap_s)
            if not self.scrapes or time.time() - self.scrapes[-1][0] >= self.args.scrape_s:
                self._scrape()
            time.sleep(0.2)
        for th in running:
            th.join(90)
        return t0, time.time()

    # -- the checker -----------------------------------------------------------------------------

    def cleared(self) -> dict[int, set[str]]:
        """epoch -> the nodes that cleared in it with others, from what each governance unit
        logged as it cleared ("node=N epoch E price P EUR/MWh (status)"). An operator's view of
        the retained states misses epochs whenever a broker fault cuts it off."""
        out: dict[int, set[str]] = {}
        logs = self.state / "logs"
        for path in [*logs.glob("*.governance.log"), *logs.glob("*.compose.log")]:
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                for line in f:
                    m = _CLEARED_LINE.search(line)
                    if m is not None and m.group(3) in CLEARED:
                        out.setdefault(int(m.group(2)), set()).add(m.group(1))
        return out

    def fraction(self, t0: float, t1: float) -> float:
        first, last = math.ceil(t0 / self.epoch_s), math.floor(t1 / self.epoch_s) - 1
        cleared = self.cleared()
        done = sum(len(cleared.get(e, ())) for e in range(first, last + 1))
        return done / (len(self.nodes) * max(1, last - first + 1))

    def recoveries(self) -> list[dict[str, Any]]:
        """Per fault: the epochs from its end until every node cleared again."""
        cleared = self.cleared()
        out = []
        for f in sorted(self.faults, key=lambda f: f["end"]):
            end_epoch = math.floor(f["end"] / self.epoch_s)
            back = next(
                (
                    e
                    for e in range(end_epoch + 1, end_epoch + 200)
                    if len(cleared.get(e, ())) == len(self.nodes)
                ),
                None,
            )
            window_end = (end_epoch + self.args.recovery_epochs + 1) * self.epoch_s
            overlapped = any(  # another fault active in the window: judged with that one
                g is not f and g["start"] < window_end and g["end"] > f["end"] for g in self.faults
            )
            out.append(
                {
                    **f,
                    "epochs": None if back is None else back - end_epoch,
                    "overlapped": overlapped,
                }
            )
        return out

    def lying_states(self) -> list[str]:
        """Retained states at the end that do not match what runs."""
        now = time.time()
        current = math.floor(now / self.epoch_s)
        out = []
        for node in self.nodes:
            last = self.rec.last.get(node)
            if self._pid("governance", node) is None:
                if last is not None and last["status"] != "offline":
                    out.append(f"{node}: governance not running, its state says {last['status']}")
                continue
            if last is None:
                out.append(f"{node}: no retained state")
            elif last["status"] in CLEARED and (last["epoch"] or 0) < current - 3:
                out.append(f"{node}: says {last['status']} in epoch {last['epoch']}, now {current}")
        for (node, unit), state in sorted(self.rec.units.items()):
            if state != "online":
                out.append(f"{node}/{unit}: retained unit state {state}")
        return out

    def growth(self, t0: float, since: float = 1 / 6) -> dict[str, dict[str, float]]:
        """Per series and labels: (last - first) / first, from `since` of the chaos on, for
        the processes that ran all that time (a respawned process is another process: its
        figures say nothing about a leak; per-node series follow the node's governance)."""
        start = t0 + (self.scrapes[-1][0] - t0) * since
        base = next((s for t, s in self.scrapes if t >= start), None)
        end = self.scrapes[-1][1]
        out: dict[str, dict[str, float]] = {}
        if base is None:
            return out

        def respawns(scrape: dict[str, list[Any]]) -> dict[tuple[str, str], float]:
            return {
                (x.labels["node"], x.labels["process"]): x.value
                for x in scrape.get("redy_process_respawns_total", [])
            }

        before_r, after_r = respawns(base), respawns(end)
        same = {k for k, v in after_r.items() if before_r.get(k) == v}
        same.add(("", "launcher"))
        for name in (*_JUDGED, *_REPORTED):
            before = {tuple(sorted(s.labels.items())): s.value for s in base.get(name, [])}
            for s in end.get(name, []):
                key = tuple(sorted(s.labels.items()))
                who = (s.labels.get("node", ""), s.labels.get("process", "governance"))
                if before.get(key) and who in same:
                    label = "/".join(v for _k, v in key if v)
                    out.setdefault(name, {})[label] = (s.value - before[key]) / before[key]
        return out

    def processes_lost(self) -> list[str]:
        end = self.scrapes[-1][1] if self.scrapes else {}
        down = [
            f"{s.labels['node']}/{s.labels['process']}"
            for s in end.get("redy_process_up", [])
            if s.value != 1.0
        ]
        log = (self.tmp / "launch.log").read_text(errors="replace")
        gave_up = [line for line in log.splitlines() if "giving up on" in line]
        return down + gave_up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=Path, default=ROOT / "launch" / "grid12.yaml")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--baseline-minutes", type=float, default=None, help="(default: --minutes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mean-gap-s", type=float, default=15.0, help="mean time between faults")
    ap.add_argument("--scrape-s", type=float, default=15.0, help="seconds between scrapes")
    ap.add_argument("--recovery-epochs", type=int, default=2)
    ap.add_argument("--growth", type=float, default=0.05)
    ap.add_argument("--spare", type=int, default=2, help="nodes that get no fault (growth)")
    ap.add_argument("--faults", default="", help="only these kinds, comma-separated")
    ap.add_argument("--json", action="store_true", help="one JSON object, nothing else")
    ap.add_argument("--keep", action="store_true", help="keep the state and logs (printed)")
    args = ap.parse_args()
    baseline_s = 60 * (args.minutes if args.baseline_minutes is None else args.baseline_minutes)
    tmp = Path(tempfile.mkdtemp(prefix="redy-chaos-"))
    chaos = Chaos(args, tmp)
    try:
        chaos.partitions.heal_all()  # what a crashed run may have left
        chaos.start()
        steady_s = chaos.wait_steady(180)
        chaos.quiet(3 * chaos.epoch_s)  # a few epochs past the first common one
        b0, b1 = chaos.quiet(baseline_s)
        c0, c1 = chaos.chaos(60 * args.minutes)
        chaos.quiet(max(10.0, (args.recovery_epochs + 3) * chaos.epoch_s))
        chaos._scrape()
        report = {
            "grid": str(args.grid),
            "seed": args.seed,
            "minutes": args.minutes,
            "baseline_minutes": baseline_s / 60,
            "steady_after_s": round(steady_s, 1),
            "epoch_s": chaos.epoch_s,
            "faults": len(chaos.faults),
            "fault_kinds": {k: sum(f["fault"] == k for f in chaos.faults) for k in FAULTS},
            "partitions": chaos.partitions.why_not or "drawn",
            "spared": chaos.spared,
            "baseline_cleared": chaos.fraction(b0, b1),
            "chaos_cleared": chaos.fraction(c0, c1),
            "recoveries": chaos.recoveries(),
            "lost": chaos.processes_lost(),
            "lying": chaos.lying_states(),
            "growth": chaos.growth(c0),
            "growth_late": chaos.growth(c0, since=7 / 12),  # its second half
            "host_load": os.getloadavg()[0],
        }
    finally:
        chaos.partitions.heal_all()
        chaos.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return _verdict(report, args, tmp)


def _verdict(r: dict[str, Any], args: argparse.Namespace, tmp: Path) -> int:
    judged = [x for x in r["recoveries"] if not x["overlapped"]]
    slow = [x for x in judged if x["epochs"] is None or x["epochs"] > args.recovery_epochs]
    longest = max((x["epochs"] or 10**6 for x in r["recoveries"]), default=0)
    growth_limit = args.growth if args.minutes >= 10 else None
    # Over the goal from the first sixth on fails the run; each says whether it was still
    # growing by more than half the goal in the second half (a leak) or had levelled off.
    over = {
        f"{name}{{{label}}}": (g, r["growth_late"].get(name, {}).get(label, 0.0))
        for name, per in r["growth"].items()
        for label, g in per.items()
        if name in _JUDGED and growth_limit is not None and g > growth_limit
    }
    grew = {k: g for k, (g, _late) in over.items()}
    growing = {k for k, (_g, late) in over.items() if growth_limit and late > growth_limit / 2}
    ratio = r["chaos_cleared"] / r["baseline_cleared"] if r["baseline_cleared"] else 0.0
    r |= {
        "ratio_to_baseline": ratio,
        "longest_recovery_epochs": longest,
        "slow_recoveries": slow,
        "grew": grew,
        "still_growing": sorted(growing),
        "ok": not (slow or r["lost"] or r["lying"] or grew),
    }
    if args.json:
        print(json.dumps(r))
        return 0 if r["ok"] else 1
    print(
        f"{r['grid']}: {r['minutes']:g} min of chaos (seed {r['seed']}, {r['faults']} faults:"
        f" {r['fault_kinds']}) against {r['baseline_minutes']:g} min undisturbed; epoch"
        f" {r['epoch_s']:g} s; host load {r['host_load']:.1f}"
    )
    print(f"partitions: {r['partitions']}; spared (no fault): {', '.join(r['spared']) or 'none'}")
    print(
        f"node-epochs cleared: {r['chaos_cleared']:.3f} under chaos, {r['baseline_cleared']:.3f}"
        f" undisturbed, ratio {ratio:.3f} (goal 0.95)"
    )
    print(
        f"recovery: longest {longest} epochs; {len(judged)} faults judged alone,"
        f" {len(slow)} slower than {args.recovery_epochs} epochs"
    )
    for x in slow:
        held = x["end"] - x["start"]
        print(f"  slow: {x['fault']} of {x['node']} ({held:.1f} s): {x['epochs']} epochs")
    for name, per in sorted(r["growth"].items()):
        worst = max(per.items(), key=lambda kv: kv[1])
        late = r["growth_late"].get(name, {}).get(worst[0], 0.0)
        judged = "judged" if name in _JUDGED else "reported"
        print(
            f"growth of {name} ({judged}): max {worst[1] * 100:+.1f} % ({worst[0]};"
            f" {late * 100:+.1f} % in the second half), {len(per)} series"
        )
    for key, (g, late) in sorted(over.items()):
        verdict = "still growing" if key in growing else "levelled off"
        print(
            f"  over the goal: {key} {g * 100:+.1f} %, second half {late * 100:+.1f} %: {verdict}"
        )
    print(
        f"processes lost: {r['lost'] or 'none'}; retained states that lie: {r['lying'] or 'none'}"
    )
    if args.keep:
        print(f"state and logs in {tmp}")
    print("OK" if r["ok"] else "FAILED")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    with docpage.recorded("chaos"):  # --docs: its page of the site too
        sys.exit(main())
