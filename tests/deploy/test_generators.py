"""`redy deploy compose` and `redy deploy systemd`: what they write parses, runs each node of the
grid file with its own certificates, and holds no secret; a gateway's broker starts on a
certificate issued elsewhere by `redy grid cert issue` (no CA key on the gateway)."""

from __future__ import annotations

import configparser
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from redy import pki
from redy.brokers import NodeBroker, ProcessBroker
from redy.cli import cli
from redy.errors import BrokerError, LaunchError
from redy.launch.parser import parse

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "launch" / "three_machines.yaml"
HOSTS = ["gas_host:=192.0.2.10", "factory_host:=192.0.2.11", "house_host:=192.0.2.12"]
NODES = ("gas-1", "factory-1", "house-1")


def _redy(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


@pytest.fixture
def grid_ca(tmp_path: Path) -> Path:
    """A state dir holding the grid CA, as `redy grid ca init` leaves it."""
    result = _redy("grid", "ca", "init", "--state-dir", str(tmp_path / "ca"))
    assert result.exit_code == 0, result.output
    return tmp_path / "ca"


def _secrets(out: Path) -> list[bytes]:
    """The private keys under `out` (what no generated file may contain)."""
    keys = [p.read_bytes() for p in out.rglob("*.key")]
    assert keys
    return keys


def _no_secret_in(text: str, keys: list[bytes]) -> None:
    assert "PRIVATE KEY" not in text
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("password" in line.lower() for line in settings)
    for key in keys:
        body = [line for line in key.decode().splitlines() if "-----" not in line]
        assert not any(line in text for line in body)


def _check_pki(out: Path, node: str) -> None:
    folder = out / node / "pki"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["ca.crt", f"{node}.crt", f"{node}.key"]
    )
    assert stat.S_IMODE((folder / f"{node}.key").stat().st_mode) == 0o600
    assert pki.common_name_of(folder / f"{node}.crt") == node


def test_cert_issue_states_limits_roles_and_reserved_names(grid_ca: Path) -> None:
    state = str(grid_ca)
    result = _redy("grid", "cert", "issue", "house-7", "--import-kw", "25", "--export-kw", "10",
                   "--state-dir", state)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "import 25 kW, export 10 kW" in result.output and "warning" not in result.stderr
    assert pki.grant_in(grid_ca / "pki" / "house-7.crt") == pki.Grant("node", 25.0, 10.0)
    result = _redy("grid", "cert", "issue", "house-8", "--state-dir", state)
    assert result.exit_code == 0, result.output
    assert "warning: house-8's certificate states no import and export limits" in result.stderr
    for reserved in pki.RESERVED_NAMES:
        result = _redy("grid", "cert", "issue", reserved, "--state-dir", state)
        assert result.exit_code == 1 and "is a reserved name" in result.output, result.output
    result = _redy("grid", "cert", "operator", "alice", "--state-dir", state)
    assert result.exit_code == 0, result.output
    cert = grid_ca / "pki" / "operator.crt"
    assert pki.common_name_of(cert) == "operator.alice"
    assert pki.grant_in(cert) == pki.Grant("operator")
    # A node cannot state other limits than the CA's: the grant is under the CA's signature.
    from cryptography import x509

    parsed = x509.load_pem_x509_certificate((grid_ca / "pki" / "house-7.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((grid_ca / "pki" / "ca.crt").read_bytes())
    parsed.verify_directly_issued_by(ca)
    raised = parsed.tbs_certificate_bytes.replace(b'"export_kw":10.0', b'"export_kw":99.0')
    assert raised != parsed.tbs_certificate_bytes  # the grant is in the signed part


def test_deploy_states_each_nodes_limits_and_copies_no_operator(
    tmp_path: Path, grid_ca: Path
) -> None:
    """Where the CA key is, `redy deploy` issues each node's certificate with the limits its
    units give and says so; the operator's certificate beside them stays on this host."""
    assert _redy("grid", "cert", "operator", "alice", "--state-dir", str(grid_ca)).exit_code == 0
    out = tmp_path / "out"
    result = _redy(
        "deploy", "compose", str(EXAMPLE), *HOSTS, "-o", str(out), "--certs", str(grid_ca)
    )
    assert result.exit_code == 0, result.output
    desc = parse(EXAMPLE, dict(h.split(":=") for h in HOSTS))
    for n in desc.nodes:
        grant = n.grant()
        assert grant.limited and grant.import_kw is not None and grant.export_kw is not None
        assert f"{n.node}: certificate states {grant.describe()}" in result.output
        assert pki.grant_in(out / n.node / "pki" / f"{n.node}.crt") == grant
        assert not (out / n.node / "pki" / "operator.crt").exists()
    house = next(n for n in desc.nodes if n.node == "house-1").grant()
    assert 0 < (house.export_kw or 0) < 100 and 0 < (house.import_kw or 0) < 100


def test_compose_writes_one_service_per_node_and_no_secret(tmp_path: Path, grid_ca: Path) -> None:
    out = tmp_path / "out"
    result = _redy(
        "deploy", "compose", str(EXAMPLE), *HOSTS, "-o", str(out), "--certs", str(grid_ca)
    )
    assert result.exit_code == 0, result.output
    text = (out / "compose.yaml").read_text()
    doc = yaml.safe_load(text)
    assert sorted(doc["services"]) == sorted(NODES)
    assert sorted(doc["volumes"]) == sorted(f"{n}-state" for n in NODES)
    for node, host in zip(NODES, ["192.0.2.10", "192.0.2.11", "192.0.2.12"], strict=True):
        svc = doc["services"][node]
        assert svc["image"] == "redy/node:1"
        cmd = svc["command"]
        assert cmd[0] == "/etc/redy/launch/three_machines.yaml"
        assert (
            cmd[cmd.index("--node") + 1] == node and cmd[cmd.index("--pki") + 1] == "/etc/redy/pki"
        )
        assert set(HOSTS) <= set(cmd)
        assert svc["volumes"] == [
            f"{node}-state:/var/lib/redy",
            "./launch:/etc/redy/launch:ro",
            f"./{node}/pki:/etc/redy/pki:ro",
        ]
        assert svc["ports"] == ["28841:28841"]  # peers on other machines dial the host
        assert svc["healthcheck"]["test"][:6] == [
            "CMD",
            "python3",
            "-m",
            "redy",
            "deploy",
            "health",
        ]
        assert svc["healthcheck"]["test"][6:] == cmd[:-2]
        assert svc["labels"]["org.redy.advertise"] == host
        _check_pki(out, node)
        assert host in pki.cert_hosts(out / node / "pki" / f"{node}.crt")
    _no_secret_in(text, _secrets(out))
    # Compose itself reads the file as valid (docker-compose, the Debian package).
    checked = subprocess.run(
        ["docker-compose", "-f", str(out / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    # The copied launch files run as they are, includes and all, at the paths the services use.
    copied = parse(out / "launch" / "three_machines.yaml", dict(h.split(":=") for h in HOSTS))
    assert [n.node for n in copied.nodes] == list(NODES)
    assert copied.nodes[1].governance is not None
    assert (
        copied.nodes[1].governance.value("introducer")
        == "mqtts://192.0.2.10:28841,mqtts://192.0.2.12:28841"
    )


def test_compose_on_one_machine_publishes_no_port(tmp_path: Path, grid_ca: Path) -> None:
    out = tmp_path / "out"
    result = _redy("deploy", "compose", str(EXAMPLE), "-o", str(out), "--certs", str(grid_ca))
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    # Advertised under their own names, peers reach each other on the Compose network.
    assert all("ports" not in svc for svc in doc["services"].values())


def test_systemd_writes_a_unit_set_per_node_and_no_secret(tmp_path: Path, grid_ca: Path) -> None:
    out = tmp_path / "out"
    result = _redy(
        "deploy", "systemd", str(EXAMPLE), *HOSTS, "-o", str(out), "--certs", str(grid_ca),
        "--metrics", "9464",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    keys = _secrets(out)
    for node in NODES:
        folder = out / node
        names = {
            f"redy-{node}.service",
            f"redy-{node}-health.service",
            f"redy-{node}-health.timer",
            "install.sh",
        }
        assert names <= {p.name for p in folder.iterdir()}
        units = {}
        for name in names - {"install.sh"}:
            parser = configparser.ConfigParser(interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read_string((folder / name).read_text())
            units[name] = parser
            _no_secret_in((folder / name).read_text(), keys)
        service = units[f"redy-{node}.service"]["Service"]
        argv = service["ExecStart"].split()
        assert argv[:4] == [
            "/usr/local/bin/redy",
            "deploy",
            "node",
            "/etc/redy/launch/three_machines.yaml",
        ]
        assert argv[argv.index("--node") + 1] == node
        assert argv[argv.index("--pki") + 1] == "/etc/redy/pki"
        assert argv[argv.index("--metrics") + 1] == "9464"  # served on the gateway's loopback
        assert service["Restart"] == "on-failure"
        assert "deploy health" in units[f"redy-{node}-health.service"]["Service"]["ExecStart"]
        assert units[f"redy-{node}-health.timer"]["Timer"]["OnUnitActiveSec"] == "30"
        script = (folder / "install.sh").read_text()
        assert f'install -m 0600 "$here/pki/{node}.key"' in script
        _no_secret_in(script, keys)
        _check_pki(out, node)


@pytest.mark.parametrize("command", ["compose", "systemd"])
def test_generators_refuse_a_node_peers_cannot_reach(tmp_path: Path, command: str) -> None:
    # figure3.yaml keeps every grid listener on loopback: no other machine could dial it.
    result = _redy(
        "deploy", command, str(REPO / "launch" / "figure3.yaml"), "-o", str(tmp_path / "o")
    )
    assert result.exit_code == 2, result.output  # a one-line error, no traceback
    assert "grid_bind: 0.0.0.0, advertise: HOST" in result.stderr


def test_generators_take_certificates_issued_elsewhere(tmp_path: Path, grid_ca: Path) -> None:
    # Where the CA key is: redy grid cert issue per node; the generator's folder gets only the
    # CA's certificate and the node certificates.
    issued = tmp_path / "issued"
    (issued / "pki").mkdir(parents=True)
    (issued / "pki" / "ca.crt").write_bytes((grid_ca / "pki" / "ca.crt").read_bytes())
    for node, host in zip(NODES, ["192.0.2.10", "192.0.2.11", "192.0.2.12"], strict=True):
        result = _redy("grid", "cert", "issue", node, "--host", host, "--state-dir", str(grid_ca))
        assert result.exit_code == 0, result.output
        for suffix in (".crt", ".key"):
            src = grid_ca / "pki" / f"{node}{suffix}"
            (issued / "pki" / f"{node}{suffix}").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    result = _redy(
        "deploy", "compose", str(EXAMPLE), *HOSTS, "-o", str(out), "--certs", str(issued)
    )
    assert result.exit_code == 0, result.output
    for node in NODES:
        copied = (out / node / "pki" / f"{node}.crt").read_bytes()
        assert copied == (issued / "pki" / f"{node}.crt").read_bytes()
    # A node whose certificate is missing is named, with the command that issues it.
    (issued / "pki" / "house-1.crt").unlink()
    result = _redy(
        "deploy",
        "systemd",
        str(EXAMPLE),
        *HOSTS,
        "-o",
        str(tmp_path / "o2"),
        "--certs",
        str(issued),
    )
    assert result.exit_code == 2, result.output  # a one-line error, no traceback
    assert "redy grid cert issue house-1 --host 192.0.2.12" in result.stderr


def test_node_broker_starts_on_a_certificate_without_the_ca_key(
    tmp_path: Path, grid_ca: Path, free_port: Callable[[], int]
) -> None:
    """A gateway holds ca.crt and its own certificate for the address peers dial, not the CA
    key; `redy deploy node --pki` installs them and the broker starts on them."""
    from redy.deploy import install_pki

    pki.issue(grid_ca, "house-7", ["127.0.0.1"])
    gateway = tmp_path / "gateway"
    install_pki(grid_ca / "pki", gateway, "house-7")
    assert not pki.has_ca_key(gateway)
    config = NodeBroker(node="house-7", port=free_port(), grid_port=free_port(), state_dir=gateway)
    with ProcessBroker(config, die_with_parent=True) as broker:
        assert broker.alive()
        assert (gateway / "house-7" / "grid.crt").read_bytes() == (
            grid_ca / "pki" / "house-7.crt"
        ).read_bytes()
    # A certificate for another address is refused with the command that fixes it.
    pki.issue(grid_ca, "house-8", ["192.0.2.99"])
    install_pki(grid_ca / "pki", gateway, "house-8")
    other = NodeBroker(node="house-8", port=free_port(), grid_port=free_port(), state_dir=gateway)
    with pytest.raises(
        BrokerError, match=re.escape("redy grid cert issue house-8 --host 127.0.0.1")
    ):
        ProcessBroker(other, die_with_parent=True).start()


def _write_grid(path: Path, hosts: tuple[str, str], port: int = 18841) -> Path:
    lines = ["launch:"]
    for node, host in zip(("a-1", "b-1"), hosts, strict=True):
        lines.append(
            f"  - broker: {{node: {node}, port: {port}, grid_bind: 0.0.0.0, advertise: {host}}}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nodes_of_different_machines_may_share_ports(tmp_path: Path) -> None:
    desc = parse(_write_grid(tmp_path / "two.yaml", ("192.0.2.1", "192.0.2.2")))
    assert [n.broker.port for n in desc.nodes] == [18841, 18841]
    assert desc.only("b-1").nodes[0].broker.grid_uri == "mqtts://192.0.2.2:28841"
    with pytest.raises(LaunchError, match="no node 'c-1'"):
        desc.only("c-1")
    # Two nodes advertised at one address are on one machine: their ports must differ.
    with pytest.raises(LaunchError, match="port 18841 is used twice"):
        parse(_write_grid(tmp_path / "one.yaml", ("192.0.2.1", "192.0.2.1")))


def test_health_names_the_units_whose_birth_is_missing(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "launch:\n"
        f"  - broker: {{node: house-9, port: {port}, grid_port: {free_port()}}}\n"
        "  - detection: {node: house-9, name: meter, device: fixed_load,"
        " params: {profile: g0, annual_kwh: 4000}}\n"
    )
    n = parse(grid).nodes[0]
    config = NodeBroker(
        node="house-9",
        port=port,
        grid_port=n.broker.grid_port,
        state_dir=tmp_path / "state",
        units={"meter": "detection"},
    )
    with ProcessBroker(config, die_with_parent=True):
        args = ["deploy", "health", str(grid), "--node", "house-9"]
        result = _redy(*args, "--state-dir", str(tmp_path / "state"), "--json")
        assert result.exit_code == 1
        assert '"meter":"missing"' in result.output and '"healthy":false' in result.output
        result = _redy(*args, "--state-dir", str(tmp_path / "state"))
        assert result.exit_code == 1
        assert "house-9: unhealthy (no governance unit, units down: meter)" in result.output


def test_deploy_node_refuses_to_start_without_the_grid_certificates(tmp_path: Path) -> None:
    grid = _write_grid(tmp_path / "two.yaml", ("192.0.2.1", "192.0.2.2"))
    args = ["deploy", "node", str(grid), "--node", "a-1", "--state-dir", str(tmp_path / "s")]
    result = _redy(*args)
    assert result.exit_code == 2, result.output  # a one-line error, no traceback
    assert "give --pki DIR" in result.stderr
    assert not (tmp_path / "s" / "pki" / "ca.key").exists()  # no CA of its own was made
    result = _redy(*args, "--pki", str(tmp_path / "empty"))
    assert result.exit_code == 2, result.output  # a one-line error, no traceback
    assert "redy grid cert issue a-1" in result.stderr
