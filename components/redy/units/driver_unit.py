"""Detection and action units on a real device: one driver, one MQTT session, one loop.

Like a model's unit (redy.units.device_unit), with three differences. Time is the wall clock
and every measurement carries the device's own timestamp. Commands are queued by paho's thread
and applied by the unit's loop, so a slow device never holds up the MQTT session. And a device
that does not answer, answers with an error or with an impossible value turns the unit's
retained state `offline` (one log line saying why), publishes nothing from it, and turns it back
`online` with the next good reading.
"""

from __future__ import annotations

import logging
import threading
import time

from redy import messages
from redy.devices import make_driver
from redy.drivers.base import Driver, Sample
from redy.errors import DeviceError
from redy.units.config import UnitConfig
from redy.units.device_unit import DeviceUnit

_log = logging.getLogger(__name__)


class DriverUnit(DeviceUnit):
    """A detection or action unit driving one real device through its driver."""

    device: Driver

    def __init__(self, config: UnitConfig) -> None:
        if config.speed != 1.0:
            raise DeviceError(
                f"device {config.device!r} is a real device in wall-clock time: "
                f"speed must be 1, got {config.speed:g}"
            )
        self._pending: messages.Command | None = None
        self._wake = threading.Event()
        self._available: bool | None = None
        self._problem: str | None = None
        self._births_seen = 0
        self._published_ts: float | None = None
        self._energy0_kwh: float | None = None
        self._last: Sample | None = None
        super().__init__(config)

    def _make_device(self, config: UnitConfig) -> Driver:
        return make_driver(config.device, **config.params)

    # -- availability ---------------------------------------------------------------------------

    def _set_available(self, available: bool, problem: str | None) -> None:
        """Publish the unit's state when it changes (or the broker has forgotten it)."""
        births = self.link.births
        if (
            available == self._available
            and problem == self._problem
            and births == self._births_seen
        ):
            return
        unit = f"node={self.config.node} unit={self.config.unit}"
        if problem != self._problem and problem is not None:
            _log.warning("%s device offline: %s", unit, problem)
        elif available and self._available is False:
            _log.info("%s device back online", unit)
        self._available, self._problem, self._births_seen = available, problem, births
        state = messages.UnitState(
            state="online" if available else "offline", bd_seq=self.link.meta.bd_seq
        )
        self.link.publish("unit_state", state)

    # -- commands (action units) ----------------------------------------------------------------

    def on_command(self, cmd: messages.Command) -> None:
        """From paho's thread: keep the newest command for the loop, wake it."""
        with self._lock:
            if self._pending is None or cmd.seq > self._pending.seq:
                self._pending = cmd
        self._wake.set()

    def _apply_pending(self) -> bool:
        with self._lock:
            cmd, self._pending = self._pending, None
        if cmd is None:
            return False
        unit = f"node={self.config.node} unit={self.config.unit}"
        if cmd.seq <= self.applied_seq:
            self._note = f"command seq {cmd.seq} ignored: seq {self.applied_seq} already applied"
            _log.info("%s %s", unit, self._note)
            return True
        try:
            applied = self.device.apply(cmd.setpoint_kw, cmd.on)
        except DeviceError as exc:
            self._note = f"command seq {cmd.seq} not applied: {exc}"
            _log.warning("%s %s", unit, self._note)
            return True
        self._applied(cmd, applied)
        return True

    def _publish_status(self) -> None:
        sample = self._last
        if sample is None or not self._available:
            return  # nothing true to say: the offline state says it
        s = sample
        self._status(s.ts_s, s.power_kw, s.setpoint_kw, s.on, self.device.limits(s))

    # -- the loop -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Apply a queued command, read the device, report (or report it offline)."""
        self._apply_pending()
        try:
            sample = self.device.read(time.time())
        except DeviceError as exc:
            self._last = None
            self._set_available(False, str(exc))
            return
        self._last = sample
        self._set_available(True, None)
        if self.config.role == "action":
            self._publish_status()
            return
        if sample.ts_s == self._published_ts:
            return  # an event-driven device with nothing new: no repeated sample
        if self._energy0_kwh is None:
            self._energy0_kwh = sample.energy_kwh
        self.link.publish(
            "measurement",
            messages.Measurement(
                seq=self._seq,
                ts_s=max(sample.ts_s, 0.0),
                power_kw=sample.power_kw,
                energy_kwh=sample.energy_kwh - self._energy0_kwh,
            ),
        )
        self._published_ts = sample.ts_s
        self._seq += 1

    def _settle(self, grace_s: float) -> None:
        """Give a just-opened device `grace_s` to answer before the birth says `online`, so a
        unit does not flap online-offline-online at every start (an event-driven device needs
        its connection and its first state)."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                self.device.read(time.time())
                return
            except DeviceError:
                if time.monotonic() >= deadline:
                    return  # the first tick reports it offline
                time.sleep(0.05)

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set: open the device, connect, poll every period (no drift),
        and act on a command as soon as it arrives."""
        self.device.open()
        try:
            self._settle(min(2.0, 5 * self.config.period_s))
            self.link.start()
        except BaseException:
            self.device.close()
            raise
        period = self.config.period_s
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                if self.link.connected.is_set():
                    self.tick()
                next_t = max(next_t + period, time.monotonic() - period)
                while not stop.is_set() and self._wake.wait(max(0.0, next_t - time.monotonic())):
                    self._wake.clear()
                    if self.link.connected.is_set() and self._apply_pending():
                        self.tick()  # the device's answer to the command, at once
        finally:
            self.device.close()
            self.link.stop()
            _log.info("node=%s unit=%s stopped", self.config.node, self.config.unit)
