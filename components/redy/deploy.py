"""A grid across machines: one node per gateway, run from the grid's launch file.

    redy deploy node GRID.yaml --node NODE --pki DIR    run one node of a grid file (the node
                                                        image's entry point, a systemd service's)
    redy deploy health GRID.yaml --node NODE            exit 0 if the node's retained births say
                                                        all its units and its governance are up
    redy deploy compose GRID.yaml -o DIR                a Compose file: one service per node
    redy deploy systemd GRID.yaml -o DIR                one unit file set per node

Every gateway gets the same launch files; a node's introducers are the other nodes' advertised
grid listeners, resolved from the file. Certificates come from the grid CA (`redy grid ca init`,
`redy grid cert issue`) as files beside the generated ones (`DIR/NODE/pki/`), never inside them:
the generated files hold no key and no password (local passwords are made on the gateway at
first start and stay in its state volume).
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from redy import pki
from redy.errors import BrokerError, LaunchError
from redy.launch.commands import DURATION, METRICS, MetricsEndpoint, launch_args
from redy.launch.parser import LaunchDescription, NodeSpec, parse
from redy.topics import render

DEFAULT_NODE_IMAGE = "redy/node:1"
# Paths inside the node image (and on a systemd gateway).
STATE_DIR = "/var/lib/redy"
PKI_DIR = "/etc/redy/pki"
LAUNCH_DIR = "/etc/redy/launch"
HEALTH_INTERVAL_S = 30
_WILDCARDS = ("0.0.0.0", "::")


def node_image() -> str:
    """The node image of generated deployments (REDY_NODE_IMAGE, e.g. a registry's copy)."""
    return os.environ.get("REDY_NODE_IMAGE", DEFAULT_NODE_IMAGE)


def install_pki(src: Path, state_dir: Path, node: str) -> None:
    """Copy the grid CA's certificate and `node`'s certificate and key from `src` (a folder
    such as `redy grid cert issue` fills, or its pki/ subfolder) into `state_dir/pki`."""
    if (src / "pki").is_dir() and not (src / "ca.crt").exists():
        src = src / "pki"
    dst = pki.pki_dir(state_dir)
    dst.mkdir(parents=True, exist_ok=True)
    names = ["ca.crt", f"{node}.crt", f"{node}.key"]
    missing = [n for n in names if not (src / n).is_file()]
    if missing:
        raise BrokerError(
            f"{src} lacks {', '.join(missing)}: issue them where the grid CA's key is "
            f"(redy grid cert issue {node} --host ADDRESS) and copy ca.crt, {node}.crt, {node}.key"
        )
    # Never an operator's certificate: it is a person's, issued per person, not a gateway's.
    for name in names:
        if (src / name).is_file():
            data = (src / name).read_bytes()
            if name.endswith(".key"):
                pki.write_private(dst / name, data)
            else:
                pki._write_public(dst / name, data)


def _grid_args(f: Any) -> Any:
    f = click.argument("args", nargs=-1)(f)
    return click.argument("file", type=click.Path(dir_okay=False, exists=True))(f)


@click.group("deploy")
def deploy() -> None:
    """Run one node of a grid file, check it, or generate deployments for many machines."""


@deploy.command("node")
@_grid_args
@click.option("--node", "node_id", required=True, help="The node of FILE this machine runs.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=STATE_DIR,
    show_default=True,
    help="Broker configs, credentials, retained data, logs (a volume).",
)
@click.option(
    "--pki",
    "pki_src",
    type=click.Path(file_okay=False),
    default=None,
    help="Take ca.crt, NODE.crt and NODE.key from this folder (read-only) at each start.",
)
@click.option("--compose", is_flag=True, help="All units of the node in one process.")
@METRICS
@DURATION
def node(
    file: str,
    args: tuple[str, ...],
    node_id: str,
    state_dir: str,
    pki_src: str | None,
    compose: bool,
    metrics_port: int | None,
    duration_s: float | None,
) -> None:
    """Run node NODE of the grid FILE: its broker, governance and units."""
    from redy.launch.supervisor import Supervisor

    desc = parse(file, launch_args(args)).only(node_id)
    if pki_src is not None:
        install_pki(Path(pki_src), Path(state_dir), node_id)
    elif not pki.identity(Path(state_dir), node_id).cert.exists():
        # A node that made its own CA here could talk to no other node of the grid.
        raise BrokerError(
            f"no certificate of {node_id} in {pki.pki_dir(Path(state_dir))}: give --pki DIR with"
            f" ca.crt, {node_id}.crt and {node_id}.key (redy grid cert issue {node_id} --host ADDR)"
        )
    n = desc.nodes[0]
    click.echo(f"node {n.node}: grid listener {n.broker.grid_uri}, state in {state_dir}")
    metrics = MetricsEndpoint(metrics_port)
    status = Supervisor(
        desc,
        state_dir=Path(state_dir),
        compose=compose,
        on_started=metrics.started,
        on_stopping=lambda _sup: metrics.stopping(),
    ).run(duration_s)
    if status:
        raise SystemExit(status)


def node_health(
    n: NodeSpec, state_dir: Path, broker: str | None = None, wait_s: float = 1.5
) -> dict[str, Any]:
    """What the node's own broker (its local listener, or `broker`) holds retained about it:
    each unit's state, the governance unit's status and price, the view; each read within
    `wait_s` seconds. `healthy` when every unit and the governance are up."""
    from redy.brokers import load_credentials
    from redy.transport.session import Received, connect, read_retained

    password = load_credentials(state_dir / n.node / "credentials.json").password("operator")
    names = [render("unit_state", node=n.node, unit=u.name) for u in n.units]
    gov = render("node_state", node=n.node)
    view = render("view", node=n.node)
    if n.governance is not None:
        names += [gov, view]
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker or n.broker.local_uri, "operator", password, inbox) as client:
        found = read_retained(client, inbox, names, wait_s)
    units = {
        u.name: getattr(
            found.get(render("unit_state", node=n.node, unit=u.name)), "state", "missing"
        )
        for u in n.units
    }
    out: dict[str, Any] = {"node": n.node, "units": units}
    state = found.get(gov)
    if n.governance is not None:
        out["status"] = getattr(state, "status", None) if state is not None else "missing"
        out["price_eur_mwh"] = getattr(state, "price_eur_mwh", None)
        out["epoch"] = getattr(state, "epoch", None)
        v = found.get(view)
        out["neighbours"] = sorted(e.node for e in v.entries) if v is not None else []
    out["healthy"] = all(s == "online" for s in units.values()) and out.get("status") not in (
        "offline",
        "missing",
    )
    return out


@deploy.command("health")
@_grid_args
@click.option("--node", "node_id", required=True, help="The node of FILE to check.")
@click.option("--state-dir", type=click.Path(file_okay=False), default=STATE_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def health(file: str, args: tuple[str, ...], node_id: str, state_dir: str, as_json: bool) -> None:
    """Exit 0 if NODE's retained births say its units and governance are up, else 1."""
    n = parse(file, launch_args(args)).only(node_id).nodes[0]
    out = node_health(n, Path(state_dir))
    if as_json:
        click.echo(orjson.dumps(out).decode())
    else:
        down = [u for u, s in out["units"].items() if s != "online"]
        gov = f"governance {out['status']}" if "status" in out else "no governance unit"
        click.echo(
            f"{n.node}: {'healthy' if out['healthy'] else 'unhealthy'}"
            f" ({gov}, units down: {', '.join(down) or 'none'})"
        )
    if not out["healthy"]:
        raise SystemExit(1)


# --- generated deployments --------------------------------------------------------------------


def _check_deployable(desc: LaunchDescription) -> None:
    for n in desc.nodes:
        b = n.broker
        if b.grid_host not in _WILDCARDS or not b.advertise:
            raise LaunchError(
                f"{b.where}: node {n.node} must listen for peers on every address of its machine"
                " and say where they reach it: grid_bind: 0.0.0.0, advertise: HOST"
            )
        if b.backend != "process":
            raise LaunchError(f"{b.where}: node {n.node}: a deployed node runs its own broker")


def _copy_launch(desc: LaunchDescription, out: Path) -> str:
    """Copy the launch file and its includes under out/launch; the main file's relative path."""
    base = Path(os.path.commonpath([f.parent for f in desc.files]))
    for f in desc.files:
        dst = out / "launch" / f.relative_to(base)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    return desc.file.relative_to(base).as_posix()


def _node_certs(certs: Path, n: NodeSpec, out: Path) -> None:
    """`n`'s certificate from the grid's pki (issued now if the CA key is here and it has none
    valid for its advertised address and stating the limits its units give), copied to
    out/NODE/pki (the key owner-only)."""
    host = n.broker.advertise or n.broker.grid_host
    grant = n.grant()
    if pki.has_ca_key(certs):
        ident = pki.ensure_identity(certs, n.node, [host, "127.0.0.1", "localhost"], grant)
        click.echo(f"{n.node}: certificate states {grant.describe()} (from its units)")
    else:
        ident = pki.identity(certs, n.node)
        if not ident.cert.exists() or not ident.key.exists() or not ident.ca.exists():
            raise BrokerError(
                f"{pki.pki_dir(certs)} holds no CA key and no certificate of {n.node}: run "
                f"redy grid ca init, then redy grid cert issue {n.node} --host {host}"
            )
        if host not in pki.cert_hosts(ident.cert):
            raise BrokerError(
                f"{ident.cert} is not valid for {host}: redy grid cert issue {n.node} --host {host}"
            )
        if pki.grant_in(ident.cert) != grant:
            click.echo(
                f"warning: {ident.cert} does not state {n.node}'s limits from its units ("
                f"{grant.describe()}): redy grid cert issue {n.node} --host {host}"
                f" --import-kw {grant.import_kw:g} --export-kw {grant.export_kw:g}",
                err=True,
            )
    install_pki(pki.pki_dir(certs), out / n.node, n.node)


def _generator_options(f: Any) -> Any:
    """FILE [ARGS], -o DIR and --certs STATE_DIR of both generators."""
    f = click.option(
        "--certs",
        type=click.Path(file_okay=False),
        default=".redy",
        show_default=True,
        help="The state dir whose pki/ holds the grid CA (redy grid ca init --state-dir).",
    )(f)
    f = click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True)(
        f
    )
    return _grid_args(f)


def _prepare(
    file: str, args: tuple[str, ...], out_dir: str, certs: str
) -> tuple[LaunchDescription, Path, str]:
    """Parse and check FILE; copy its launch files and each node's certificates under
    `out_dir`. The description, the output folder and the main file's path under launch/."""
    desc = parse(file, launch_args(args))
    _check_deployable(desc)
    out = Path(out_dir)
    rel = _copy_launch(desc, out)
    for n in desc.nodes:
        _node_certs(Path(certs), n, out)
    return desc, out, rel


def _command(rel: str, args: tuple[str, ...], node: str) -> list[str]:
    return [f"{LAUNCH_DIR}/{rel}", *args, "--node", node]


def compose_file(
    desc: LaunchDescription, rel: str, args: tuple[str, ...], image: str
) -> dict[str, Any]:
    """The Compose document: one service per node (its state volume, its certificates as a
    read-only bind mount, a healthcheck on its retained births). A node advertised under its
    own name is reached on the Compose network; one advertised at a machine's address has its
    grid port published there."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for n in desc.nodes:
        b = n.broker
        cmd = _command(rel, args, n.node)
        services[n.node] = {
            "image": image,
            "command": [*cmd, "--pki", PKI_DIR],
            "hostname": n.node,
            "init": True,
            "restart": "unless-stopped",
            "stop_grace_period": "30s",
            "volumes": [
                f"{n.node}-state:{STATE_DIR}",
                f"./launch:{LAUNCH_DIR}:ro",
                f"./{n.node}/pki:{PKI_DIR}:ro",
            ],
            "labels": {"org.redy.node": n.node, "org.redy.advertise": b.advertise or ""},
            "healthcheck": {
                "test": ["CMD", "python3", "-m", "redy", "deploy", "health", *cmd],
                "interval": f"{HEALTH_INTERVAL_S}s",
                "timeout": "10s",
                "retries": 3,
                "start_period": "60s",
            },
        }
        if b.advertise != n.node:  # peers on other machines dial this host's address
            services[n.node]["ports"] = [f"{b.grid_port}:{b.grid_port}"]
        volumes[f"{n.node}-state"] = {}
    return {"services": services, "volumes": volumes}


@deploy.command("compose")
@_generator_options
@click.option("--image", default=None, help="Node image (default REDY_NODE_IMAGE or redy/node:1).")
def compose(file: str, args: tuple[str, ...], out_dir: str, certs: str, image: str | None) -> None:
    """Write DIR/compose.yaml (one service per node of FILE), DIR/launch/ and DIR/NODE/pki/."""
    desc, out, rel = _prepare(file, args, out_dir, certs)
    doc = compose_file(desc, rel, args, image or node_image())
    header = (
        f"# Generated by redy deploy compose from {Path(file).name}: one service per node.\n"
        "# On each machine: docker compose up -d NODE (with this folder beside it). Keys are\n"
        "# in NODE/pki/ (never in this file); passwords are made in each node's state volume.\n"
    )
    (out / "compose.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))
    click.echo(f"{out / 'compose.yaml'}: {len(desc.nodes)} services")


def _systemd_units(
    n: NodeSpec, rel: str, args: tuple[str, ...], redy_bin: str, metrics_port: int | None = None
) -> dict[str, str]:
    cmd = " ".join(shlex.quote(a) for a in _command(rel, args, n.node))
    metrics = "" if metrics_port is None else f" --metrics {metrics_port}"
    name = f"redy-{n.node}"
    service = f"""\
# Generated by redy deploy systemd: node {n.node} of the grid, its broker and units.
[Unit]
Description=ReDy Grid node {n.node} (grid listener {n.broker.grid_uri})
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target

[Service]
Type=simple
ExecStart={redy_bin} deploy node {cmd} --state-dir {STATE_DIR} --pki {PKI_DIR}{metrics}
Environment=REDY_CACHE_DIR={STATE_DIR}/cache
Restart=on-failure
RestartSec=5
KillMode=mixed
TimeoutStopSec=30
StateDirectory=redy
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={STATE_DIR}

[Install]
WantedBy=multi-user.target
"""
    check = f"""\
# Generated by redy deploy systemd: is node {n.node} up (its retained births)?
[Unit]
Description=ReDy Grid node {n.node} health check
After={name}.service

[Service]
Type=oneshot
ExecStart={redy_bin} deploy health {cmd} --state-dir {STATE_DIR}
"""
    timer = f"""\
# Generated by redy deploy systemd: check node {n.node} every {HEALTH_INTERVAL_S} s.
[Unit]
Description=ReDy Grid node {n.node} health check timer

[Timer]
OnActiveSec=60
OnUnitActiveSec={HEALTH_INTERVAL_S}

[Install]
WantedBy=timers.target
"""
    return {
        f"{name}.service": service,
        f"{name}-health.service": check,
        f"{name}-health.timer": timer,
    }


def _install_script(n: NodeSpec) -> str:
    name = f"redy-{n.node}"
    return f"""\
#!/bin/sh
# Generated by redy deploy systemd: install node {n.node} on this gateway (as root).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
install -d -m 0755 {LAUNCH_DIR} && cp -R "$here/../launch/." {LAUNCH_DIR}/
install -d -m 0700 {PKI_DIR}
install -m 0644 "$here/pki/ca.crt" "$here/pki/{n.node}.crt" {PKI_DIR}/
install -m 0600 "$here/pki/{n.node}.key" {PKI_DIR}/
install -m 0644 "$here/{name}.service" "$here/{name}-health.service" \\
    "$here/{name}-health.timer" /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now {name}.service {name}-health.timer
"""


@deploy.command("systemd")
@_generator_options
@click.option(
    "--redy",
    "redy_bin",
    default="/usr/local/bin/redy",
    show_default=True,
    help="The redy command on the gateways.",
)
@click.option(
    "--metrics",
    "metrics_port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Each node serves Prometheus metrics on the gateway's 127.0.0.1:PORT/metrics.",
)
def systemd(
    file: str,
    args: tuple[str, ...],
    out_dir: str,
    certs: str,
    redy_bin: str,
    metrics_port: int | None,
) -> None:
    """Write DIR/NODE/ (a service, a health check and its timer, install.sh, pki/) per node."""
    desc, out, rel = _prepare(file, args, out_dir, certs)
    for n in desc.nodes:
        units = _systemd_units(n, rel, args, redy_bin, metrics_port)
        for fname, text in units.items():
            (out / n.node / fname).write_text(text)
        script = out / n.node / "install.sh"
        script.write_text(_install_script(n))
        script.chmod(0o755)
    click.echo(f"{out}: unit files for {len(desc.nodes)} nodes (run NODE/install.sh on each)")
