"""What the attacks share: a real governance unit on a node's broker, and a member's identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from polling import until

from redy import pki


def start_governance(broker: Any, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """A governance unit of `broker`'s node in distant mode (`options`: more command-line
    settings), logging to `log`; returns once it is connected to its broker."""
    c = broker.config
    with open(log, "wb") as f:
        gov = subprocess.Popen(
            [
                *(sys.executable, "-m", "redy", "governance", "--node", c.node),
                *("--broker", c.uri, "--grid-broker", c.grid_uri),
                *("--credentials", str(c.node_dir / "governance.json")),
                *options,
            ],
            stdout=f,
            stderr=f,
        )
    until(lambda: b"governance connected" in log.read_bytes(), 30, "the governance unit up")
    return gov


def member(state_dir: Path, name: str) -> pki.Identity:
    """A certificate of the grid CA in `state_dir` for `name`: a member's valid identity."""
    return pki.issue(state_dir, name, ["127.0.0.1"])
