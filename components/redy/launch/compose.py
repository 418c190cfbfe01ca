"""Compose mode: all units of one node in one process, each still its own MQTT client (as ROS 2
component containers do), to fit hundreds of nodes on one machine.

    python -m redy.launch.compose NODE_DIR/compose.json

The governance unit runs in the main thread's event loop; each detection and action unit runs
its loop in a thread. SIGTERM stops them all cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import orjson

from redy.lifetime import die_with_parent
from redy.units.config import GovernanceConfig, UnitConfig

_log = logging.getLogger("redy.launch.compose")


def run(spec_path: Path) -> int:
    from redy.units.factory import make_unit
    from redy.units.governance import Governance

    spec = orjson.loads(spec_path.read_bytes())
    stop_units = threading.Event()
    threads = []
    for kw in spec["units"]:
        unit = make_unit(UnitConfig(**kw))
        t = threading.Thread(target=unit.run, args=(stop_units,), name=kw["unit"], daemon=True)
        t.start()
        threads.append(t)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if spec["governance"] is not None:
            await Governance(GovernanceConfig(**spec["governance"])).run(stop)
        else:
            await stop.wait()

    try:
        asyncio.run(main())
    finally:
        stop_units.set()
        for t in threads:
            t.join(10)
    return 0


if __name__ == "__main__":
    from redy.logformat import configure

    configure()
    parent = os.environ.get("REDY_PARENT_PID")
    if parent:
        die_with_parent(int(parent))
    sys.exit(run(Path(sys.argv[1])))
