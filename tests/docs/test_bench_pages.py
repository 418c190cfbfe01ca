"""Benchmarks write their own pages (bench/docpage.py), and the site lists them by itself (the
mkdocs hook in redy.docs_reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from redy.docs_reference import RUNS_MARKER, runs_list

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A benchmark script in bench/'s manner, its pages sent to tmp_path/runs."""
    script = tmp_path / "fake_bench.py"
    lines = [
        '"""Fake: what a benchmark measures, in one line.',
        "",
        "And how, at more length.",
        '"""',
        "import sys",
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})",
        "from pathlib import Path",
        "import docpage",
        f"docpage.RUNS = Path({str(tmp_path / 'runs')!r})",
        "",
        "def main() -> int:",
        '    assert "--docs" not in sys.argv  # taken off before the benchmark\'s own parser',
        *("    " + line for line in body.splitlines()),
        "",
        'if __name__ == "__main__":',
        '    with docpage.recorded("fake_bench"):',
        "        sys.exit(main())",
    ]
    script.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.pure
def test_a_benchmark_run_with_docs_writes_its_page_with_the_machine_and_its_output(
    tmp_path: Path,
) -> None:
    out = _bench(tmp_path, 'print("ratio 3.2x")\nreturn 0', "--docs")
    assert out.returncode == 0, out.stderr
    assert "ratio 3.2x" in out.stdout
    page = (tmp_path / "runs" / "fake_bench.md").read_text()
    assert page.startswith("<!-- Written by bench/fake_bench.py --docs")
    assert "# fake_bench\n\nFake: what a benchmark measures, in one line." in page
    for row in ("| CPU |", "| cores |", "| memory |", "| Python |", "| commit |", "load average"):
        assert row in page
    assert "```\nratio 3.2x\n```" in page
    assert "fake_bench.py --docs`" in page


@pytest.mark.pure
def test_without_docs_or_after_a_failure_no_page_is_written(tmp_path: Path) -> None:
    assert _bench(tmp_path, 'print("x")\nreturn 0').returncode == 0
    assert _bench(tmp_path, 'print("x")\nreturn 3', "--docs").returncode == 3
    assert _bench(tmp_path, 'raise RuntimeError("broke")', "--docs").returncode == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.pure
def test_the_index_lists_each_page_with_what_it_measures_and_when_it_ran(tmp_path: Path) -> None:
    assert _bench(tmp_path, "return 0", "--docs").returncode == 0
    page = (tmp_path / "runs" / "fake_bench.md").read_text()
    listed = runs_list({"fake_bench": page})
    assert listed.startswith(
        "- [fake_bench](runs/fake_bench.md): Fake: what a benchmark measures, in one line."
    )
    assert "(latest run 20" in listed and " UTC)" in listed
    assert RUNS_MARKER in (ROOT / "docs" / "benchmarks" / "index.md").read_text()
