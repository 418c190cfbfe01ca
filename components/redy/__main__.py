"""`python -m redy`: the redy command line.

A process started by `redy launch` (REDY_PARENT_PID set) asks the kernel to send it SIGTERM when
the launcher dies, so even a `kill -9` of the launcher leaves no unit behind. Every process
fixes glibc's mmap threshold first (`redy.lifetime.fix_mmap_threshold`): a unit runs for months
and opens TLS links again and again, and its heap must not grow with each.
"""

from __future__ import annotations

import os
import sys

from redy.cli import main
from redy.lifetime import die_with_parent, fix_mmap_threshold

if __name__ == "__main__":
    fix_mmap_threshold()
    parent = os.environ.get("REDY_PARENT_PID")
    if parent:
        die_with_parent(int(parent))
    sys.exit(main())
