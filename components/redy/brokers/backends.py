"""A node's broker as a child process or as a container, started until it accepts the operator."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from redy import messages
from redy.brokers.config import (
    CONTAINER_DATA,
    CONTAINER_DIR,
    READY_TIMEOUT_S,
    NodeBroker,
    image_name,
)
from redy.brokers.credentials import Credentials
from redy.brokers.files import write_files
from redy.brokers.probe import bind_problem, wait_authenticated
from redy.errors import BrokerError


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
            problem = bind_problem(port, host)
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
            READY_TIMEOUT_S,
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


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in _MOSQUITTO_FALLBACKS if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise BrokerError(
            "mosquitto not found: install the Debian package mosquitto, or use --backend container"
        )
    return found


def log_summary(text: str) -> str:
    """The line of a mosquitto log that says why it stopped: its first error, else its last line
    (without the timestamp)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    line = errors[0] if errors else (lines[-1] if lines else "no log")
    stamp, sep, rest = line.partition(": ")
    return rest if sep and stamp.isdigit() else line


def _docker_reachable() -> None:
    """Raise OSError unless the Docker daemon's socket (DOCKER_HOST, else the default) accepts a
    connection: asked first, so that docker-py, which leaves its socket open when it cannot
    reach the daemon, is only called when it can."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(host[len("unix://") :])
    elif host.startswith("tcp://"):
        address = host[len("tcp://") :].rstrip("/")
        name, _, port = address.rpartition(":")
        with socket.create_connection((name, int(port)), timeout=5):
            pass


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
        argv = [mosquitto_binary(), "-c", str(self.config.node_dir / "mosquitto.conf")]
        preexec: Callable[[], None] | None = None
        if self._die_with_parent:
            setpriv = shutil.which("setpriv")
            if setpriv is not None:
                argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
            else:  # no util-linux: the same prctl from Python between fork and exec
                from redy.lifetime import die_with_parent

                preexec = die_with_parent
        self._check_ports()
        self.credentials = write_files(self.config)
        if self._log is not None:  # a start after a crash: the dead process's log handle
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop() or kill())
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
                    tail = log_summary(log.read().decode(errors="replace"))
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
        if self._log is not None:
            self._log.close()
            self._log = None

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
        self.credentials = write_files(self.config)
        d = self.config.node_dir.resolve()
        try:
            _docker_reachable()  # docker-py leaks its socket when it cannot connect
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
            .with_volume_mapping(str(d), CONTAINER_DIR, mode="ro")
            .with_volume_mapping(str(d / "data"), CONTAINER_DATA, mode="rw")
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
                f"{log_summary(logs) if logs.strip() else _first_line(exc)}"
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
