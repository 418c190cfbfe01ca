"""Every unit process fixes glibc's mmap threshold (redy.lifetime.fix_mmap_threshold): a TLS
link's read buffer is then its own mapping, given back when the link closes. The heap it saves
is measured by bench/tls_heap.py; here, that the setting takes and that units start with it."""

from __future__ import annotations

import asyncio.sslproto
import subprocess
import sys

from redy.lifetime import MMAP_THRESHOLD_BYTES, TLS_BUFFER_BYTES, fix_mmap_threshold


def test_the_threshold_takes_and_sits_below_a_tls_buffer() -> None:
    assert fix_mmap_threshold() is True  # this machine is Linux with glibc, as CI's
    # the reasoning holds for this Python: asyncio's TLS buffer is the size we fixed it under
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_BUFFER_BYTES > MMAP_THRESHOLD_BYTES


def test_python_m_redy_fixes_the_threshold_before_running_a_command() -> None:
    """`python -m redy` (how redy launch starts every unit) calls it first: the call is there,
    before the command runs, and a process that ran it still works."""
    probe = (
        "import runpy, sys, unittest.mock as m\n"
        "import redy.lifetime as lt\n"
        "calls = []\n"
        "with m.patch.object(lt, 'fix_mmap_threshold', lambda: calls.append(1) or True):\n"
        "    sys.argv = ['redy', '--help']\n"
        "    try:\n"
        "        runpy.run_module('redy', run_name='__main__')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('calls', len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "calls 1" in out.stdout, out.stderr
