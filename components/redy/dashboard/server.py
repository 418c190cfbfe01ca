"""The dashboard's I/O: one operator MQTT connection per node broker feeding a GridModel, and
an ASGI app (Starlette, served by uvicorn) with the page, `/api/state` and `/events`
(server-sent events: a new snapshot whenever the model changed, at most once a second).

Everything the page loads is served from this package (uPlot is vendored from its npm package
under static/vendor/): nothing outside this machine needs to be reachable.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import paho.mqtt.client as mqtt

from redy import messages
from redy.brokers import load_credentials
from redy.dashboard.model import GridModel
from redy.errors import BrokerError
from redy.topics import subscription
from redy.transport.paho_client import new_client

STATIC = Path(__file__).with_name("static")
_TOPICS = (
    subscription("descriptor"),
    subscription("node_state"),
    subscription("node_health"),
    subscription("unit_state"),
    subscription("view"),
    subscription("plan"),
)
_PUSH_PERIOD_S = 1.0
_REFRESH_S = 5.0  # a snapshot at least this often, even with no news
_LISTENER = re.compile(r"^listener\s+(\d+)\s+(\S+)", re.M)


@attrs.frozen
class Target:
    """One broker the dashboard watches, with the operator account's password."""

    uri: str
    user: str
    password: str
    node: str | None = None


def targets_from_launch_state(state_dir: Path) -> list[Target]:
    """Every node of a launch's state dir: its local listener (the first `listener` line of its
    mosquitto.conf) and its operator password (credentials.json)."""
    found = []
    for conf in sorted(Path(state_dir).glob("*/mosquitto.conf")):
        m = _LISTENER.search(conf.read_text())
        creds = conf.with_name("credentials.json")
        if m is None or not creds.exists():
            continue
        password = load_credentials(creds).password("operator")
        found.append(
            Target(f"mqtt://{m.group(2)}:{m.group(1)}", "operator", password, conf.parent.name)
        )
    if not found:
        raise BrokerError(
            f"no node in {state_dir}: expected <dir>/<node>/mosquitto.conf and credentials.json "
            "as `redy launch --state-dir` writes them"
        )
    return found


class Feed:
    """Operator connections to every target, feeding one GridModel under a lock."""

    def __init__(self, targets: Sequence[Target], model: GridModel | None = None) -> None:
        self.model = model or GridModel()
        self.lock = threading.Lock()
        self._targets = list(targets)
        self._clients: list[mqtt.Client] = []

    def start(self) -> None:
        for t in self._targets:
            host, port = messages.parse_uri(t.uri)
            with self.lock:
                self.model.expect(t.uri, t.node)
            c = new_client(
                f"redy-web-{secrets.token_hex(4)}", user=t.user, password=t.password, userdata=t.uri
            )
            c.on_connect = self._on_connect
            c.on_disconnect = self._on_disconnect
            c.on_message = self._on_message
            c.connect_async(host, port, keepalive=5)
            c.loop_start()
            self._clients.append(c)

    def _on_connect(self, c: mqtt.Client, uri: str, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        for pattern in _TOPICS:
            c.subscribe(pattern, qos=1)
        with self.lock:
            self.model.on_connection(uri, True)

    def _on_disconnect(self, _c: mqtt.Client, uri: str, *_a: Any) -> None:
        with self.lock:
            self.model.on_connection(uri, False)

    def _on_message(self, _c: mqtt.Client, uri: str, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.model.on_message(uri, msg.topic, bytes(msg.payload), time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self.model.snapshot(time.monotonic())

    def stop(self) -> None:
        for c in self._clients:
            c.disconnect()
            c.loop_stop()


def make_app(feed: Feed) -> Any:
    """The Starlette app: `/` the page, `/static/...`, `/api/state`, `/events` (SSE)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def state(_request: Request) -> Response:
        return Response(orjson.dumps(feed.snapshot()), media_type="application/json")

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            sent, sent_at = -1, 0.0
            while not await request.is_disconnected():
                snap = feed.snapshot()
                # liveness also changes with time alone (stale), so resend now and then anyway
                if snap["version"] != sent or time.monotonic() - sent_at >= _REFRESH_S:
                    sent, sent_at = snap["version"], time.monotonic()
                    yield b"data: " + orjson.dumps(snap) + b"\n\n"
                await asyncio.sleep(_PUSH_PERIOD_S)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def index(_request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/events", events),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the HTTP server (port 0: any free one); BrokerError-free, one-line
    OSError text if the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BrokerError(f"dashboard cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class WebServer:
    """uvicorn serving `make_app(feed)` on an already bound socket, in the calling thread
    (`serve`) or in a background thread (`start`/`stop`)."""

    def __init__(self, feed: Feed, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/"
        # open event streams never end by themselves: give them 2 s on shutdown, then close
        config = uvicorn.Config(
            make_app(feed), log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve(self) -> None:
        self._server.run(sockets=[self.sock])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve, name="dashboard-web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
