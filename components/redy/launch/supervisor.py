"""Executing a launch description: brokers first (each accepting authenticated connections),
then governance units, then detection and action units; respawn what asks for it; stop all in
reverse order on Ctrl-C, SIGTERM or the end of --duration, leaving no process behind.

Children are unit processes (`python -m redy detection ...`) in their own sessions, so a Ctrl-C
reaches only the launcher, which stops them in order. Each child asks the kernel to SIGTERM it
if the launcher dies (PR_SET_PDEATHSIG, set by the child itself at start: see redy.__main__),
so even a `kill -9` of the launcher leaves no orphan unit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from redy.brokers import NodeBroker, SiteBridge, make_broker, unit_credentials_path
from redy.errors import BrokerError, LaunchError
from redy.launch.parser import LaunchDescription, NodeSpec, UnitSpec, check_ports_free
from redy.transport.backoff import Backoff

_log = logging.getLogger(__name__)
_STOP_GRACE_S = 5.0
# Crash-loop limit: a process (or broker) that dies this often within the window is given up.
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0


class Restarts:
    """When to bring a dead process back: after a jittered exponential backoff from `delay_s`
    (the project's one policy, `redy.transport.backoff.Backoff`), reset once it has run a whole
    crash window; given up after `CRASH_LIMIT` deaths within `CRASH_WINDOW_S`."""

    def __init__(self, name: str, delay_s: float) -> None:
        self.name = name
        self.count = 0
        self.gave_up = False
        self.due_at: float | None = None
        self._backoff = Backoff(first_s=max(delay_s, 0.05), cap_s=max(30.0, delay_s))
        self._deaths: list[float] = []
        self._started_at = time.monotonic()

    def started(self, now: float) -> None:
        self._started_at = now
        self.due_at = None

    def died(self, now: float) -> None:
        """Record a death; schedule the restart or give up."""
        if now - self._started_at >= CRASH_WINDOW_S:
            self._backoff.reset()  # it ran well for a while: this is a new incident
        self._deaths = [t for t in self._deaths if now - t < CRASH_WINDOW_S] + [now]
        if len(self._deaths) >= CRASH_LIMIT:
            self.gave_up = True
            _log.error(
                "giving up on %s: it died %d times within %.0f s (see its log)",
                self.name,
                len(self._deaths),
                CRASH_WINDOW_S,
            )
            return
        self.due_at = now + self._backoff.next_delay()

    def due(self, now: float) -> bool:
        return not self.gave_up and self.due_at is not None and now >= self.due_at


class Child:
    """One supervised process."""

    def __init__(
        self, name: str, argv: list[str], respawn: bool, delay_s: float, log_path: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.respawn = respawn
        self.delay_s = delay_s
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.died_at: float | None = None
        self.restarts = Restarts(name, delay_s)

    @property
    def respawns(self) -> int:
        return self.restarts.count

    def start(self) -> None:
        env = {**os.environ, "REDY_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.died_at = None
        self.restarts.started(time.monotonic())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _log.warning("%s did not stop within %.0f s; killing it", self.name, _STOP_GRACE_S)
            self.proc.kill()
            self.proc.wait()


def _redy() -> list[str]:
    return [sys.executable, "-m", "redy"]


class Supervisor:
    """Runs one launch description."""

    def __init__(
        self,
        desc: LaunchDescription,
        *,
        state_dir: Path,
        backend: str | None = None,
        compose: bool = False,
        on_started: Callable[[Supervisor], None] | None = None,
        on_stopping: Callable[[Supervisor], None] | None = None,
    ) -> None:
        self.desc = desc
        self.state_dir = state_dir.resolve()
        self.backend = backend
        self.compose = compose
        self.on_started = on_started
        self.on_stopping = on_stopping
        self.brokers: list[Any] = []
        self._broker_restarts: list[Restarts] = []
        self.children: list[Child] = []
        self.start_unix = time.time()
        self._stop = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()

    # -- building command lines --------------------------------------------------------------

    def broker_config(self, n: NodeSpec) -> NodeBroker:
        b = n.broker
        site = SiteBridge(b.site_broker, b.site_user, b.site_password) if b.site_broker else None
        return NodeBroker(
            node=n.node,
            port=b.port,
            grid_port=b.grid_port,
            unit_port=b.unit_port,
            state_dir=self.state_dir,
            units={u.name: u.role for u in n.units},
            bind=b.bind,
            grid_bind=b.grid_bind,
            advertise=b.advertise,
            site=site,
            grant=n.grant(),
        )

    def _common(self, n: NodeSpec, account: str) -> dict[str, Any]:
        cfg = self.broker_config(n)
        governance = account == "governance"
        creds = (
            cfg.node_dir / "governance.json" if governance else unit_credentials_path(cfg, account)
        )
        return {
            "node": n.node,
            "broker": cfg.uri if governance else cfg.unit_uri,
            "credentials": str(creds),  # that process's own password, nobody else's
            "speed": self.desc.clock.speed,
            "start_unix": self.start_unix,
            "sim_start_s": self.desc.clock.start_s,
        }

    def governance_config(self, n: NodeSpec) -> dict[str, Any]:
        """The settings of redy.units.config.GovernanceConfig for node `n` (JSON values)."""
        g = n.governance
        assert g is not None
        kw = {**self._common(n, "governance"), **g.settings}
        if g.distant:
            kw["grid_broker"] = n.broker.grid_uri
        return kw

    def unit_config(self, n: NodeSpec, u: UnitSpec) -> dict[str, Any]:
        """The settings of redy.units.config.UnitConfig for unit `u` of node `n`."""
        return {
            **self._common(n, u.name),
            "unit": u.name,
            "role": u.role,
            "device": u.device,
            "params": dict(u.params),
            **u.settings,
        }

    def _config_argv(
        self, n: NodeSpec, command: str, name: str, config: dict[str, Any]
    ) -> list[str]:
        """`python -m redy COMMAND --config FILE`: the settings go over as JSON, typed, never
        as command-line strings to be parsed again."""
        path = self.state_dir / n.node / f"{name}.config.json"
        path.write_bytes(orjson.dumps(config))
        return [*_redy(), command, "--config", str(path)]

    def _compose_argv(self, n: NodeSpec) -> list[str]:
        spec = {
            "governance": self.governance_config(n) if n.governance else None,
            "units": [self.unit_config(n, u) for u in n.units],
        }
        path = self.state_dir / n.node / "compose.json"
        path.write_bytes(orjson.dumps(spec))
        return [sys.executable, "-m", "redy.launch.compose", str(path)]

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        check_ports_free(self.desc)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for n in self.desc.nodes:
            backend = self.backend or n.broker.backend
            broker = make_broker(self.broker_config(n), backend, die_with_parent=True)
            _log.info("starting broker of %s (%s) on %s", n.node, backend, broker.uri)
            broker.start()
            self.brokers.append(broker)
            self._broker_restarts.append(Restarts(f"{n.node}/broker", 0.5))
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        for n in self.desc.nodes:
            if self.compose:
                self._spawn(
                    Child(
                        f"{n.node}/compose",
                        self._compose_argv(n),
                        True,
                        1.0,
                        logs / f"{n.node}.compose.log",
                    )
                )
            elif n.governance is not None:
                g = n.governance
                argv = self._config_argv(n, "governance", "governance", self.governance_config(n))
                self._spawn(
                    Child(
                        f"{n.node}/governance",
                        argv,
                        g.respawn,
                        g.respawn_delay_s,
                        logs / f"{n.node}.governance.log",
                    )
                )
        if not self.compose:
            for n in self.desc.nodes:
                for u in n.units:
                    argv = self._config_argv(n, u.role, u.name, self.unit_config(n, u))
                    self._spawn(
                        Child(
                            f"{n.node}/{u.name}",
                            argv,
                            u.respawn,
                            u.respawn_delay_s,
                            logs / f"{n.node}.{u.name}.log",
                        )
                    )
        _log.info("launch up: %d brokers, %d processes", len(self.brokers), len(self.children))

    def _spawn(self, child: Child) -> None:
        child.start()
        self.children.append(child)
        _log.info("started %s (pid %s)", child.name, child.pid)

    @property
    def respawns(self) -> int:
        """Processes and brokers brought back so far."""
        return sum(c.respawns for c in self.children) + sum(r.count for r in self._broker_restarts)

    def broker_processes(self) -> list[tuple[str, Any, int]]:
        """Each node's broker with its restarts so far: (node, broker, restarts)."""
        return [
            (n.node, b, r.count)
            for n, b, r in zip(self.desc.nodes, self.brokers, self._broker_restarts, strict=False)
        ]

    @property
    def given_up(self) -> list[str]:
        """The brokers and processes the crash-loop limit gave up on."""
        return [
            r.name
            for r in [*(c.restarts for c in self.children), *self._broker_restarts]
            if r.gave_up
        ]

    def poll(self) -> None:
        """Restart dead brokers and respawn dead children that ask for it (with backoff and a
        crash-loop limit); report the others once."""
        now = time.monotonic()
        for broker, r in zip(self.brokers, self._broker_restarts, strict=True):
            if broker.alive():
                continue
            if r.due_at is None and not r.gave_up:
                _log.warning("%s died; restarting it", r.name)
                r.died(now)
            if r.due(now):
                r.count += 1
                try:
                    broker.start()
                except BrokerError as exc:
                    _log.warning("%s did not come back: %s", r.name, exc)
                    r.died(time.monotonic())
                    continue
                r.started(time.monotonic())
                _log.info("restarted %s (restart %d)", r.name, r.count)
        for c in self.children:
            if c.proc is None or c.alive():
                continue
            r = c.restarts
            if c.died_at is None:
                c.died_at = now
                if c.respawn:
                    r.died(now)
                _log.warning(
                    "%s exited (%s)%s",
                    c.name,
                    c.proc.returncode,
                    f"; respawning in {r.due_at - now:.1f} s"
                    if c.respawn and r.due_at is not None
                    else "",
                )
            if c.respawn and r.due(now):
                r.count += 1
                c.start()
                _log.info("respawned %s (pid %s, restart %d)", c.name, c.pid, r.count)

    def stop(self) -> None:
        """Stop every child in reverse start order, then the brokers in reverse order."""
        for c in reversed(self.children):
            c.stop()
        for b in reversed(self.brokers):
            try:
                b.stop()
            except BrokerError as exc:
                _log.warning("%s", exc)
        _log.info("launch stopped")

    def run(self, duration_s: float | None = None) -> int:
        """Start, supervise until stopped or `duration_s` is over, stop. Exit status 0 if every
        broker and process that asked to be kept was kept; 1 if one was given up on."""
        previous = {
            s: signal.signal(s, lambda *_: self._stop.set())
            for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            try:
                self.start()
            except (LaunchError, BrokerError):
                self.stop()
                raise
            if self.on_started is not None:
                self.on_started(self)
            deadline = time.monotonic() + duration_s if duration_s else None
            while not self._stop.wait(0.2):
                self.poll()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            if self.on_stopping is not None:
                self.on_stopping(self)
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
        lost = self.given_up
        if lost:
            _log.error("the launch gave up on %s: exit status 1", ", ".join(lost))
            return 1
        return 0
