"""aioimaplib_compat still matches the installed aioimaplib, and is the only module touching its internals.

Fails when an aioimaplib release renames or reshapes a private name the
IMAP client overrides or reads (see the module's ``RELIES_ON``); then
check the new release's reader, timer and continuation against the
module's docstring before widening the range in pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys

import aioimaplib
from tests.support.compat import broken_reliances, pin_problems, private_uses_elsewhere, unlisted_reliances

from mailpipe.plugins.imap import aioimaplib_compat


def test_every_reliance_on_aioimaplib_still_holds() -> None:
    assert broken_reliances(aioimaplib_compat.RELIES_ON) == []


def test_the_compat_module_lists_every_aioimaplib_name_it_uses() -> None:
    assert unlisted_reliances(aioimaplib_compat, aioimaplib) == []


def test_no_other_module_uses_aioimaplib_internals() -> None:
    assert private_uses_elsewhere(aioimaplib_compat, aioimaplib) == []


def test_pyproject_pins_aioimaplib_to_the_checked_releases() -> None:
    assert pin_problems(aioimaplib_compat) == []


def test_importing_mailpipe_changes_no_interpreter_setting() -> None:
    """The IMAP client once raised the whole process's recursion limit at
    import; no module of mailpipe may change such a setting by being imported."""
    script = (
        "import pkgutil, sys, importlib\n"
        "before = (sys.getrecursionlimit(), sys.getswitchinterval())\n"
        "import mailpipe, mailpipe.plugins, mailpipe.sinks\n"
        "for package in (mailpipe, mailpipe.plugins, mailpipe.sinks):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "after = (sys.getrecursionlimit(), sys.getswitchinterval())\n"
        "assert 'mailpipe.plugins.imap.client' in sys.modules and 'mailpipe.intake.smtp.protocol' in sys.modules\n"
        "print(before == after, before, after)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True"), result.stdout
