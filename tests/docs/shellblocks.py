"""The shell blocks of a tutorial, as the tests run them.

Every ```sh block of a page runs, in order, unless the line before its fence is an HTML comment
that starts with `<!-- not run by the tests` (it needs hardware, other machines or Docker).
A test may shorten what runs (a shorter duration, free ports instead of the defaults) through
replacements; each replacement must match, so a tutorial that changes under a test fails it
rather than running something else.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```sh\n(.*?)^```$", re.M | re.S)
# What a tutorial's commands see of the repository: its files, linked into a scratch folder so
# that what they write (.redy/, grid/, *.json) stays out of the checkout.
_LINKED = ("Makefile", "pyproject.toml", ".venv", "launch", "tests", "brokers", "components")


def blocks(page: Path) -> list[str]:
    """The runnable ```sh blocks of a Markdown page, in order."""
    text = page.read_text()
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.startswith("<!-- not run by the tests"):
            continue
        out.append(m.group(1))
    return out


def replaced(block: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in block, f"the tutorial no longer says {old!r}"
        block = block.replace(old, new)
    return block


def workspace(tmp: Path) -> Path:
    """A scratch folder that looks like the top of the repository."""
    work = tmp / "work"
    work.mkdir()
    for name in _LINKED:
        (work / name).symlink_to(ROOT / name)
    return work


_MARK = "=== next block of the tutorial ==="


def run(
    script: str | list[str],
    cwd: Path,
    timeout_s: float,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run blocks one after the other in one bash (as in one terminal), stopping at the first
    failing command; return the result and each block's standard output."""
    parts = [script] if isinstance(script, str) else script
    joined = f"\necho '{_MARK}'\n".join(parts)
    out = subprocess.run(
        [*(prefix or []), "bash", "-euo", "pipefail", "-c", joined],
        cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return out, out.stdout.split(_MARK + "\n")
