"""Progress of long simulations on stderr (tqdm), only when stderr is a terminal.

A simulator that takes a `progress` callback (called with the number of steps just done) gets a
bar with its total; one that does not gets a ticker of the elapsed time, so a 100,000-node run
never sits silent for minutes. Piped or redirected output stays clean.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def wanted(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _size(stream: Any) -> tuple[int, int]:
    """The terminal's (columns, lines); 80 x 24 where it reports 0 (a fresh pty does, and tqdm
    then draws nothing)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


@contextmanager
def progress_for(
    simulate: Callable[..., Any], total: int, what: str, stream: Any = None
) -> Iterator[dict[str, Any]]:
    """Extra keyword arguments for `simulate`: a progress callback if it takes one.

    Silent (no extra arguments, no output) when `stream` (stderr) is not a terminal.
    """
    stream = stream if stream is not None else sys.stderr
    if not wanted(stream):
        yield {}
        return
    from tqdm import tqdm

    takes_callback = "progress" in inspect.signature(simulate).parameters
    columns, lines = _size(stream)
    bar = tqdm(
        total=total if takes_callback else None,
        desc=what if takes_callback else f"simulating {total} {what}",
        # without a callback there is no count to show, only the time that passes
        bar_format=None if takes_callback else "{desc}: {elapsed} elapsed",
        unit="step",
        file=stream,
        ncols=columns,
        nrows=lines,
    )
    stop = threading.Event()
    ticker = None
    if not takes_callback:

        def tick() -> None:  # refreshes the elapsed time while the simulator runs
            while not stop.wait(0.5):
                bar.refresh()

        ticker = threading.Thread(target=tick, name="progress", daemon=True)
        ticker.start()
    try:
        yield {"progress": bar.update} if takes_callback else {}
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        bar.close()
