"""The documentation site: the reference pages in the repository are what the code writes, every
setting, command and topic has its entry, and the site builds in strict mode, where a broken
link, a missing anchor or a page left out of the navigation fails (the builds run mkdocs, about
1.5 s each, so they carry no `pure` mark)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from redy import docs_reference
from redy.cli import cli
from redy.topics import CONTRACT
from redy.units.config import GovernanceConfig, UnitConfig, settings_of

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"
MKDOCS = [sys.executable, "-m", "mkdocs"]


@pytest.mark.pure
@pytest.mark.parametrize("name", sorted(docs_reference.PAGES))
def test_each_reference_page_is_what_the_code_writes(name: str) -> None:
    written = docs_reference.PAGES[name]()
    assert (REFERENCE / name).read_text() == written, (
        f"docs/reference/{name} is behind the code: run `make docs` and commit it"
    )


@pytest.mark.pure
def test_every_setting_has_its_row_in_the_settings_reference() -> None:
    page = (REFERENCE / "settings.md").read_text()
    for cls in (GovernanceConfig, UnitConfig):
        for name, (_, meta) in settings_of(cls).items():
            assert f"| `{name}` |" in page, f"setting {cls.__name__}.{name} missing"
            assert " ".join(meta.help.split()) in page


@pytest.mark.pure
def test_every_command_topic_and_type_has_its_entry() -> None:
    cli_page = (REFERENCE / "cli.md").read_text()
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        assert f"\n## redy {name}\n" in cli_page
    topics_page = (REFERENCE / "topics.md").read_text()
    for topic in CONTRACT.topics.values():
        assert f"| `{topic.name}` |" in topics_page
    for type_name in CONTRACT.types:
        assert f"\n### {type_name}\n" in topics_page


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MKDOCS, "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def test_the_site_builds_in_strict_mode_with_no_warning(tmp_path: Path) -> None:
    out = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").exists()


def _copy_of_the_docs(tmp_path: Path) -> Path:
    work = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", work / "docs")
    for name in ("mkdocs.yml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, work / name)
    (work / "components").symlink_to(ROOT / "components")  # the hook
    return work


@pytest.mark.parametrize(
    ("what", "page", "text"),
    [
        ("nowhere.md", "index.md", "\n[gone](nowhere.md)\n"),
        ("no-such-command", "index.md", "\n[there](reference/cli.md#no-such-command)\n"),
        ("stray.md", "stray.md", "# Stray\n"),
    ],
    ids=["a broken link", "a missing anchor", "a page left out of the navigation"],
)
def test_the_strict_build_fails_on(tmp_path: Path, what: str, page: str, text: str) -> None:
    work = _copy_of_the_docs(tmp_path)
    target = work / "docs" / page
    target.write_text((target.read_text() if target.exists() else "") + text)
    out = _build(work / "mkdocs.yml", tmp_path / "site")
    assert out.returncode != 0, f"{what} passed the strict build"
    assert out.stderr.count("WARNING") == 1, out.stderr
    assert what in out.stderr.split("WARNING", 1)[1], out.stderr


def test_a_page_a_benchmark_writes_is_listed_on_the_index_with_no_navigation_entry(
    tmp_path: Path,
) -> None:
    work = _copy_of_the_docs(tmp_path)
    (work / "docs" / "benchmarks" / "runs" / "new_bench.md").write_text(
        "<!-- Written by bench/new_bench.py --docs -->\n\n# new_bench\n\nWhat it measures.\n\n"
        "## Latest run\n\n`python bench/new_bench.py --docs`, 2026-12-07 10:00 UTC.\n"
    )
    out = _build(work / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stderr
    index = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert 'href="runs/new_bench/"' in index
    assert "What it measures. (latest run 2026-12-07 10:00 UTC)" in index
