"""A node's Mosquitto broker: render its config, passwords and ACLs; run it as a child process or
as a container; wait until it accepts an authenticated connection.

Layout of a node's state directory (`<state_dir>/<node>/`):

    mosquitto.conf        config for the process backend (host paths)
    container.conf        the same config with the container's paths
    passwd, acl           local listener: one account per unit, `governance`, `operator`
    grid.passwd, grid.acl grid listener: the grid credential, `%c` patterns
    credentials.json      the clear-text passwords (mode 0600), read by the launcher and tools
    data/                 persistence (retained messages survive a restart)

The grid credential is shared by every node of a grid: it lives in `<state_dir>/grid.json`
(or comes from REDY_GRID_PASSWORD) and every node rendered in that state dir uses it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import attrs
import click
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from redy import messages, pki
from redy.errors import BrokerError, InvalidMessage
from redy.topics import CONTRACT, UNIT_ROLES, check_id, grid_acl, local_acl

DEFAULT_IMAGE = "redy/mosquitto:2"
GRID_PORT_OFFSET = 10000
# Units' listener at port + 5000: below the grid listener's plan, and for the usual ports
# (1883 -> 6883, 18841 -> 23841) below Linux's ephemeral range (32768..), where a listener
# can find its port held by some outgoing connection.
UNIT_PORT_OFFSET = 5000
# Accounts every node has besides its units: no unit may take one of these names.
RESERVED_USERS = ("governance", "operator", "grid")
# The node's trusted accounts, on the local listener; units are on the units' listener.
TRUSTED_USERS = ("governance", "operator")
_CONTAINER_DIR = "/mosquitto/config/node"
_CONTAINER_DATA = "/mosquitto/data"
_READY_TIMEOUT_S = 15.0


def image_name() -> str:
    """The mosquitto image of the container backend (REDY_MOSQUITTO_IMAGE, e.g. the official
    eclipse-mosquitto:2 where a registry is reachable)."""
    return os.environ.get("REDY_MOSQUITTO_IMAGE", DEFAULT_IMAGE)


@attrs.frozen
class SiteBridge:
    """A one-way Mosquitto bridge from a node's broker to a site broker (Home Assistant's, say):
    the node's topics go out, nothing comes back in, so the site can read the node and never
    write to it. Bridges are fixed at broker start (Mosquitto 2.0 cannot add them at run time)."""

    uri: str = attrs.field()
    username: str | None = None
    password: str | None = None

    @uri.validator
    def _check_uri(self, _attribute: Any, uri: str) -> None:
        from redy.messages import parse_uri

        try:
            parse_uri(uri)
        except InvalidMessage as exc:
            raise BrokerError(f"site broker: {exc}") from None


def bridge_conf(node: str, site: SiteBridge) -> str:
    """The bridge section of a node's mosquitto.conf: `redy/<node>/#` out to the site, QoS 1,
    retained messages kept retained (MQTT 5 bridge), no topic in."""
    from redy.messages import parse_uri

    host, port = parse_uri(site.uri)
    lines = [
        "",
        "# Bridge to the site broker: this node's topics out, nothing in (read-only toward the node).",
        f"connection redy-site-{node}",
        f"address {host}:{port}",
        f"remote_clientid redy-bridge-{node}",
        "bridge_protocol_version mqttv50",
        "cleansession true",
        "notifications false",
        "try_private false",
        f"topic redy/{node}/# out 1",
    ]
    if site.username is not None:
        lines.append(f"remote_username {site.username}")
    if site.password is not None:
        lines.append(f"remote_password {site.password}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class NodeBroker:
    """What a node's broker is: its id, ports, units (name -> role) and where its files live."""

    node: str = attrs.field(validator=lambda _i, _a, v: check_id(v, "node"))
    port: int
    state_dir: Path = attrs.field(converter=Path)
    units: Mapping[str, str] = attrs.field(factory=dict)
    grid_port: int | None = None
    unit_port: int | None = None  # the units' listener; default: port + UNIT_PORT_OFFSET
    bind: str = "127.0.0.1"  # the two local listeners (units; governance and operators)
    grid_bind: str | None = None  # the grid listener (peers); default: `bind`
    advertise: str | None = None  # host peers dial for the grid listener; default: `grid_bind`
    site: SiteBridge | None = None  # a one-way bridge of this node's topics to a site broker

    @units.validator
    def _check_units(self, _attribute: Any, units: Mapping[str, str]) -> None:
        for unit, role in units.items():
            check_id(unit, "unit")
            if unit in RESERVED_USERS:
                raise BrokerError(
                    f"unit name {unit!r} is taken by the {unit} account; rename the unit"
                )
            if role not in UNIT_ROLES:
                raise BrokerError(
                    f"unit {unit!r} has role {role!r}; expected one of {', '.join(UNIT_ROLES)}"
                )

    def __attrs_post_init__(self) -> None:
        ports = {
            "port": self.port,
            "grid port": self.grid_listener_port,
            "unit port": self.unit_listener_port,
        }
        for what, port in ports.items():
            if not 1 <= port <= 65535:
                hint = f" (give a {what})" if what != "port" else ""
                raise BrokerError(f"{what} {port} of node {self.node} is not in 1..65535{hint}")
        if len(set(ports.values())) < len(ports):
            raise BrokerError(
                f"node {self.node}: its listeners need three different ports, got "
                + ", ".join(f"{what} {port}" for what, port in ports.items())
            )
        if self.advertised_host in ("0.0.0.0", "::", ""):
            raise BrokerError(
                f"node {self.node}: the grid listener binds {self.grid_host!r}, which peers cannot"
                " dial; give the address they reach it at (advertise: HOST)"
            )

    @property
    def grid_host(self) -> str:
        return self.grid_bind if self.grid_bind is not None else self.bind

    @property
    def advertised_host(self) -> str:
        return self.advertise if self.advertise is not None else self.grid_host

    @property
    def grid_listener_port(self) -> int:
        return self.grid_port if self.grid_port is not None else self.port + GRID_PORT_OFFSET

    @property
    def unit_listener_port(self) -> int:
        return self.unit_port if self.unit_port is not None else self.port + UNIT_PORT_OFFSET

    @property
    def node_dir(self) -> Path:
        return self.state_dir / self.node

    @property
    def _local_host(self) -> str:
        return (
            "127.0.0.1"
            if self.bind in ("0.0.0.0", "")
            else "::1"
            if self.bind == "::"
            else self.bind
        )

    @property
    def uri(self) -> str:
        """Where the node's governance unit and its operators reach the broker."""
        return f"mqtt://{self._local_host}:{self.port}"

    @property
    def unit_uri(self) -> str:
        """Where the node's detection and action units reach the broker (their own listener,
        on which an account's client id is its name)."""
        return f"mqtt://{self._local_host}:{self.unit_listener_port}"

    @property
    def grid_uri(self) -> str:
        """The grid listener as peers dial it (the advertised address; mutual TLS)."""
        return f"mqtts://{_uri_host(self.advertised_host)}:{self.grid_listener_port}"

    @property
    def credentials_path(self) -> Path:
        return self.node_dir / "credentials.json"

    def port_for(self, user: str) -> int:
        """The local listener an account connects to: units have their own."""
        return self.port if user in TRUSTED_USERS else self.unit_listener_port


@attrs.frozen
class Credentials:
    """Clear-text passwords of a node's local accounts. (Peers have no password: they prove
    who they are with their certificate on the grid listener.)"""

    users: Mapping[str, str]

    def password(self, user: str) -> str:
        try:
            return self.users[user]
        except KeyError:
            raise BrokerError(
                f"no account {user!r}; expected one of {sorted(self.users)}"
            ) from None


def load_credentials(path: Path | str) -> Credentials:
    """Read a node's credentials.json."""
    try:
        data = orjson.loads(Path(path).read_bytes())
        return Credentials(users={str(k): str(v) for k, v in dict(data["users"]).items()})
    except OSError as exc:
        raise BrokerError(f"cannot read credentials {path}: {exc.strerror or exc}") from None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BrokerError(
            f"cannot read credentials {path}: expected the JSON a launch writes, "
            f'{{"users": {{name: password}}}} ({type(exc).__name__}: {exc})'
        ) from None


def _write_private(path: Path, data: bytes) -> Path:
    """Write `path` readable by its owner only, atomically (a reader never sees half a file)."""
    tmp = _private_tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _private_tmp(path: Path) -> Path:
    """A new empty file next to `path`, mode 0600, with a name no other writer uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return tmp


def _password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write a mosquitto password file: clear text into a private temporary file, hashed there by
    `mosquitto_passwd -U` in one call, then moved into place (clear text never sits at `path`)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise BrokerError("mosquitto_passwd not found: install the Debian package mosquitto")
    tmp = _private_tmp(path)
    try:
        tmp.write_bytes("".join(f"{u}:{p}\n" for u, p in users.items()).encode())
        done = (  # mosquitto_passwd fails on an empty file; nothing to hash then
            subprocess.run([tool, "-U", str(tmp)], capture_output=True, text=True, check=False)
            if users
            else subprocess.CompletedProcess([], 0)
        )
        if done.returncode != 0:
            raise BrokerError(f"mosquitto_passwd failed on {path}: {done.stderr.strip()}")
        tmp.chmod(0o644)  # hashed; readable by a container's mosquitto user
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_TEMPLATE = Path(__file__).resolve().parents[2] / "brokers" / "mosquitto.conf.template"


def _template() -> str:
    if _TEMPLATE.exists():
        return _TEMPLATE.read_text()
    return _FALLBACK_TEMPLATE


# Kept identical to brokers/mosquitto.conf.template (a test checks it) so an installed wheel,
# which has no brokers/ folder, renders the same config.
_FALLBACK_TEMPLATE = """\
# Mosquitto config of node {node}. Rendered by redy.brokers: do not edit.
per_listener_settings true
user {user}
persistence true
persistence_location {data_dir}/
# Retained state survives a kill -9 with at most 1 s of loss: a node's broker holds a few hundred
# small retained messages, so rewriting the database once a second costs little (autosave counts
# seconds while autosave_on_changes is false).
autosave_interval 1
autosave_on_changes false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
sys_interval 10
max_packet_size {max_packet_size}
# Limits, whatever a client does: 20 QoS 1 messages in flight per client (advertised as Receive
# Maximum); a client that does not read gets at most 1000 messages or 4 MiB queued, then loses
# the oldest; the broker refuses publishes beyond 256 MiB of memory rather than be killed.
max_inflight_messages 20
max_queued_messages 1000
max_queued_bytes 4194304
memory_limit 268435456
# Send small packets at once: with Nagle's algorithm every forwarded message waits for the
# receiver's delayed ACK (40 ms on Linux): measured 44 ms against 0.2 ms per shuffle round trip.
set_tcp_nodelay true

# Local listener: the node's governance unit and its operators, the node's trusted accounts
# (an operator runs several tools at once and the governance unit keeps two sessions, so their
# client ids are free). No unit has an account here.
listener {port} {bind}
allow_anonymous false
password_file {conf_dir}/passwd
acl_file {conf_dir}/acl
max_connections 64

# Units' listener: each detection and action unit with its own account, whose name is its client
# id, so no unit can take over another's session (or the governance unit's).
listener {unit_port} {bind}
allow_anonymous false
password_file {conf_dir}/units.passwd
acl_file {conf_dir}/acl
use_username_as_clientid true
max_connections 128

# Grid listener: peers' governance units, mutual TLS (1.2 or 1.3). A peer's certificate must be
# signed by the grid CA; its CN (the peer's node id) becomes its username and client id, so the
# ACL's %u patterns confine it to its own topics and nobody can take over another's session.
listener {grid_port} {grid_bind}
allow_anonymous false
cafile {conf_dir}/grid-ca.crt
certfile {conf_dir}/grid.crt
keyfile {conf_dir}/grid.key
require_certificate true
use_identity_as_username true
use_username_as_clientid true
acl_file {conf_dir}/grid.acl
max_connections 256
"""


def render(broker: NodeBroker) -> Credentials:
    """Write a node's config, password and ACL files; keep passwords already issued."""
    d = broker.node_dir
    (d / "data").mkdir(parents=True, exist_ok=True)
    users: dict[str, str] = {}
    if broker.credentials_path.exists():
        users.update(load_credentials(broker.credentials_path).users)
    wanted = ["governance", "operator", *sorted(broker.units)]
    users = {u: users.get(u) or secrets.token_urlsafe(18) for u in wanted}
    _write_private(
        broker.credentials_path,
        orjson.dumps({"node": broker.node, "users": users}, option=orjson.OPT_INDENT_2),
    )
    for unit in broker.units:  # each unit process is handed its own password only
        _write_private(
            unit_credentials_path(broker, unit),
            orjson.dumps({"node": broker.node, "users": {unit: users[unit]}}),
        )
    _write_private(
        broker.node_dir / "governance.json",
        orjson.dumps({"node": broker.node, "users": {"governance": users["governance"]}}),
    )
    _password_file(d / "passwd", {u: users[u] for u in TRUSTED_USERS})
    _password_file(d / "units.passwd", {u: p for u, p in users.items() if u not in TRUSTED_USERS})
    # The grid listener's identity (and the governance unit's, toward its neighbours): the
    # node's certificate, issued by the grid CA on first use.
    ident = pki.ensure_identity(broker.state_dir, broker.node, _cert_hosts(broker))
    (d / "grid-ca.crt").write_bytes(ident.ca.read_bytes())
    (d / "grid.crt").write_bytes(ident.cert.read_bytes())
    _write_private(d / "grid.key", ident.key.read_bytes())
    if pki.has_ca_key(broker.state_dir) or pki.identity(broker.state_dir, "operator").cert.exists():
        pki.ensure_identity(broker.state_dir, "operator", [])  # operators' tools, as a peer reads
    (d / "acl").write_text(local_acl(broker.node, broker.units))
    (d / "grid.acl").write_text(grid_acl(broker.node))
    common = {
        "node": broker.node,
        "port": broker.port,
        "grid_port": broker.grid_listener_port,
        "unit_port": broker.unit_listener_port,
        "bind": broker.bind,
        "grid_bind": broker.grid_host,
        # A safety net behind the codec's own limit: room for the topic and MQTT 5 properties.
        "max_packet_size": 2 * CONTRACT.max_payload_bytes,
    }
    bridge = bridge_conf(broker.node, broker.site) if broker.site else ""
    for name, values in (
        (
            "mosquitto.conf",
            {"user": getpass.getuser(), "data_dir": d / "data", "conf_dir": d.resolve()},
        ),
        (
            "container.conf",
            {"user": "root", "data_dir": _CONTAINER_DATA, "conf_dir": _CONTAINER_DIR},
        ),
    ):
        text = _template().format(**common, **values) + bridge
        if bridge:  # it may hold the site's password: owner-only, like credentials.json
            _write_private(d / name, text.encode())
        else:
            (d / name).write_text(text)
    return Credentials(users=users)


def unit_credentials_path(broker: NodeBroker, unit: str) -> Path:
    """The file a unit process is handed: its own password, nothing else."""
    return broker.node_dir / "units" / f"{unit}.json"


def grid_identity(node_dir: Path) -> pki.Identity:
    """The node's TLS identity as `render` leaves it in the node's folder."""
    return pki.Identity(
        ca=node_dir / "grid-ca.crt", cert=node_dir / "grid.crt", key=node_dir / "grid.key"
    )


def _cert_hosts(broker: NodeBroker) -> list[str]:
    hosts = [broker.advertised_host]
    if broker.grid_host not in ("0.0.0.0", "::"):
        hosts.append(broker.grid_host)
    return [*hosts, "127.0.0.1", "localhost"]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` now."""
    return _bind_problem(port, host) is None


def _bind_problem(port: int, host: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
        except (OverflowError, socket.gaierror) as exc:
            return str(exc)
    return None


def wait_authenticated(
    host: str,
    port: int,
    user: str,
    password: str,
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Return once the broker accepts `user` (MQTT 5); BrokerError after `timeout_s` seconds, or
    as soon as `alive()` says the broker is gone."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        ok, last = try_connect(host, port, user, password, timeout_s=1.0)
        if ok:
            return
        if "not authori" in last.lower() or "bad user" in last.lower():
            break  # a refusal will not change by waiting
        if alive is not None and not alive():
            last = "the broker exited"
            break
        time.sleep(0.05)
    raise BrokerError(f"broker {host}:{port} did not accept user {user!r}: {last}")


def try_connect(
    host: str, port: int, user: str | None, password: str | None, timeout_s: float = 2.0
) -> tuple[bool, str]:
    """(accepted, reason) of one MQTT 5 connection attempt."""
    done = threading.Event()
    result: dict[str, Any] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"redy-probe-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["ok"] = not reason.is_failure
        result["reason"] = str(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=5)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return False, "no CONNACK"
        return bool(result["ok"]), str(result["reason"])
    finally:
        client.disconnect()
        client.loop_stop()


class Broker(Protocol):
    """What both backends offer."""

    config: NodeBroker
    credentials: Credentials

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...


class _BrokerBase:
    def __init__(self, config: NodeBroker) -> None:
        self.config = config
        self.credentials: Credentials = Credentials(users={})

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def grid_port(self) -> int:
        return self.config.grid_listener_port

    @property
    def uri(self) -> str:
        return self.config.uri

    @property
    def unit_port(self) -> int:
        return self.config.unit_listener_port

    def port_for(self, user: str) -> int:
        return self.config.port_for(user)

    @property
    def unit_uri(self) -> str:
        return self.config.unit_uri

    @property
    def grid_uri(self) -> str:
        return self.config.grid_uri

    def start(self) -> None:
        """Render the node's files, start the broker, return once it accepts the operator."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the broker (it saves retained messages first); a stopped broker may start again."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether the broker is still running."""
        raise NotImplementedError

    def _check_ports(self) -> None:
        c = self.config
        for what, host, port in (
            ("local", c.bind, c.port),
            ("unit", c.bind, c.unit_listener_port),
            ("grid", c.grid_host, c.grid_listener_port),
        ):
            problem = _bind_problem(port, host)
            if problem is not None:
                raise BrokerError(
                    f"node {c.node} cannot listen on {host}:{port} ({what} port): {problem}"
                )

    def _wait_ready(self) -> None:
        wait_authenticated(
            messages.parse_uri(self.config.uri)[0],
            self.config.port,
            "operator",
            self.credentials.password("operator"),
            _READY_TIMEOUT_S,
            alive=self.alive,
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# Debian installs mosquitto in /usr/sbin, outside an ordinary user's PATH.
_MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto",)


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in _MOSQUITTO_FALLBACKS if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise BrokerError(
            "mosquitto not found: install the Debian package mosquitto, or use --backend container"
        )
    return found


def _log_summary(text: str) -> str:
    """The line of a mosquitto log that says why it stopped: its first error, else its last line
    (without the timestamp)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    line = errors[0] if errors else (lines[-1] if lines else "no log")
    stamp, sep, rest = line.partition(": ")
    return rest if sep and stamp.isdigit() else line


class ProcessBroker(_BrokerBase):
    """The node's broker as a `mosquitto` child process (the default backend); it logs to
    `<node dir>/mosquitto.log`.

    `die_with_parent`: the kernel stops the broker if the thread that started it dies (launcher
    and test use), through `setpriv --pdeathsig`, so nothing runs between fork and exec.
    """

    def __init__(self, config: NodeBroker, die_with_parent: bool = False) -> None:
        super().__init__(config)
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.config.node_dir / "mosquitto.log"

    def start(self) -> None:
        argv = [_mosquitto_binary(), "-c", str(self.config.node_dir / "mosquitto.conf")]
        preexec: Callable[[], None] | None = None
        if self._die_with_parent:
            setpriv = shutil.which("setpriv")
            if setpriv is not None:
                argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
            else:  # no util-linux: the same prctl from Python between fork and exec
                from redy.lifetime import die_with_parent

                preexec = die_with_parent
        self._check_ports()
        self.credentials = render(self.config)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop())
        start_at = self._log.tell()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdout=self._log,
                stderr=self._log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the launcher, which stops us in order
                preexec_fn=preexec,
            )
            self._wait_ready()
        except BrokerError:
            code = self._proc.poll() if self._proc is not None else None
            self.stop()
            if code is not None:
                with open(self.log_path, "rb") as log:
                    log.seek(start_at)
                    tail = _log_summary(log.read().decode(errors="replace"))
                raise BrokerError(
                    f"mosquitto of node {self.config.node} exited ({code}): {tail}"
                ) from None
            raise
        except BaseException:  # Ctrl-C while waiting: the session-less child would outlive us
            self.stop()
            raise

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class ContainerBroker(_BrokerBase):
    """The node's broker in a container (testcontainers), host networking on 127.0.0.1.

    Containers carry the labels `org.redy.node` and `org.redy.owner-pid` (plus `labels`), so
    `docker ps --filter label=org.redy.node` lists them and leftovers can be found.
    """

    def __init__(
        self, config: NodeBroker, image: str | None = None, labels: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config)
        self.image = image or image_name()
        self.labels = {
            "org.redy.node": config.node,
            "org.redy.owner-pid": str(os.getpid()),
            **(labels or {}),
        }
        self._container: Any = None

    def start(self) -> None:
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # no Ryuk image here
        try:
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.wait_strategies import LogMessageWaitStrategy
        except ImportError as exc:
            raise BrokerError(f"the container backend needs testcontainers: {exc}") from None
        self._check_ports()
        self.credentials = render(self.config)
        d = self.config.node_dir.resolve()
        try:
            container = DockerContainer(self.image)
        except Exception as exc:  # docker-py raises DockerException and friends
            raise BrokerError(
                f"cannot reach docker for node {self.config.node}: {_first_line(exc)} "
                "(is dockerd running? make test starts one)"
            ) from None
        self._ensure_image(container)
        # testcontainers' MosquittoContainer (testcontainers.community.mqtt) publishes port
        # 1883, meaningless with host networking, mounts nothing but the config, and its stop()
        # removes the container by force, before mosquitto saves retained messages. The generic
        # container with its config path and its log wait does what we need.
        container = (
            container.with_kwargs(network_mode="host", labels=self.labels)
            .with_volume_mapping(str(d / "container.conf"), "/mosquitto/config/mosquitto.conf")
            .with_volume_mapping(str(d), _CONTAINER_DIR, mode="ro")
            .with_volume_mapping(str(d / "data"), _CONTAINER_DATA, mode="rw")
            .waiting_for(
                LogMessageWaitStrategy(r"mosquitto version \S+ running").with_startup_timeout(20)
            )
        )
        self._container = container  # from here on, stop() removes whatever was created
        try:
            container.start()
        except Exception as exc:  # docker's errors come in many types; one line for the user
            logs = ""
            with contextlib.suppress(Exception):
                logs = container.get_wrapped_container().logs().decode(errors="replace")
            self.stop()
            raise BrokerError(
                f"container {self.image} of node {self.config.node} did not start: "
                f"{_log_summary(logs) if logs.strip() else _first_line(exc)}"
            ) from None
        except BaseException:
            self.stop()
            raise
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _ensure_image(self, container: Any) -> None:
        """Use the local image, or pull it (a registry image such as eclipse-mosquitto:2)."""
        images = container.get_docker_client().client.images
        with contextlib.suppress(Exception):
            images.get(self.image)
            return
        try:
            images.pull(self.image)
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.get_docker_client().client.close()
            raise BrokerError(
                f"image {self.image} is not here and cannot be pulled ({_first_line(exc)}); "
                "build it with `make image` (bash brokers/image/build.sh) or set "
                "REDY_MOSQUITTO_IMAGE"
            ) from None

    @property
    def container_id(self) -> str | None:
        return self._container.get_wrapped_container().id if self._container else None

    def alive(self) -> bool:
        if self._container is None:
            return False
        try:
            self._container.reload()  # the status is cached from the last inspect
            return bool(self._container.status == "running")
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self._container is not None:
            self._container.get_wrapped_container().kill()

    def stop(self) -> None:
        if self._container is not None:
            # SIGTERM first: mosquitto writes its persistence file (retained messages) on exit;
            # testcontainers' stop() alone removes the container by force.
            with contextlib.suppress(Exception):
                self._container.get_wrapped_container().stop(timeout=5)
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def make_broker(
    config: NodeBroker, backend: str = "process", die_with_parent: bool = False
) -> ProcessBroker | ContainerBroker:
    """A not yet started broker of `backend` ('process' or 'container'). `die_with_parent` ties
    a process broker's life to this process (a container outlives it: stop() it)."""
    if backend == "process":
        return ProcessBroker(config, die_with_parent=die_with_parent)
    if backend == "container":
        return ContainerBroker(config)
    raise BrokerError(f"unknown broker backend {backend!r}; expected 'process' or 'container'")


@contextlib.contextmanager
def running(
    config: NodeBroker, backend: str = "process"
) -> Iterator[ProcessBroker | ContainerBroker]:
    """A started broker, stopped on exit."""
    broker = make_broker(config, backend)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --- CLI ------------------------------------------------------------------------------------


def _unit_option(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    units = {}
    for v in values:
        name, sep, role = v.partition(":")
        if not sep or not name or not role:
            raise click.BadParameter(f"{v!r}: expected NAME:ROLE, e.g. pv-meter:detection")
        units[name] = role
    return units


_STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".redy",
    show_default=True,
    help="Where node folders live (config, passwords, credentials.json, data).",
)


@click.group()
def broker() -> None:
    """A node's Mosquitto broker."""


@broker.command("run")
@click.option("--node", required=True, help="Node id, e.g. house-1.")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="Local listener.")
@click.option(
    "--grid-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Grid listener (peers) [default: port + {GRID_PORT_OFFSET}].",
)
@click.option(
    "--unit-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Units' listener [default: port + {UNIT_PORT_OFFSET}].",
)
@click.option(
    "--bind", default="127.0.0.1", show_default=True, help="Address of the two local listeners."
)
@click.option(
    "--backend", type=click.Choice(["process", "container"]), default="process", show_default=True
)
@_STATE_DIR
@click.option(
    "--unit",
    "units",
    multiple=True,
    metavar="NAME:ROLE",
    callback=_unit_option,
    help="A unit account (role detection or action); repeat for each unit.",
)
@click.option(
    "--site-broker",
    default=None,
    envvar="REDY_SITE_BROKER",
    help="Bridge this node's topics, one way, to a site broker (e.g. Home Assistant's).",
)
@click.option("--site-user", default=None, envvar="REDY_SITE_USER")
@click.option("--site-password", default=None, envvar="REDY_SITE_PASSWORD")
def broker_run(
    node: str,
    port: int,
    grid_port: int | None,
    unit_port: int | None,
    bind: str,
    backend: str,
    state_dir: str,
    units: dict[str, str],
    site_broker: str | None,
    site_user: str | None,
    site_password: str | None,
) -> None:
    """Run one node's broker in the foreground until Ctrl-C or SIGTERM."""
    site = SiteBridge(site_broker, site_user, site_password) if site_broker else None
    config = NodeBroker(
        node=node,
        port=port,
        grid_port=grid_port,
        unit_port=unit_port,
        state_dir=Path(state_dir),
        units=units,
        bind=bind,
        site=site,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with running(config, backend) as b:
        click.echo(
            f"broker of {node} ({backend}) on {b.uri} (local), {b.unit_uri} (units) and "
            f"{b.grid_uri} (grid); "
            f"credentials in {config.credentials_path}"
        )
        try:
            while not stop.wait(0.5):
                if not b.alive():
                    raise BrokerError(f"the broker of {node} stopped unexpectedly")
        except KeyboardInterrupt:
            pass
    click.echo(f"broker of {node} stopped")


@broker.command("password")
@click.option("--node", required=True, help="Node id, e.g. house-1.")
@click.option(
    "--user",
    default="operator",
    show_default=True,
    help="governance, operator, grid, or a unit name.",
)
@_STATE_DIR
def broker_password(node: str, user: str, state_dir: str) -> None:
    """Print one account's password of a rendered node."""
    path = Path(state_dir) / node / "credentials.json"
    if not path.exists():
        raise BrokerError(
            f"no credentials for node {node!r} in {state_dir}: start its broker first"
        )
    click.echo(load_credentials(path).password(user))


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
