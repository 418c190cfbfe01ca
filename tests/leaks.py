"""A pytest plugin: every ResourceWarning (an unclosed socket, file, transport or event loop)
is listed at the end of the session and fails the run, so a new leak is fixed at its source.

Each test ends with a garbage collection, so a leak is reported by the test that made it, not by
whichever test the collector happened to run in. tests/conftest.py loads it for the suite;
tests/structure runs it on a test that leaks a socket.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

_LEAKS: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _collect_leaks() -> Iterator[None]:
    yield
    gc.collect()


def pytest_warning_recorded(warning_message: Any, when: str, nodeid: str, location: Any) -> None:
    if issubclass(warning_message.category, ResourceWarning):
        _LEAKS.append((nodeid or when, str(warning_message.message)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _LEAKS:
        return
    lines = "\n".join(f"  {node}: {what}" for node, what in _LEAKS)
    print(f"\n{len(_LEAKS)} ResourceWarning(s), each a leak to fix at its source:\n{lines}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
