"""Issue 12: modules import only downward and no import cycle exists.

Runs ``lint-imports`` (import-linter) with the contracts in pyproject.toml on
the package as it is installed: core/ as ``mailpipe``, plugins/ and sinks/
inside it. The repository keeps them in three top-level folders (the map of
the product), so the installed layout is assembled in a temporary directory
first: import-linter finds a package's modules on disk, and an editable
install does not put plugins/ and sinks/ under core/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from tests.support.paths import REPO_ROOT




def installed_layout(target: Path) -> Path:
    package = target / "mailpipe"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.md")
    shutil.copytree(REPO_ROOT / "core", package, ignore=ignore)
    shutil.copytree(REPO_ROOT / "plugins", package / "plugins", ignore=ignore)
    shutil.copytree(REPO_ROOT / "sinks", package / "sinks", ignore=ignore)
    return target


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("lint-imports")), str(REPO_ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept(tmp_path: Path) -> None:
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
    for contract in ("core stages import only downward", "no import cycles",
                     "never imports a plugin or a sink", "plugins and sinks stay independent"):
        assert contract in result.stdout


def test_an_upward_import_or_a_cycle_fails(tmp_path: Path) -> None:
    """The contracts can fail: the spool importing the CLI breaks both the
    layers and (the CLI imports the spool) the no-cycle contract."""
    tree = installed_layout(tmp_path)
    layout = tree / "mailpipe" / "spool" / "layout.py"
    layout.write_text(layout.read_text() + "\n\ndef _upward() -> None:\n    import mailpipe.cli.main  # noqa: F401\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "mailpipe.spool is not allowed to import mailpipe.cli" in result.stdout
    assert "No cycles are allowed in mailpipe." in result.stdout


def test_tests_share_one_support_package_and_never_import_each_other() -> None:
    """tests/ mirrors the source; what tests share is in tests.support, so no
    test module imports another (a fixture borrowed that way runs twice)."""
    import ast

    offenders = []
    for path in (REPO_ROOT / "tests").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[-1].startswith("test_") for name in names):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offenders == []
