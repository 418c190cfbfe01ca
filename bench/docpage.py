"""A benchmark writes its own page of the documentation site.

    if __name__ == "__main__":
        with docpage.recorded("tls_cost"):    # `--docs` on the command line: write the page
            sys.exit(main())                  # what it prints also goes to runs/tls_cost.md

The page holds what the benchmark measures (its module docstring), the command that ran it,
the machine (CPU, cores, memory, kernel, Python, load average before and after, the commit)
and everything it printed, so the figures on the site are the latest run's, never kept by hand.
Without `--docs` a benchmark only prints, as before. The site lists every page under runs/ on
the benchmarks' index by itself (the mkdocs hook in redy.docs_reference).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "benchmarks" / "runs"


class _Tee(io.TextIOBase):
    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("memory", f"{_memory_gib():.1f} GiB"),
        ("system", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("commit", _commit()),
    ]


def page(name: str, doc: str, argv: list[str], output: str, before: str, after: str) -> str:
    title, _, rest = (doc or name).strip().partition("\n")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"<!-- Written by bench/{name}.py --docs; do not edit: run the benchmark again. -->",
        "",
        f"# {name}",
        "",
        title.strip(),
        "",
        rest.strip(),
        "",
        "## Latest run",
        "",
        f"`{' '.join(['python', *argv])}`, {when}.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine()],
        f"| load average (1, 5, 15 min) before / after | {before} / {after} |",
        "",
        "```",
        output.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _asked() -> bool:
    """Whether `--docs` is on the command line; taken off it, so the benchmark's own parser
    never sees it."""
    if "--docs" not in sys.argv[1:]:
        return False
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--docs"]
    return True


@contextlib.contextmanager
def recorded(name: str, *, enabled: bool | None = None, doc: str | None = None) -> Iterator[None]:
    """Tee stdout; when the benchmark ends well (a return, or exit status 0) and `enabled`,
    write docs/benchmarks/runs/NAME.md. `enabled=None`: when `--docs` is on the command line."""
    argv = list(sys.argv)
    if enabled is None:
        enabled = _asked()
    if not enabled:
        yield
        return
    buffer = io.StringIO()
    before = _load()
    real = sys.stdout
    sys.stdout = _Tee(real, buffer)  # type: ignore[assignment]
    ok = False
    try:
        yield
        ok = True
    except SystemExit as exc:
        ok = exc.code in (None, 0)
        raise
    finally:
        sys.stdout = real
        if ok:
            main = sys.modules["__main__"]
            text = page(name, doc or main.__doc__ or name, argv, buffer.getvalue(), before, _load())
            RUNS.mkdir(parents=True, exist_ok=True)
            (RUNS / f"{name}.md").write_text(text)
            print(f"wrote {RUNS / f'{name}.md'}")
