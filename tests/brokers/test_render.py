"""Rendering a node's broker files (no broker started)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from redy import brokers

pytestmark = pytest.mark.pure


def test_template_in_brokers_folder_is_the_one_the_package_falls_back_to() -> None:
    template = Path(__file__).resolve().parents[2] / "brokers" / "mosquitto.conf.template"
    assert template.read_text() == brokers._FALLBACK_TEMPLATE


def test_render_writes_listeners_auth_and_persistence(tmp_path: Path) -> None:
    config = brokers.NodeBroker(
        node="house-1", port=18841, state_dir=tmp_path, units={"pv-meter": "detection"}
    )
    creds = brokers.render(config)
    conf = (tmp_path / "house-1" / "mosquitto.conf").read_text()
    assert "listener 18841 127.0.0.1" in conf and "listener 28841 127.0.0.1" in conf
    assert conf.count("allow_anonymous false") == 2
    assert f"persistence_location {tmp_path / 'house-1' / 'data'}/" in conf
    assert set(creds.users) == {"governance", "operator", "pv-meter"}
    mode = stat.S_IMODE((tmp_path / "house-1" / "credentials.json").stat().st_mode)
    assert mode == 0o600
    hashed = (tmp_path / "house-1" / "passwd").read_text()
    assert creds.users["pv-meter"] not in hashed  # stored hashed


def test_render_again_keeps_issued_passwords_and_shares_the_grid_secret(tmp_path: Path) -> None:
    first = brokers.render(brokers.NodeBroker(node="house-1", port=18841, state_dir=tmp_path))
    again = brokers.render(
        brokers.NodeBroker(node="house-1", port=18841, state_dir=tmp_path, units={"x": "action"})
    )
    other = brokers.render(brokers.NodeBroker(node="gas-1", port=18851, state_dir=tmp_path))
    assert again.users["operator"] == first.users["operator"]
    assert "x" in again.users
    assert other.grid_password == first.grid_password
