"""What the attacks share: a real governance unit on a node's broker, and a member's identity."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from polling import until

from redy import pki


def start_governance(broker: Any, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """A governance unit of `broker`'s node in distant mode (`options`: more command-line
    settings), logging to `log`; returns once it is connected to its broker."""
    c = broker.config
    with open(log, "wb") as f:
        gov = subprocess.Popen(
            [
                *(sys.executable, "-m", "redy", "governance", "--node", c.node),
                *("--broker", c.uri, "--grid-broker", c.grid_uri),
                *("--credentials", str(c.node_dir / "governance.json")),
                *options,
            ],
            stdout=f,
            stderr=f,
        )
    until(lambda: b"governance connected" in log.read_bytes(), 30, "the governance unit up")
    return gov


def member(state_dir: Path, name: str) -> pki.Identity:
    """A certificate of the grid CA in `state_dir` for `name`: a member's valid identity."""
    return pki.issue(state_dir, name, ["127.0.0.1"])


# MQTT 5 CONNACK: session not present, success, properties: Receive Maximum (0x21) = 1.
_CONNACK_RM1 = bytes([0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x01])
_CONNACK = bytes([0x20, 0x03, 0x00, 0x00, 0x00])


class _Tracked(asyncio.StreamReaderProtocol):
    """A stream server's protocol that notes each connection's transport, so the server can
    close them all, handled or not."""

    def __init__(self, seen: set[asyncio.BaseTransport], *args: Any) -> None:
        super().__init__(*args)
        self._seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._seen.add(transport)
        super().connection_made(transport)


class BadBrokers:
    """TLS listeners on 127.0.0.1 presenting `identity`, each misbehaving its own way; and a
    closed port. `uris` maps a behaviour to its mqtts:// URI."""

    BEHAVIOURS = ("silent", "receive-max-1", "drops", "garbage")

    def __init__(self, identity: pki.Identity) -> None:
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(identity.ca))
        self._ctx.load_cert_chain(str(identity.cert), str(identity.key))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []
        self._transports: set[asyncio.BaseTransport] = set()  # every connection accepted
        self.uris: dict[str, str] = {}
        for behaviour in self.BEHAVIOURS:
            port = asyncio.run_coroutine_threadsafe(self._serve(behaviour), self._loop).result(10)
            self.uris[behaviour] = f"mqtts://127.0.0.1:{port}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.uris["closed"] = f"mqtts://127.0.0.1:{s.getsockname()[1]}"
        self.dials: Counter[str] = Counter()  # connections accepted, per behaviour

    @property
    def connections(self) -> int:
        return sum(self.dials.values())

    async def _serve(self, behaviour: str) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.dials[behaviour] += 1
            try:
                if behaviour != "silent":
                    await reader.read(1024)  # the CONNECT
                if behaviour == "receive-max-1":
                    writer.write(_CONNACK_RM1)
                elif behaviour == "drops":
                    writer.write(_CONNACK)
                    await writer.drain()
                    await reader.read(1024)
                    writer.close()
                    return
                elif behaviour == "garbage":
                    writer.write(bytes(range(256)) * 4)
                await writer.drain()
                while await reader.read(65536):  # read and never answer
                    pass
            except (OSError, ssl.SSLError, asyncio.CancelledError):
                pass  # a client gone, or close(): nothing to answer
            finally:
                writer.close()

        def protocol() -> asyncio.StreamReaderProtocol:
            return _Tracked(self._transports, asyncio.StreamReader(), handle)

        server = await asyncio.get_running_loop().create_server(
            protocol, "127.0.0.1", 0, ssl=self._ctx
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def cancel_all() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # A connection whose handler was cancelled before it ran never closed its writer.
            for transport in self._transports:
                transport.abort()
            await asyncio.sleep(0)  # their connection_lost callbacks
            for server in self._servers:
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
