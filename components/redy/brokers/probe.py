"""Whether a port is free, and whether a broker accepts an account (paho, blocking)."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from redy.errors import BrokerError
from redy.transport.paho_client import new_client, refused_login


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` now."""
    return bind_problem(port, host) is None


def bind_problem(port: int, host: str) -> str | None:
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
        ok, last, refused = _attempt(host, port, user, password, timeout_s=1.0)
        if ok:
            return
        if refused:
            break  # a refusal of our credentials will not change by waiting
        if alive is not None and not alive():
            last = "the broker exited"
            break
        time.sleep(0.05)
    raise BrokerError(f"broker {host}:{port} did not accept user {user!r}: {last}")


def try_connect(
    host: str, port: int, user: str | None, password: str | None, timeout_s: float = 2.0
) -> tuple[bool, str]:
    """(accepted, reason) of one MQTT 5 connection attempt."""
    ok, reason, _ = _attempt(host, port, user, password, timeout_s)
    return ok, reason


def _attempt(
    host: str, port: int, user: str | None, password: str | None, timeout_s: float
) -> tuple[bool, str, bool]:
    """(accepted, reason, our credentials refused) of one MQTT 5 connection attempt."""
    done = threading.Event()
    result: dict[str, Any] = {}
    client = new_client(f"redy-probe-{secrets.token_hex(4)}", user=user, password=password)

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["ok"] = not reason.is_failure
        result["reason"] = str(reason)
        result["refused"] = refused_login(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=5)
    except OSError as exc:
        return False, exc.strerror or str(exc), False
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return False, "no CONNACK", False
        return bool(result["ok"]), str(result["reason"]), bool(result["refused"])
    finally:
        client.disconnect()
        client.loop_stop()
