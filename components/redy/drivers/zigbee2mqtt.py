"""Zigbee2MQTT metering plugs, bridged from a Zigbee2MQTT broker to the node's broker.

Zigbee2MQTT publishes a device's state as JSON on `<base>/<friendly name>` (`power` in W,
`energy` in kWh, `state` "ON"/"OFF", and `last_seen` when the bridge is set to report it),
takes commands on `<base>/<name>/set` (`{"state": "ON"}`), and keeps a retained availability
`<base>/<name>/availability` (`{"state": "online"}`, or the plain word in older versions) and the
bridge's own `<base>/bridge/state` (its Will). One plug serves a detection unit (power, energy)
and an action unit (on/off) alike.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import secrets
import threading
from typing import Any

import orjson

from redy.devices.base import Applied, Limits
from redy.drivers.base import Driver, Sample, check_mqtt_name, check_positive
from redy.errors import DeviceError, DeviceFault, DeviceUnavailable

_log = logging.getLogger(__name__)


def parse_state(payload: bytes, now_unix: float) -> tuple[float, float | None, bool | None, float]:
    """(power W, energy kWh or None, on or None, timestamp) of one Zigbee2MQTT state message;
    DeviceFault when it is not a JSON object with a non-negative `power`."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise DeviceFault("state is not JSON") from None
    if not isinstance(data, dict):
        raise DeviceFault(f"state is not a JSON object: {payload[:60]!r}")
    power = _number(data, "power", "W")
    if power is None:
        raise DeviceFault("state has no 'power' (W): not a metering device?")
    energy = _number(data, "energy", "kWh")
    state = data.get("state")
    on = None if state is None else state == "ON"
    if state not in (None, "ON", "OFF"):
        raise DeviceFault(f'state \'state\' must be "ON" or "OFF", got {state!r}')
    return power, energy, on, _last_seen(data.get("last_seen"), now_unix)


def _number(data: dict[str, Any], key: str, unit: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DeviceFault(f"state '{key}' must be a number ({unit}), got {value!r}")
    if value < 0:
        raise DeviceFault(f"state '{key}' {value:g} {unit} is negative")
    return float(value)


def _last_seen(value: Any, now_unix: float) -> float:
    """Zigbee2MQTT's `last_seen`: ISO 8601 text or epoch milliseconds; absent: `now_unix`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value) / 1000.0
    if isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DeviceFault(f"state 'last_seen' is not ISO 8601: {value!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.astimezone()  # Zigbee2MQTT's ISO_8601_local without offset
        return stamp.timestamp()
    return now_unix


def _online(payload: bytes) -> bool:
    """An availability or bridge state payload: JSON {"state": ...} or the plain word."""
    text = payload.decode("utf-8", "replace").strip()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text == "online"
    if isinstance(data, dict):
        return bool(data.get("state") == "online")
    return bool(data == "online")


class Zigbee2MqttPlug(Driver):
    """A metering smart plug behind Zigbee2MQTT: power and energy in, on/off out."""

    kind = "z2m_plug"
    actuatable = True

    def __init__(
        self,
        *,
        broker: str,
        name: str,
        rated_kw: float = 3.68,  # 16 A at 230 V: what a Schuko plug may carry
        quantity: str = "consumption",
        base_topic: str = "zigbee2mqtt",
        username: str = "",
        password_env: str = "",
        keepalive_s: int = 10,
        willingness_eur_mwh: float | None = None,
    ) -> None:
        from redy.messages import parse_uri

        super().__init__(rated_kw=rated_kw, quantity=quantity)
        if quantity not in ("consumption", "production"):
            raise DeviceError(f"quantity must be 'consumption' or 'production', got {quantity!r}")
        try:
            self._host, self._port = parse_uri(broker)
        except Exception:
            raise DeviceError(f"broker must be mqtt://HOST:PORT, got {broker!r}") from None
        self.name = check_mqtt_name(name)
        self._base = check_mqtt_name(base_topic, "base_topic")
        if password_env and password_env not in os.environ:
            raise DeviceError(f"password_env: environment variable {password_env} is not set")
        self._username, self._password_env = username, password_env
        self._keepalive_s = int(check_positive(keepalive_s, "keepalive_s"))
        if willingness_eur_mwh is not None and (
            isinstance(willingness_eur_mwh, bool)
            or not isinstance(willingness_eur_mwh, int | float)
            or not math.isfinite(willingness_eur_mwh)
        ):
            raise DeviceError(
                f"willingness_eur_mwh must be a number (EUR/MWh), got {willingness_eur_mwh!r}"
            )
        # None: the governance values the load at its default willingness to pay.
        self.marginal_cost_eur_mwh = willingness_eur_mwh if quantity == "consumption" else None
        self._sign = -1.0 if quantity == "consumption" else 1.0
        self.state_topic = f"{self._base}/{self.name}"
        self._lock = threading.Lock()
        self._latest: Sample | None = None
        self._fault: str | None = None
        self._available = True  # until the device's or the bridge's availability says otherwise
        self._bridge_online = True
        self._connected = False
        self._on_kw = self.rated_kw  # what the plug drew when last on: its flexibility
        self._client: Any = None

    # -- the Zigbee2MQTT side -------------------------------------------------------------------

    def open(self) -> None:
        from redy.transport.paho_client import new_client

        c = new_client(
            f"redy-{secrets.token_hex(4)}",
            user=self._username or None,
            password=os.environ.get(self._password_env) or None,
            mqtt5=False,  # Zigbee2MQTT's broker may speak 3.1.1 only; a clean session either way
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.connect_async(self._host, self._port, keepalive=self._keepalive_s)
        c.loop_start()
        self._client = c

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _log.error("%s %s: Zigbee2MQTT broker refused us: %s", self.kind, self.name, reason)
            return
        with self._lock:
            self._connected = True
        c.subscribe(
            [(self.state_topic, 1), (f"{self.state_topic}/availability", 1),
             (f"{self._base}/bridge/state", 1)]
        )  # fmt: skip

    def _on_disconnect(self, *_a: Any) -> None:
        with self._lock:
            self._connected = False

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        import time

        with self._lock:
            if msg.topic == self.state_topic:
                self._take_state(msg.payload, time.time())
            elif msg.topic == f"{self.state_topic}/availability":
                self._available = _online(msg.payload)
            elif msg.topic == f"{self._base}/bridge/state":
                self._bridge_online = _online(msg.payload)

    def _take_state(self, payload: bytes, now_unix: float) -> None:
        try:
            power_w, energy_kwh, on, ts = parse_state(payload, now_unix)
            power_kw = self.check_power(self._sign * power_w / 1000.0, "power")
        except DeviceFault as exc:
            self._fault = f"{self.kind} {self.name}: {exc}"
            return
        self._fault = None
        if energy_kwh is None:  # a plug that does not count energy: keep the last count
            energy_kwh = abs(self._latest.energy_kwh) if self._latest else 0.0
        if on is None:
            on = power_w > 0
        if on and abs(power_kw) > 0.01 * self.rated_kw:
            self._on_kw = abs(power_kw)
        self._latest = Sample(ts_s=ts, power_kw=power_kw, energy_kwh=self._sign * energy_kwh, on=on)

    # -- the unit side --------------------------------------------------------------------------

    def read(self, now_unix: float) -> Sample:
        with self._lock:
            where = f"{self.kind} {self.name}"
            if not self._connected:
                raise DeviceUnavailable(
                    f"{where}: Zigbee2MQTT broker {self._host}:{self._port} not connected"
                )
            if not self._bridge_online:
                raise DeviceUnavailable(f"{where}: the Zigbee2MQTT bridge is offline")
            if not self._available:
                raise DeviceUnavailable(f"{where}: Zigbee2MQTT says the device is offline")
            if self._fault is not None:
                raise DeviceFault(self._fault)
            if self._latest is None:
                raise DeviceUnavailable(f"{where}: no state on {self.state_topic} yet")
            return self._latest

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        """Switch the plug: `on`, or a setpoint (a plug is on or off: any non-zero one is on)."""
        note = None
        if on is None:
            on = setpoint_kw is not None and abs(setpoint_kw) > 0.0
            if setpoint_kw and abs(abs(setpoint_kw) - self._on_kw) > 0.05 * self._on_kw:
                note = f"a plug is on or off: setpoint {setpoint_kw:g} kW taken as on"
        with self._lock:
            client, connected = self._client, self._connected
        if client is None or not connected:
            raise DeviceUnavailable(f"{self.kind} {self.name}: Zigbee2MQTT broker not connected")
        payload = orjson.dumps({"state": "ON" if on else "OFF"})
        info = client.publish(f"{self.state_topic}/set", payload, qos=1)
        if info.rc != 0:
            raise DeviceUnavailable(f"{self.kind} {self.name}: command not sent (rc {info.rc})")
        return Applied(self._sign * self._on_kw if on else 0.0, on, note)

    def limits(self, sample: Sample) -> Limits:
        reach = self._sign * self._on_kw
        return Limits(min(0.0, reach), max(0.0, reach))
