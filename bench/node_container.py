"""The node image: its size, how fast a node container starts, and its memory against the same
node run as processes (`redy deploy node` on this machine), measured in the same run.

Runs one node of a small grid file (an eco house: broker, governance and three units) `--runs`
times each way, alternating, each time a first start and a restart:
- container: `docker run redy/node:1 ...` (a new container, an empty state volume), then
  `docker restart`, on a Docker network this bench creates and removes;
- processes: `redy deploy node ...` from this checkout's .venv (an empty profile cache), then
  the same command again on the same state.
Start-up is the time from the start command until the node's broker holds its units' `online`
births and its governance state (read from the host by the same code both ways). Memory is the
footprint of every process of the node (private pages plus each shared file mapping once, from
/proc) `--settle` seconds after start-up, its PSS and its CPU over those seconds; for the
container also the cgroup's figure.

    python bench/node_container.py [--runs 3] [--settle 8]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docpage

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


def _footprint_mib(pids: list[int]) -> float:
    """What the node needs on a machine of its own: every process's private pages, plus each
    file-backed shared mapping once for the whole node (PSS would split the pages of files the
    host's other processes also map, e.g. the host interpreter, and so flatter the processes)."""
    private_kb = 0
    shared_kb: dict[tuple[str, str], int] = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        key: tuple[str, str] = ("", "")
        for line in text.splitlines():
            head = line.split()
            if not head:
                continue
            if not head[0].endswith(":"):  # a mapping: address perms offset dev inode [path]
                path = head[5] if len(head) > 5 else f"[anon {pid} {head[0]}]"
                key = (path, head[2])
            elif head[0] in ("Private_Clean:", "Private_Dirty:"):
                private_kb += int(head[1])
            elif head[0] in ("Shared_Clean:", "Shared_Dirty:"):
                shared_kb[key] = max(shared_kb.get(key, 0), int(head[1]))
    return (private_kb + sum(shared_kb.values())) / 1024


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _settled(root: int, settle_s: float) -> dict[str, float]:
    """Memory of the node's processes after `settle_s` seconds, and their CPU over that time."""
    before = _cpu_s(_tree(root))
    time.sleep(settle_s)
    tree = _tree(root)
    return {
        "pss_mib": _pss_mib(tree),
        "footprint_mib": _footprint_mib(tree),
        "cpu_pct": 100 * (_cpu_s(tree) - before) / settle_s,
    }


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


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def _container_sample(
    name: str, state: Path, grid: Path, args: dict[str, str], t0: float, settle_s: float
) -> dict[str, float]:
    ip = _docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
    start_s = _wait_healthy(grid, args, state, f"mqtt://{ip.strip()}:18841", t0)
    sample = _settled(int(_docker("inspect", "-f", "{{.State.Pid}}", name)), settle_s)
    usage = _docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name)
    return sample | {"start_s": start_s, "cgroup_mib": _mib(usage.split("/")[0].strip())}


def run_container(
    tmp: Path, grid: Path, network: str, settle_s: float
) -> dict[str, dict[str, float]]:
    """A first start (`docker run`: a new container, an empty state volume, so profiles are
    computed) and a restart (`docker restart`: the same container, profiles cached)."""
    state = tmp / f"c-state-{secrets.token_hex(3)}"
    state.mkdir()
    name = f"redy-bench-{secrets.token_hex(3)}"
    args = {"bind": "0.0.0.0", "grid_bind": "0.0.0.0", "advertise": NODE}
    argv = ["run", "-d", "--init", "--name", name, "--network", network]
    argv += ["--network-alias", NODE, "--label", "org.redy.bench=1"]
    argv += ["-v", f"{grid.parent}:/etc/redy/launch:ro", "-v", f"{tmp / 'pki'}:/etc/redy/pki:ro"]
    argv += ["-v", f"{state}:/var/lib/redy", node_image(), f"/etc/redy/launch/{grid.name}"]
    argv += [f"{k}:={v}" for k, v in args.items()] + ["--node", NODE, "--pki", "/etc/redy/pki"]
    try:
        t0 = time.monotonic()
        _docker(*argv)
        create_s = time.monotonic() - t0  # docker run returns once the container runs
        cold = _container_sample(name, state, grid, args, t0, settle_s) | {"create_s": create_s}
        t0 = time.monotonic()
        _docker("restart", "-t", "10", name)
        warm = _container_sample(name, state, grid, args, t0, settle_s)
        return {"first start": cold, "restart": warm}
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


def run_processes(tmp: Path, grid: Path, settle_s: float) -> dict[str, dict[str, float]]:
    """The same node as processes: a first start (an empty profile cache) and a restart."""
    state = tmp / f"p-state-{secrets.token_hex(3)}"
    args = {"port": str(_free_port()), "grid_port": str(_free_port())}
    redy = Path(sys.executable).with_name("redy")
    argv = [str(redy), "deploy", "node", str(grid), *(f"{k}:={v}" for k, v in args.items())]
    argv += ["--node", NODE, "--state-dir", str(state), "--pki", str(tmp / "pki")]
    env = {**os.environ, "REDY_CACHE_DIR": str(state / "cache")}  # as in the image
    out = {}
    try:
        for phase in ("first start", "restart"):
            t0 = time.monotonic()
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
            try:
                start_s = _wait_healthy(grid, args, state, f"mqtt://127.0.0.1:{args['port']}", t0)
                out[phase] = _settled(proc.pid, settle_s) | {"start_s": start_s}
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return out
    finally:
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
        rows: dict[str, list[dict[str, dict[str, float]]]] = {"container": [], "processes": []}
        try:
            for i in range(opts.runs):
                rows["container"].append(run_container(tmp, grid, network, opts.settle))
                rows["processes"].append(run_processes(tmp, grid, opts.settle))
                print(f"run {i + 1}: container {rows['container'][-1]}")
                print(f"run {i + 1}: processes {rows['processes'][-1]}")
        finally:
            subprocess.run(["docker", "network", "rm", network], capture_output=True)

    def med(mode: str, phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in rows[mode])

    print(f"\nimage {image}: {int(size.stdout) / 1e6:.0f} MB")
    print(f"node {NODE} (broker, governance, 3 units), median of {opts.runs} runs each:")
    print(f"{'':<26}{'start-up s':>12}{'footprint MiB':>15}{'PSS MiB':>10}{'CPU %':>8}")
    for phase in ("first start", "restart"):
        for mode in rows:
            print(
                f"{mode + ', ' + phase:<26}{med(mode, phase, 'start_s'):>12.2f}"
                f"{med(mode, phase, 'footprint_mib'):>15.1f}{med(mode, phase, 'pss_mib'):>10.1f}"
                f"{med(mode, phase, 'cpu_pct'):>8.1f}"
            )
        start = med("container", phase, "start_s") / med("processes", phase, "start_s")
        foot = med("container", phase, "footprint_mib") / med("processes", phase, "footprint_mib")
        print(f"  container / processes, {phase}: start-up {start:.2f}x, memory {foot:.2f}x")
    after_run = statistics.median(
        r["first start"]["start_s"] - r["first start"]["create_s"] for r in rows["container"]
    )
    print(
        f"container first start after docker run returned: {after_run:.2f} s,"
        f" {after_run / med('processes', 'first start', 'start_s'):.2f}x the processes' start-up"
    )
    print(
        f"docker run itself: {med('container', 'first start', 'create_s'):.2f} s of the first"
        f" start; container cgroup memory (with page cache) after restart:"
        f" {med('container', 'restart', 'cgroup_mib'):.1f} MiB"
    )


if __name__ == "__main__":
    with docpage.recorded("node_container"):  # --docs: its page of the site too
        main()
