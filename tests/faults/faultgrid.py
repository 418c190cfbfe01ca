"""A small grid of real nodes for fault injection: each node is its own `redy launch` (broker,
governance, a meter and a gas plant), optionally inside its own network namespace (its own
host, its own address) and optionally under `faketime` (a skewed clock). A recorder process per
node keeps every retained state and view the node's broker shows, with arrival times, so a test
can say, epoch by epoch, which nodes cleared and at which price.

The namespaces hang off a bridge in a namespace of its own; addresses are in 10.213.X.0/24 and
exist only inside namespaces this file creates and removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redy.brokers import try_connect

ROOT = Path(__file__).resolve().parents[2]
RECORDER = Path(__file__).with_name("recorder.py")
CLEARED = ("cleared", "shortage", "surplus")

EPOCH_S = 3.0
PERIOD_S = 0.5  # state period and shuffle period
# Marginal costs (EUR/MWh) of the nodes' gas plants: the price settles on one of these steps.
COSTS = (50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


class Netns:
    """A bridge namespace and one namespace per node, each with an address on the bridge."""

    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.sw = f"rdy{tag}sw"
        self.names = [f"rdy{tag}n{i}" for i in range(n)]
        self.subnet = f"10.213.{random.randrange(1, 250)}"
        self.addrs = [f"{self.subnet}.{i + 1}" for i in range(n)]

    def up(self) -> None:
        _run("ip", "netns", "add", self.sw)
        _run("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.sw, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addrs, strict=True)):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run(
                "ip", "-n", ns, "link", "add", "eth0", "type", "veth",
                "peer", "name", f"p{i}", "netns", self.sw,
            )  # fmt: skip
            _run("ip", "-n", self.sw, "link", "set", f"p{i}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")

    def down(self) -> None:
        for ns in [*self.names, self.sw]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def cut(self, side_a: list[int], side_b: list[int]) -> None:
        """Drop every packet between the two sides (both directions, inside each node)."""
        for mine, theirs in ((side_a, side_b), (side_b, side_a)):
            for i in mine:
                for j in theirs:
                    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
                        _run(
                            *self.exec_prefix(i), "iptables", "-A", chain,
                            flag, self.addrs[j], "-j", "DROP",
                        )  # fmt: skip

    def heal(self) -> None:
        for i in range(len(self.names)):
            _run(*self.exec_prefix(i), "iptables", "-F")


class FaultGrid:
    """`n` nodes n0..n(n-1); n0 is the introducer of all others."""

    def __init__(
        self,
        tmp: Path,
        n: int = 5,
        *,
        netns: bool = False,
        skew_s: dict[int, float] | None = None,
        introducers: list[int] | None = None,
        market: str = "pushsum",
        shuffle: str = "cyclon",
        cell_size: int | None = None,
        env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        self.tmp = tmp
        self.env = env or {}  # more environment for a node's processes (a test's hook)
        self.market = market
        self.cell_size = cell_size
        self.shuffle = shuffle
        self.n = n
        self.nodes = [f"n{i}" for i in range(n)]
        self.state = tmp / "state"
        self.net = Netns(n) if netns else None
        self.skew_s = skew_s or {}
        self.introducers = introducers if introducers is not None else [0]
        # Local, grid and unit ports, all below Linux's ephemeral range (32768..), where the
        # defaults (+10000, +20000) could meet a port some outgoing connection holds.
        base = random.randrange(20000, 27000)
        self.ports = [(base + 3 * i, base + 3 * i + 1, base + 3 * i + 2) for i in range(n)]
        self.launchers: list[subprocess.Popen[bytes]] = []
        self.recorders: list[subprocess.Popen[bytes]] = []

    # -- set-up ---------------------------------------------------------------------------------

    def grid_host(self, i: int) -> str:
        return self.net.addrs[i] if self.net else "127.0.0.1"

    def grid_uri(self, i: int) -> str:
        return f"mqtts://{self.grid_host(i)}:{self.ports[i][1]}"

    def _launch_file(self, i: int) -> Path:
        node = self.nodes[i]
        port, grid, unit = self.ports[i]
        intro = ",".join(self.grid_uri(j) for j in self.introducers if j != i)
        market = (
            self.market if self.cell_size is None else f"{self.market}, cell_size: {self.cell_size}"
        )
        text = f"""\
launch:
  - clock: {{speed: 10, start_s: 43200}}
  - broker: {{node: {node}, port: {port}, grid_port: {grid}, unit_port: {unit},
      grid_bind: "{self.grid_host(i)}"}}
  - governance: {{node: {node}, kind: gas_plant, introducer: "{intro}", epoch_s: {EPOCH_S},
      rounds: 10, market: {market}, period_s: {PERIOD_S}, shuffle_period_s: {PERIOD_S}, shuffle_timeout_s: 0.4,
      view_size: 4, shuffle_length: 2, shuffle: {self.shuffle}, respawn_delay_s: 0.5}}
  - detection: {{node: {node}, name: meter, device: fixed_load, period_s: {PERIOD_S},
      params: {{profile: g0, annual_kwh: 100000}}}}
  - action: {{node: {node}, name: gen, device: gas_plant, period_s: {PERIOD_S},
      params: {{p_max_kw: 20, p_min_kw: 0, ramp_pct_per_min: 600,
        marginal_cost_eur_mwh: {COSTS[i % len(COSTS)]}, startup_time_s: 0, min_on_s: 0,
        min_off_s: 0}}}}
"""
        path = self.tmp / f"{node}.yaml"
        path.write_text(text)
        return path

    def _prefix(self, i: int) -> list[str]:
        out = self.net.exec_prefix(i) if self.net else []
        if i in self.skew_s:
            out += ["faketime", "-f", f"{self.skew_s[i]:+g}s"]
        return out

    def _start_node(self, i: int) -> None:
        log = open(self.tmp / f"launch-{self.nodes[i]}.log", "wb")  # noqa: SIM115
        argv = [
            *self._prefix(i), sys.executable, "-m", "redy", "launch",
            str(self._launch_file(i)), "--state-dir", str(self.state),
        ]  # fmt: skip
        # Its own session: `faketime` and `ip netns exec` wrap the launcher, so the whole group
        # is signalled at the end.
        self.launchers.append(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env={**os.environ, **self.env.get(i, {})},
            )
        )
        log.close()

    def _start_recorder(self, i: int) -> None:
        node = self.nodes[i]
        creds = self.state / node / "credentials.json"
        argv = [
            *(self.net.exec_prefix(i) if self.net else []), sys.executable, str(RECORDER),
            "--broker", f"mqtt://127.0.0.1:{self.ports[i][0]}", "--credentials", str(creds),
            "--node", node, "--out", str(self.tmp / f"rec-{node}.jsonl"),
        ]  # fmt: skip
        self.recorders.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))

    def _wait_broker(self, i: int, timeout_s: float = 90.0) -> None:
        creds = self.state / self.nodes[i] / "credentials.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if creds.exists():
                if self.net is None:
                    pw = json.loads(creds.read_text())["users"]["operator"]
                    if try_connect("127.0.0.1", self.ports[i][0], "operator", pw)[0]:
                        return
                elif broker_pid(self.state, self.nodes[i]) is not None:
                    time.sleep(0.5)
                    return
            time.sleep(0.1)
        raise AssertionError(f"broker of {self.nodes[i]} not up within {timeout_s} s")

    def start(self) -> None:
        if self.net is not None:
            self.net.up()
        self._start_node(0)  # first alone: it writes the grid's shared password
        self._wait_broker(0)
        for i in range(1, self.n):
            self._start_node(i)
        for i in range(self.n):
            self._wait_broker(i)
            self._start_recorder(i)

    def stop(self) -> None:
        for p in self.recorders:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.launchers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*self.recorders, *self.launchers]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL) if p in self.launchers else p.kill()
        if self.net is not None:
            self.net.down()

    # -- faults ---------------------------------------------------------------------------------

    def broker_pid(self, i: int) -> int:
        pid = broker_pid(self.state, self.nodes[i])
        assert pid is not None, f"no broker process for {self.nodes[i]}"
        return pid

    def governance_pid(self, i: int) -> int:
        pid = governance_pid(self.state, self.nodes[i])
        assert pid is not None, f"no governance process for {self.nodes[i]}"
        return pid

    def governance_alive(self) -> dict[str, bool]:
        return {n: governance_pid(self.state, n) is not None for n in self.nodes}

    # -- reading the record ---------------------------------------------------------------------

    def _records(self, node: str, suffix: str) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, message) of every non-empty message the node's recorder kept on a
        topic ending in `suffix`."""
        path = self.tmp / f"rec-{node}.jsonl"
        out = []
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    r = json.loads(line)
                    if r["topic"].endswith(suffix) and r["msg"]:
                        out.append((r["t"], r["msg"]))
        return out

    def states(self, node: str) -> list[tuple[float, dict[str, Any]]]:
        return self._records(node, "/governance/state")

    def views(self, node: str) -> list[tuple[float, list[str]]]:
        return [
            (t, [e["node"] for e in m["entries"]])
            for t, m in self._records(node, "/membership/view")
        ]

    def by_epoch(self) -> dict[int, dict[str, tuple[float | None, str | None]]]:
        """epoch -> node -> (price, status), the node's last word on that epoch."""
        table: dict[int, dict[str, tuple[float | None, str | None]]] = {}
        for node in self.nodes:
            for _t, s in self.states(node):
                if s.get("epoch") is not None:
                    table.setdefault(s["epoch"], {})[node] = (s.get("price_eur_mwh"), s["status"])
        return table

    def cleared_prices(self, t0: float, t1: float) -> tuple[int, int, list[float]]:
        """The whole epochs between times t0 and t1, and every price a node reported cleared
        (or short, or in surplus) for them."""
        first, last = epoch_at(t0) + 1, epoch_at(t1) - 1
        table = self.by_epoch()
        prices = [
            p
            for e in range(first, last + 1)
            for p, status in table.get(e, {}).values()
            if status in CLEARED and p is not None
        ]
        return first, last, prices

    def common(self, epoch: int, nodes: list[str] | None = None, tol: float = 5.0) -> bool:
        """Whether every one of `nodes` cleared `epoch` with prices within `tol` EUR/MWh."""
        row = self.by_epoch().get(epoch, {})
        nodes = nodes if nodes is not None else self.nodes
        got = [row.get(n) for n in nodes]
        if any(g is None or g[1] not in CLEARED or g[0] is None for g in got):
            return False
        prices = [g[0] for g in got if g is not None and g[0] is not None]
        return max(prices) - min(prices) <= tol

    def first_common(self, after: int, nodes: list[str] | None = None) -> int | None:
        for e in sorted(self.by_epoch()):
            if e > after and self.common(e, nodes):
                return e
        return None

    def wait_common(self, after: int, timeout_s: float, nodes: list[str] | None = None) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            e = self.first_common(after, nodes)
            if e is not None:
                return e
            time.sleep(0.3)
        raise AssertionError(
            f"no common price after epoch {after} within {timeout_s} s; last epochs:\n"
            + self.describe(after)
        )

    def spread(self, first: int, last: int) -> float:
        """The largest price spread among nodes reporting cleared, over epochs first..last."""
        worst = 0.0
        for e, row in self.by_epoch().items():
            if first <= e <= last:
                prices = [p for p, s in row.values() if s in CLEARED and p is not None]
                if len(prices) > 1:
                    worst = max(worst, max(prices) - min(prices))
        return worst

    def describe(self, after: int = 0) -> str:
        rows = []
        for e, row in sorted(self.by_epoch().items()):
            if e > after:
                cells = " ".join(
                    f"{n}={row[n][1]}@{row[n][0]:.1f}"
                    if n in row and row[n][0] is not None
                    else f"{n}={row.get(n, (None, '-'))[1]}"
                    for n in self.nodes
                )
                rows.append(f"  epoch {e}: {cells}")
        return "\n".join(rows[-12:])

    def logs(self) -> str:
        out = []
        for f in sorted((self.state / "logs").glob("*.governance.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-15:]))
        return "\n".join(out)


def epoch_at(t: float) -> int:
    return int(t // EPOCH_S)


def _cmdlines() -> Iterator[tuple[int, str]]:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def broker_pid(state: Path, node: str) -> int | None:
    conf = f"{state.resolve()}/{node}/mosquitto.conf"
    for pid, cmd in _cmdlines():
        if "mosquitto" in cmd and conf in cmd and "setpriv" not in cmd.split()[0]:
            return pid
    return None


def governance_pid(state: Path, node: str) -> int | None:
    config = f"{state.resolve()}/{node}/governance.config.json"
    for pid, cmd in _cmdlines():
        if " governance --config " in cmd and config in cmd:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            return pid
    return None


def have_netns() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@contextlib.contextmanager
def running(
    tmp: Path,
    n: int,
    startup_s: float,
    market: str = "pushsum",
    shuffle: str = "cyclon",
    cell_size: int | None = None,
    env: dict[int, dict[str, str]] | None = None,
    common: list[str] | None = None,
) -> Iterator[FaultGrid]:
    """A started grid of `n` nodes that has found a common price (among `common`, default
    all); stopped on the way out."""
    g = FaultGrid(tmp, n=n, market=market, shuffle=shuffle, cell_size=cell_size, env=env)
    try:
        g.start()
        g.wait_common(after=0, timeout_s=startup_s, nodes=common)
        yield g
    finally:
        g.stop()
