"""Whether a port is free, and whether a broker accepts an account (paho, blocking)."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from redy.errors import BrokerError


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
