"""What the simulator benchmarks share: a `redy sim ...` run as its own cold process, with its
wall time, peak RSS and the host's idle share over it, and the time of one real offer check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_MIB = 1024 * 1024


def cpu_ticks() -> tuple[int, int]:
    """(idle, total) jiffies of all cores since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def verify_s() -> float:
    """The time of one real offer check (ECDSA P-256 verification and the limits), s."""
    from redy import pki
    from redy.signing import Signer, Verifier

    with tempfile.TemporaryDirectory() as d:
        pki.ensure_ca(Path(d))
        ident = pki.issue(Path(d), "eco_house-1", ["127.0.0.1"], pki.Grant(import_kw=20.0))
        offer = Signer(ident, session=1).sign(5, (-2.0, 4.5, 40.0, 300.0, 5.0, 60.0, 60.0))
        verifier = Verifier(ident.ca, 100_000.0)
        assert verifier.refusal(offer) is None
        n = 300
        start = time.perf_counter()
        for _ in range(n):
            verifier.refusal(offer)
        return (time.perf_counter() - start) / n


def run_sim(args: list[str]) -> dict[str, Any]:
    """`redy sim ARGS --json` in a process of its own: its JSON, plus `wall_s`, `rss_mib` and
    the host's `idle_share` over the run."""
    cmd = [sys.executable, "-m", "redy", "sim", *args, "--json"]
    idle0, total0 = cpu_ticks()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode()}")
        out.seek(0)
        result: dict[str, Any] = json.loads(out.read())
    idle1, total1 = cpu_ticks()
    result["wall_s"] = wall
    result["rss_mib"] = usage.ru_maxrss * 1024 / _MIB  # KiB on Linux
    result["idle_share"] = (idle1 - idle0) / max(1, total1 - total0)
    return result
