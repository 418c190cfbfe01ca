"""Rendering a node's broker files (no broker started)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from redy import brokers, pki, topics
from redy.errors import BrokerError, RedyError

pytestmark = pytest.mark.pure


def test_template_in_brokers_folder_is_the_one_the_package_falls_back_to() -> None:
    template = Path(__file__).resolve().parents[2] / "brokers" / "mosquitto.conf.template"
    assert template.read_text() == brokers.FALLBACK_TEMPLATE


def test_render_writes_listeners_auth_and_persistence(tmp_path: Path) -> None:
    config = brokers.NodeBroker(
        node="house-1", port=18841, state_dir=tmp_path, units={"pv-meter": "detection"}
    )
    creds = brokers.write_files(config)
    conf = (tmp_path / "house-1" / "mosquitto.conf").read_text()
    for port in (18841, 28841, 23841):  # trusted accounts, grid, units
        assert f"listener {port} 127.0.0.1" in conf
    assert conf.count("allow_anonymous false") == 3
    assert f"max_packet_size {2 * topics.CONTRACT.max_payload_bytes}" in conf
    assert f"persistence_location {tmp_path / 'house-1' / 'data'}/" in conf
    assert set(creds.users) == {"governance", "operator", "pv-meter"}
    mode = stat.S_IMODE((tmp_path / "house-1" / "credentials.json").stat().st_mode)
    assert mode == 0o600
    trusted = (tmp_path / "house-1" / "passwd").read_text()
    units = (tmp_path / "house-1" / "units.passwd").read_text()
    assert [line.split(":")[0] for line in trusted.split()] == ["governance", "operator"]
    assert [line.split(":")[0] for line in units.split()] == ["pv-meter"]
    assert creds.users["pv-meter"] not in units  # stored hashed


def test_render_again_keeps_issued_passwords_and_shares_the_grid_ca(tmp_path: Path) -> None:
    first = brokers.write_files(brokers.NodeBroker(node="house-1", port=18841, state_dir=tmp_path))
    again = brokers.write_files(
        brokers.NodeBroker(node="house-1", port=18841, state_dir=tmp_path, units={"x": "action"})
    )
    brokers.write_files(brokers.NodeBroker(node="gas-1", port=18851, state_dir=tmp_path))
    assert again.users["operator"] == first.users["operator"]
    assert "x" in again.users
    ca = (tmp_path / "house-1" / "grid-ca.crt").read_bytes()
    assert (tmp_path / "gas-1" / "grid-ca.crt").read_bytes() == ca
    assert pki.common_name_of(tmp_path / "gas-1" / "grid.crt") == "gas-1"


def _fenced_blocks(markdown: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] = []
    inside = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(current))
            inside, current = not inside, []
        elif inside:
            current.append(line)
    return blocks


def test_the_acl_examples_in_the_brokers_readme_are_what_the_code_renders() -> None:
    readme = (Path(__file__).resolve().parents[2] / "brokers" / "README.md").read_text()
    blocks = _fenced_blocks(readme)
    units = {"pv-meter": "detection", "heater": "action"}
    assert topics.local_acl("house-1", units).rstrip("\n") in blocks
    assert topics.grid_acl("house-1").rstrip("\n") in blocks


@pytest.mark.parametrize(
    ("units", "kw", "expected"),
    [
        ({"operator": "detection"}, {}, "taken by the operator account"),
        ({"grid": "action"}, {}, "taken by the grid account"),
        ({"meter": "sensor"}, {}, "expected one of detection, action"),
        ({}, {"port": 60000}, "grid port 70000"),
        ({}, {"port": 62000, "grid_port": 12000}, "unit port 67000"),
        ({}, {"port": 18841, "grid_port": 18841}, "grid port 18841, unit port 23841"),
        ({}, {"port": 18841, "unit_port": 28841}, "three different ports"),
    ],
)
def test_a_node_that_cannot_be_served_is_refused_before_anything_is_written(
    tmp_path: Path, units: dict[str, str], kw: dict[str, int], expected: str
) -> None:
    ports = {"port": 18841, **kw}
    with pytest.raises(BrokerError, match=expected):
        brokers.NodeBroker(
            node="house-1",
            port=ports["port"],
            grid_port=ports.get("grid_port"),
            unit_port=ports.get("unit_port"),
            state_dir=tmp_path,
            units=units,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_unit_name_that_is_not_one_topic_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RedyError, match="invalid unit"):
        brokers.NodeBroker(node="house-1", port=18841, state_dir=tmp_path, units={"a/b": "action"})


def test_a_mosquitto_log_is_summed_up_by_its_first_error() -> None:
    log = (
        '1795563918: Error: Unknown configuration variable "no_such_option".\n'
        "1795563918: Error found at bad.conf:1.\n"
    )
    assert brokers.log_summary(log) == 'Error: Unknown configuration variable "no_such_option".'
    assert brokers.log_summary("1795563918: mosquitto version 2.0.11 terminating\n") == (
        "mosquitto version 2.0.11 terminating"
    )
    assert brokers.log_summary("") == "no log"


def test_nodes_rendered_at_the_same_moment_share_one_grid_ca(tmp_path: Path) -> None:
    configs = [
        brokers.NodeBroker(node=f"node-{i}", port=18000 + i, state_dir=tmp_path) for i in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rendered = list(pool.map(brokers.write_files, configs))
    assert len(rendered) == 8
    cas = {(tmp_path / f"node-{i}" / "grid-ca.crt").read_bytes() for i in range(8)}
    assert len(cas) == 1
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == []
