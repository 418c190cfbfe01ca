"""Device backends as plugins (entry-point group `redy.devices`) and the launch-time checks of
driver parameters: addresses, ports, unit ids, names, and wall-clock time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from redy.devices import BUILTIN, DEVICES, ENTRY_POINT_GROUP, MODELS, is_driver
from redy.errors import LaunchError
from redy.launch.parser import parse

DRIVERS = ("ocpp_charger", "sunspec_inverter", "sunspec_meter", "z2m_plug")


@pytest.mark.pure
def test_installed_entry_points_declare_every_built_in_device() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {k: declared.get(k) for k in BUILTIN} == BUILTIN
    assert set(DRIVERS) <= set(DEVICES) and not set(DRIVERS) & set(MODELS)
    assert all(is_driver(d) for d in DRIVERS) and not any(is_driver(m) for m in MODELS)


@pytest.mark.e2e
def test_a_pip_installed_package_adds_a_device_through_the_entry_point_group(
    tmp_path: Path,
) -> None:
    """What `pip install` leaves: a module and its dist-info with entry_points.txt."""
    (tmp_path / "redy_kettle.py").write_text(
        textwrap.dedent(
            """
            from redy.devices.base import Device

            class Kettle(Device):
                kind = "kettle"

                def __init__(self, *, power_kw: float = 2.2, seed: int = 0) -> None:
                    super().__init__(power_kw)

                def _advance(self, dt_s: float) -> float:
                    return -self.rated_kw
            """
        )
    )
    info = tmp_path / "redy_kettle-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: redy-kettle\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[redy.devices]\nkettle = redy_kettle:Kettle\n")
    launch = tmp_path / "kitchen.yaml"
    body = (
        "launch:\n  - broker: {node: k, port: 19071}\n"
        "  - detection: {node: k, name: kettle, device: kettle, params: {power_kw: POWER}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def check(power: str) -> subprocess.CompletedProcess[str]:
        launch.write_text(body.replace("POWER", power))
        argv = [sys.executable, "-m", "redy", "launch", str(launch), "--check"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    ok = check("3")
    assert ok.returncode == 0, ok.stderr
    bad = check("hot")
    assert bad.returncode != 0 and "parameter 'power_kw' expected a number" in bad.stderr
    run = subprocess.run(
        [sys.executable, "-c", "from redy.devices import make_model, MODELS; "
         "k = make_model('kettle'); k.step(3600); print('kettle' in MODELS, k.energy_kwh)"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.stdout.split() == ["True", "-2.2"], run.stderr


HEAD = "launch:\n  - broker: {node: a, port: 19001}\n"


@pytest.mark.pure
@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("device: sunspec_meter, params: {host: 10.0.0.300, rated_kw: 5}", "host must be an IP address or a host name, got '10.0.0.300'"),
        ("device: sunspec_meter, params: {host: meter.local, rated_kw: 5, unit_id: 0}", "unit_id must be a Modbus unit id 1-247 or 255, got 0"),
        ("device: sunspec_inverter, params: {host: 127.0.0.1, port: 70000, rated_kw: 5}", "port must be a TCP port 1-65535, got 70000"),
        ("device: sunspec_inverter, params: {host: 127.0.0.1}", "missing parameter(s) ['rated_kw']"),
        ("device: sunspec_meter, params: {host: 127.0.0.1, rated_kw: 5, base_address: 123}", "base_address must be 0, 40000 or 50000"),
        ("device: z2m_plug, params: {broker: 'mqtt://127.0.0.1:1883', name: 'plug/+'}", "must be a Zigbee2MQTT friendly name"),
        ("device: z2m_plug, params: {broker: '127.0.0.1:1883', name: plug}", "broker must be mqtt://HOST:PORT"),
        ("device: ocpp_charger, params: {port: 9001, charge_point_id: 'CP 1'}", "charge_point_id must be 1-48 characters"),
        ("device: ocpp_charger, params: {port: 9001, charge_point_id: CP1, connector_id: 0}", "connector_id must be a connector number 1-32"),
        ("device: ocpp_charger, params: {port: 19001, charge_point_id: CP1}", "port 19001 is used twice"),
    ],
)  # fmt: skip
def test_launch_check_refuses_bad_driver_parameters_with_file_and_line(
    tmp_path: Path, unit: str, expected: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(HEAD + "  - action: {node: a, name: d, " + unit + "}\n")
    with pytest.raises(LaunchError) as err:
        parse(f)
    msg = str(err.value)
    assert f"{f}:3" in msg and expected in msg and "\n" not in msg


@pytest.mark.pure
def test_a_real_device_refuses_a_simulated_clock(tmp_path: Path) -> None:
    f = tmp_path / "fast.yaml"
    f.write_text(
        HEAD + "  - clock: {speed: 60}\n"
        "  - detection: {node: a, name: m, device: sunspec_meter, params: {host: 127.0.0.1, rated_kw: 5}}\n"
    )
    with pytest.raises(LaunchError, match=r"fast\.yaml:4: 'sunspec_meter' drives a real device"):
        parse(f)


@pytest.mark.pure
def test_every_driver_answers_what_an_action_units_status_asks() -> None:
    """The unit's status asks a driver what it asks a model; a question a driver cannot answer
    ended every driver's action unit at its first status."""
    from redy.devices.base import Device
    from redy.drivers.base import Driver

    asked = ("bid_eur_mwh", "storage_prices", "soc_now", "soc_range", "due", "limits")
    assert all(callable(getattr(Device, q)) for q in asked)
    assert [q for q in asked if not callable(getattr(Driver, q, None))] == []
