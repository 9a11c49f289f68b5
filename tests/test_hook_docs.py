"""Every hook is documented: a docstring with an example, and a section in docs/plugins.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mailpipe import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("mailpipe_"))


def test_there_are_hooks() -> None:
    assert {"mailpipe_validate", "mailpipe_test", "mailpipe_collect", "mailpipe_accept"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docstring_with_example(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Example::" in doc, f"{hook} needs a docstring with an 'Example::' block"
    assert "@hookimpl" in doc, f"{hook}'s example must show a hook implementation"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_plugin_docs(hook: str) -> None:
    assert f"### {hook}" in DOCS.read_text(), f"docs/plugins.md has no '### {hook}' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_examples_compile(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    example = inspect.cleandoc(doc.split("Example::", 1)[1])
    compile(example, f"<{hook} example>", "exec")
