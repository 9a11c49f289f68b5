"""Installing mailpipe: what a plain ``pip install .`` gets, and how it is started.

The fresh-install smoke test (a wheel in a new venv, no extras, serve and
archive one message) runs in CI: .ci/smoke_install.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
#: The installed package's source folders (pyproject's package-dir).
PACKAGE_SOURCES = ("core", "plugins", "sinks")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group()) for requirement in project["dependencies"]}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module name → the files that import it, for every import of
    the installed package that is neither the standard library nor mailpipe
    (imports inside functions included: they run too)."""
    found: dict[str, set[str]] = {}
    for folder in PACKAGE_SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("mailpipe", "__future__"):
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """A package that only arrives through another (anyio used to bring
    sniffio) or through the test extras breaks a plain ``pip install``."""
    declared = declared_dependencies()
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in sorted(third_party_imports().items()):
        distributions = {_normalized(d) for d in providers.get(module, [])}
        if not distributions & declared:
            undeclared[module] = (sorted(distributions) or ["not installed"], sorted(files))
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_the_audit_sees_the_imports() -> None:
    """The audit above is not vacuous: it finds the dependencies the code is known to use."""
    assert {"anyio", "aiosmtpd", "sniffio", "boto3", "cryptography"} <= set(third_party_imports())


def _make_dry_run(target: str, venv: Path) -> str:
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout


def test_make_run_installs_without_test_extras_and_make_test_with(tmp_path: Path) -> None:
    """`make -n` on a venv that does not exist yet: the commands each target would run."""
    run = _make_dry_run("run", tmp_path / "venv")
    assert "pip install -q -e ." in run and "[test]" not in run
    assert "mailpipe serve" in run
    test = _make_dry_run("test", tmp_path / "venv")
    assert "pip install -q -e '.[test]'" in test and "pytest" in test


def test_python_dash_m_mailpipe(tmp_path: Path) -> None:
    version = subprocess.run([sys.executable, "-m", "mailpipe", "--version"], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mailpipe {importlib.metadata.version('mailpipe')}"
    plugins = subprocess.run([sys.executable, "-m", "mailpipe", "plugins", "--json"], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    names = {plugin["name"] for plugin in json.loads(plugins.stdout)["plugins"]}
    assert "smtp_o365" in names


def _unit_lines() -> dict[str, str]:
    lines = (ROOT / "contrib" / "mailpipe.service").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_systemd_unit_is_what_docs_operations_describes(tmp_path: Path) -> None:
    unit = _unit_lines()
    assert unit["Type"] == "notify"  # core/server/sd_notify.py sends READY=1
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["ExecStart"].split()[1:3] == ["serve", "--config"]
    assert unit["User"] == "mailpipe" and unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict"
    assert int(unit["LimitNOFILE"]) >= 65536
    assert "## Running under systemd" in (ROOT / "docs" / "operations.md").read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not checked")
    # systemd checks that ExecStart exists: point it at this venv's mailpipe.
    copy = tmp_path / "mailpipe.service"
    text = (ROOT / "contrib" / "mailpipe.service").read_text()
    copy.write_text(text.replace(unit["ExecStart"].split()[0], str(Path(sys.executable).parent / "mailpipe")))
    verified = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stderr
