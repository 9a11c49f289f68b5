"""Every hook is documented: a docstring with an example that runs, and a
section in docs/plugins.md with the hook's signature; so is every callable a
connection type registration carries."""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from types import ModuleType

import pytest

from mailpipe import hookspecs
from mailpipe.plugin_host import PluginHost
from mailpipe.types import CALLABLE_FIELDS, ConnectionType
from tests.support.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs" / "plugins.md"
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("mailpipe_"))

def test_there_are_hooks() -> None:
    assert {"mailpipe_connection_types", "mailpipe_sink_types"} <= set(HOOKS)
    fields = {f.name for f in dataclasses.fields(ConnectionType)}
    assert set(CALLABLE_FIELDS) <= fields


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docstring_with_example(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Example::" in doc, f"{hook} needs a docstring with an 'Example::' block"
    assert "@hookimpl" in doc, f"{hook}'s example must show a hook implementation"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_plugin_docs(hook: str) -> None:
    assert f"### {hook}" in DOCS.read_text(), f"docs/plugins.md has no '### {hook}' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_signature_is_in_plugin_docs(hook: str) -> None:
    # Annotations are strings here (``from __future__ import annotations``): show them bare.
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}".replace("'", "")
    assert signature in DOCS.read_text(), f"docs/plugins.md does not show `{signature}`"


@pytest.mark.parametrize("field", CALLABLE_FIELDS)
def test_connection_type_callable_is_in_plugin_docs(field: str) -> None:
    assert f"#### {field}(" in DOCS.read_text(), f"docs/plugins.md has no '#### {field}(...)' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_example_runs_and_registers(hook: str) -> None:
    """The example runs as it stands, and what it registers passes the host's
    load-time checks (a type gives what its kind needs)."""
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    example = textwrap.dedent(doc.split("Example::", 1)[1])
    plugin = ModuleType(f"{hook}_example")
    exec(compile(example, f"<{hook} example>", "exec"), plugin.__dict__)
    host = PluginHost()
    host.register(plugin, "example")
    host.collect_registrations()
    assert host.infos["example"].connection_types or host.infos["example"].sink_types
