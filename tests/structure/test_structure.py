"""The package's structure as a contract (issue 27): no module imports another module's private
names (ruff's PLC2701 skips imports within one package, which is all of ours), and what
`make lint` runs for layers and cycles (lint-imports) holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "components"
# Private names still imported across modules, each to go; a new one fails the test.
PENDING: set[tuple[str, str]] = set()


def _private_imports() -> list[tuple[str, str, str]]:
    """(importer, module, name) of every `from redy.X import _name` in another module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if not node.module.startswith("redy") or node.module == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append((module, node.module, alias.name))
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    new = [f for f in _private_imports() if (f[0], f[1]) not in PENDING]
    assert not new, "private names imported across modules: " + ", ".join(
        f"{a} imports {b}.{n}" for a, b, n in new
    )


def test_the_layer_and_cycle_contracts_hold() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 broken" in out.stdout
