"""The node image: its size, how fast a node container starts, and its memory against the same
node run as processes (`redy deploy node` on this machine), measured in the same run.

Runs one node of a small grid file (the eco house of launch/three_machines.yaml: broker,
governance and three units) `--runs` times each way, alternating:
- container: `docker run redy/node:1 ...` on a Docker network this bench creates and removes;
- processes: `redy deploy node ...` from this checkout's .venv.
Start-up is the time from the start command until the node's broker holds its units' `online`
births and its governance state (read from the host by the same code both ways). Memory is the
PSS of every process of the node (from /proc), `--settle` seconds after start-up; for the
container also the cgroup's figure (`docker stats`, which counts page cache too).

    python bench/node_container.py [--runs 3] [--settle 10]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redy import pki
from redy.deploy import node_health, node_image
from redy.errors import RedyError
from redy.launch.parser import parse

NODE = "house-1"
GRID = """\
launch:
  - arg: {name: port, default: "18841"}
  - arg: {name: grid_port, default: "28841"}
  - arg: {name: bind, default: 127.0.0.1}
  - arg: {name: grid_bind, default: 127.0.0.1}
  - arg: {name: advertise, default: 127.0.0.1}
  - clock: {speed: 60, start_s: 43200}
  - broker: {node: house-1, port: $(var port), grid_port: $(var grid_port), bind: $(var bind), grid_bind: $(var grid_bind), advertise: $(var advertise)}
  - governance: {node: house-1, kind: eco_house, epoch_s: 6, rounds: 10}
  - detection: {node: house-1, name: pv-meter, device: pv, params: {kwp: 6}}
  - detection: {node: house-1, name: load-meter, device: household_load, params: {annual_kwh: 4000}}
  - action: {node: house-1, name: water-heater, device: water_heater, params: {power_kw: 2.5, volume_l: 200}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _pss_mib(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


def _wait_healthy(grid: Path, args: dict[str, str], state: Path, broker: str, t0: float) -> float:
    n = parse(grid, args).only(NODE).nodes[0]
    deadline = t0 + 120
    while time.monotonic() < deadline:
        try:
            if node_health(n, state, broker=broker, wait_s=0.3)["healthy"]:
                return time.monotonic() - t0
        except RedyError:
            pass  # not up yet: no credentials, no listener
        time.sleep(0.1)
    raise SystemExit(f"{NODE} did not come up within 120 s")


def run_container(tmp: Path, grid: Path, network: str, settle_s: float) -> dict[str, float]:
    state = tmp / f"c-state-{secrets.token_hex(3)}"
    state.mkdir()
    name = f"redy-bench-{secrets.token_hex(3)}"
    args = {"bind": "0.0.0.0", "grid_bind": "0.0.0.0", "advertise": NODE}
    argv = ["docker", "run", "-d", "--init", "--name", name, "--network", network]
    argv += ["--network-alias", NODE, "--label", "org.redy.bench=1"]
    argv += ["-v", f"{grid.parent}:/etc/redy/launch:ro", "-v", f"{tmp / 'pki'}:/etc/redy/pki:ro"]
    argv += ["-v", f"{state}:/var/lib/redy", node_image(), f"/etc/redy/launch/{grid.name}"]
    argv += [f"{k}:={v}" for k, v in args.items()] + ["--node", NODE, "--pki", "/etc/redy/pki"]
    t0 = time.monotonic()
    try:
        subprocess.run(argv, check=True, capture_output=True)
        ip = subprocess.run(
            [
                "docker",
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        start_s = _wait_healthy(grid, args, state, f"mqtt://{ip}:18841", t0)
        time.sleep(settle_s)
        pid = int(
            subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Pid}}", name],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        pss = _pss_mib(_tree(pid))
        usage = (
            subprocess.run(
                ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                capture_output=True,
                text=True,
            )
            .stdout.split("/")[0]
            .strip()
        )
        return {"start_s": start_s, "pss_mib": pss, "cgroup": _mib(usage)}
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _mib(text: str) -> float:
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / 2**20}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                break
    return float("nan")


def run_processes(tmp: Path, grid: Path, settle_s: float) -> dict[str, float]:
    state = tmp / f"p-state-{secrets.token_hex(3)}"
    args = {"port": str(_free_port()), "grid_port": str(_free_port())}
    redy = Path(sys.executable).with_name("redy")
    argv = [str(redy), "deploy", "node", str(grid), *(f"{k}:={v}" for k, v in args.items())]
    argv += ["--node", NODE, "--state-dir", str(state), "--pki", str(tmp / "pki")]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start_s = _wait_healthy(grid, args, state, f"mqtt://127.0.0.1:{args['port']}", t0)
        time.sleep(settle_s)
        return {"start_s": start_s, "pss_mib": _pss_mib(_tree(proc.pid))}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after start-up")
    opts = ap.parse_args()
    image = node_image()
    size = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True
    )
    if size.returncode != 0:
        raise SystemExit(f"image {image} is missing: make image")
    with tempfile.TemporaryDirectory(prefix="redy-bench-") as d:
        tmp = Path(d)
        grid = tmp / "launch" / "grid.yaml"
        grid.parent.mkdir()
        grid.write_text(GRID)
        pki.issue(tmp / "ca", NODE, [NODE, "127.0.0.1", "localhost"])
        (tmp / "pki").mkdir()
        for f in ("ca.crt", f"{NODE}.crt", f"{NODE}.key"):
            shutil.copy(tmp / "ca" / "pki" / f, tmp / "pki" / f)
        network = f"redy-bench-{secrets.token_hex(3)}"
        subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
        rows: dict[str, list[dict[str, float]]] = {"container": [], "processes": []}
        try:
            for i in range(opts.runs):
                rows["container"].append(run_container(tmp, grid, network, opts.settle))
                rows["processes"].append(run_processes(tmp, grid, opts.settle))
                print(
                    f"run {i + 1}: container {rows['container'][-1]}, processes {rows['processes'][-1]}"
                )
        finally:
            subprocess.run(["docker", "network", "rm", network], capture_output=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[mode])

    print(f"\nimage {image}: {int(size.stdout) / 1e6:.0f} MB")
    print(f"node {NODE} (broker, governance, 3 units), median of {opts.runs} runs each:")
    print(f"{'':<12}{'start-up s':>12}{'PSS MiB':>10}")
    for mode in rows:
        print(f"{mode:<12}{med(mode, 'start_s'):>12.2f}{med(mode, 'pss_mib'):>10.1f}")
    print(f"container cgroup memory (incl. page cache): {med('container', 'cgroup'):.1f} MiB")
    print(
        f"container / processes: start-up {med('container', 'start_s') / med('processes', 'start_s'):.2f}x,"
        f" memory (PSS) {med('container', 'pss_mib') / med('processes', 'pss_mib'):.2f}x"
    )


if __name__ == "__main__":
    main()
