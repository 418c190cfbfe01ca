"""The suite fails on a ResourceWarning (issue 30): tests/leaks.py, run on a test that leaks a
socket and on one that closes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

_LEAKY = """
import socket

def test_leaks_a_socket():
    socket.socket().bind(("127.0.0.1", 0))  # never closed

def test_closes_its_socket():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
"""


def _run(tmp_path: Path, select: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(_LEAKY)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "leaks", "-p", "no:cacheprovider",
         "-W", "default::ResourceWarning",  # as pyproject.toml has it
         "--rootdir", str(tmp_path), "-c", os.devnull, "-k", select, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_a_leaked_socket_fails_the_run_and_names_its_test(tmp_path: Path) -> None:
    out = _run(tmp_path, "leaks_a_socket")
    assert out.returncode == 1, out.stdout[-2000:]
    assert "1 passed" in out.stdout  # the test itself passed: the leak failed the run
    assert "ResourceWarning(s), each a leak to fix at its source" in out.stdout
    assert "test_sample.py::test_leaks_a_socket: unclosed <socket.socket" in out.stdout


def test_a_run_without_leaks_passes(tmp_path: Path) -> None:
    out = _run(tmp_path, "closes_its_socket")
    assert out.returncode == 0, out.stdout[-2000:]
    assert "ResourceWarning" not in out.stdout
