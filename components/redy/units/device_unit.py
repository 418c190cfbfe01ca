"""Detection and action units: one device model, one MQTT session, one loop.

A detection unit samples its device every period and publishes a Measurement. An action unit
applies Commands to its device (idempotently, by sequence number, within the device's limits)
and publishes a retained ActuatorStatus after every command and every period.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redy import messages
from redy.devices import Applied, Device, Limits, make_model
from redy.topics import render
from redy.transport.paho_client import UnitLink
from redy.units.config import UnitConfig, next_bd_seq

_log = logging.getLogger(__name__)


class DeviceUnit:
    """A detection or action unit driving one device model in simulated time."""

    def __init__(self, config: UnitConfig) -> None:
        self.config = config
        self.device: Any = self._make_device(config)
        self._lock = threading.Lock()  # the device is touched by the loop and paho's thread
        self._seq = 0
        self.applied_seq = -1
        self._note: str | None = None
        meta = messages.UnitMeta(
            unit=config.unit,
            role=config.role,
            device=config.device,
            quantity=self.device.quantity,
            rated_power_kw=self.device.rated_kw,
            period_s=config.period_s,
            capacity_kwh=self.device.capacity_kwh_or_none,
            bd_seq=next_bd_seq(config.credentials, config.unit),
            ts_s=time.time(),
        )
        subscriptions: tuple[str, ...] = ()
        if config.role == "action":
            subscriptions = (render("command", node=config.node, unit=config.unit),)
        self.link = UnitLink(
            node=config.node,
            unit=config.unit,
            broker=config.broker,
            password=config.password(),
            meta=meta,
            keepalive_s=config.keepalive_s,
            subscriptions=subscriptions,
            on_message=self._on_message,
        )
        self._sim_t = config.sim_time_s(time.time())
        if isinstance(self.device, Device):
            self.device.t_s = self._sim_t  # start at the shared simulated time, not at zero

    def _make_device(self, config: UnitConfig) -> Any:
        return make_model(config.device, seed=config.seed, **config.params)

    # -- commands (action units) --------------------------------------------------------------

    def _on_message(self, topic: str, msg: Any) -> None:
        if isinstance(msg, messages.Command):
            self.on_command(msg)

    def on_command(self, cmd: messages.Command) -> None:
        with self._lock:
            if cmd.seq <= self.applied_seq:
                self._note = (
                    f"command seq {cmd.seq} ignored: seq {self.applied_seq} already applied"
                )
                _log.info("node=%s unit=%s %s", self.config.node, self.config.unit, self._note)
            else:
                applied = self.device.apply(cmd.setpoint_kw, cmd.on)
                self._applied(cmd, applied)
            self._publish_status()

    def _applied(self, cmd: messages.Command, applied: Applied) -> None:
        self.applied_seq = cmd.seq
        self._note = applied.note
        # Commands come every period: routine ones are debug, clamped ones worth a line.
        _log.log(
            logging.INFO if applied.note else logging.DEBUG,
            "node=%s unit=%s applied seq %d: setpoint %s kW, on %s%s",
            self.config.node,
            self.config.unit,
            cmd.seq,
            applied.setpoint_kw,
            applied.on,
            f" ({applied.note})" if applied.note else "",
        )

    def _publish_status(self) -> None:
        d = self.device
        self._status(
            d.t_s,
            d.power_kw,
            d.setpoint_kw,
            d.on,
            d.limits(self.config.period_s * self.config.speed),
        )

    def _status(
        self,
        ts_s: float,
        power_kw: float,
        setpoint_kw: float | None,
        on: bool,
        limits: Limits,
    ) -> None:
        """Publish the retained status: what is in force, what is reachable, the bid."""
        charge_below, discharge_above = self.device.storage_prices() or (None, None)
        soc = self.device.soc_now()
        soc_lo, soc_hi = self.device.soc_range() or (None, None)
        due = self.device.due()
        status = messages.ActuatorStatus(
            seq=max(self.applied_seq, 0),
            ts_s=max(ts_s, 0.0),
            power_kw=power_kw,
            setpoint_kw=setpoint_kw,
            on=on,
            min_kw=min(limits.min_kw, limits.max_kw),
            max_kw=limits.max_kw,
            marginal_cost_eur_mwh=self.device.bid_eur_mwh(),
            charge_below_eur_mwh=charge_below,
            discharge_above_eur_mwh=discharge_above,
            note=self._note,
            soc=None if soc is None else min(max(soc, 0.0), 1.0),
            soc_min=soc_lo,
            soc_max=soc_hi,
            energy_due_kwh=None if due is None else due[0],
            due_in_s=None if due is None else due[1],
        )
        self.link.publish("actuator_status", status)

    # -- the loop -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance the device to the shared simulated time and report."""
        with self._lock:
            now_sim = self.config.sim_time_s(time.time())
            self.device.step(now_sim - self.device.t_s)
            if self.config.role == "detection":
                r = self.device.reading()
                self.link.publish(
                    "measurement",
                    messages.Measurement(
                        seq=self._seq,
                        ts_s=max(self.device.t_s, 0.0),
                        power_kw=r.power_kw,
                        energy_kwh=r.energy_kwh,
                        soc=r.soc,
                        available_kw=r.available_kw,
                        forecast_kw=r.forecast_kw,
                    ),
                )
                self._seq += 1
            else:
                self._publish_status()

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set: connect, tick every period (no drift), stop cleanly."""
        self.link.start()
        if self.config.role == "action":
            with self._lock:
                self._publish_status()
        period = self.config.period_s
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                if self.link.connected.is_set():
                    self.tick()
                next_t += period
                stop.wait(max(0.0, next_t - time.monotonic()))
        finally:
            self.link.stop()
            _log.info("node=%s unit=%s stopped", self.config.node, self.config.unit)
