"""A benchmark writes its own page of the documentation site.

    with docpage.recorded("messages_codec", enabled=args.docs):
        main_body()          # whatever it prints also goes to docs/benchmarks/runs/NAME.md

The page holds what the benchmark measures (its module docstring), the command that ran it,
the machine (CPU, cores, memory, kernel, Python, load average before and after, the commit)
and everything it printed, so the figures on the site are the latest run's, never kept by hand.
Without `--docs` a benchmark only prints, as before. A benchmark's first page goes into
mkdocs.yml's navigation and docs/benchmarks/index.md (the strict build refuses a page that is
in neither).
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


@contextlib.contextmanager
def recorded(name: str, *, enabled: bool, doc: str | None = None) -> Iterator[None]:
    """Tee stdout; on a clean exit with `enabled`, write docs/benchmarks/runs/NAME.md."""
    if not enabled:
        yield
        return
    buffer = io.StringIO()
    before = _load()
    real = sys.stdout
    sys.stdout = _Tee(real, buffer)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = real
    main = sys.modules["__main__"]
    text = page(name, doc or main.__doc__ or name, sys.argv, buffer.getvalue(), before, _load())
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{name}.md").write_text(text)
    print(f"wrote {(RUNS / f'{name}.md').relative_to(ROOT)}")
