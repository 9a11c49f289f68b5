"""Plugin loading: entry points, clashes, broken plugins, allow/block, async hooks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import cli
from mailpipe import hookimpl
from mailpipe.config import PluginsConfig
from mailpipe.errors import PluginError
from mailpipe.plugin_host import PluginHost, load_plugins
from mailpipe.types import ConnectionType, ValidationContext

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mailpipe-example"
BUILTIN_TYPES = {"smtp_o365", "smtp_exchange"}


@pytest.fixture(scope="session")
def example_installed() -> None:
    """pip-install the example package into this environment, as an integrator would."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(EXAMPLE)],
        check=True,
        capture_output=True,
    )


def test_builtin_plugins_register_through_entry_points() -> None:
    host = load_plugins()
    assert BUILTIN_TYPES <= set(host.connection_types)
    assert "filesystem" in host.sink_types
    assert "filesystem" in host.infos and host.infos["filesystem"].distribution == "mailpipe"


def test_example_package_is_discovered(example_installed: None, config_path: Path) -> None:
    result = cli(config_path, "plugins", check=True)
    plugins = {p["name"]: p for p in result.json["plugins"]}
    assert plugins["example"]["distribution"] == "mailpipe-example"
    assert plugins["example"]["version"] == "1.0.0"
    assert plugins["example"]["connection_types"] == ["maildir_drop"]
    assert plugins["example"]["sink_types"] == ["example_jsonl"]
    assert "mailpipe_collect" in plugins["example"]["hooks"]


class _Clash:
    def __init__(self, label: str) -> None:
        self.label = label

    @hookimpl
    def mailpipe_connection_types(self) -> list[ConnectionType]:
        return [ConnectionType(name="smtp_o365", description=self.label)]


def test_name_clash_is_an_error_naming_both() -> None:
    host = PluginHost()
    host.load_entry_points()
    host.register(_Clash("impostor"), "impostor")
    with pytest.raises(PluginError) as raised:
        host.collect_registrations()
    message = str(raised.value)
    assert "'smtp_o365'" in message and "'smtp_o365'" in message and "'impostor'" in message
    assert "registered by two plugins" in message


@pytest.fixture
def broken_plugin_path(tmp_path: Path) -> Path:
    """A distribution whose plugin module fails to import."""
    site = tmp_path / "site"
    dist = site / "broken_vendor-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-vendor\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mailpipe]\nbroken_vendor = broken_vendor_plugin\n")
    (site / "broken_vendor_plugin.py").write_text("import this_module_does_not_exist\n")
    return site


def test_broken_plugin_is_reported_and_skipped(broken_plugin_path: Path, config_path: Path) -> None:
    env = {"PYTHONPATH": str(broken_plugin_path)}
    result = cli(config_path, "plugins", env=env, check=True)
    broken = {b["name"]: b for b in result.json["broken"]}
    assert "this_module_does_not_exist" in broken["broken_vendor"]["error"]
    assert BUILTIN_TYPES <= {t for p in result.json["plugins"] for t in p["connection_types"]}
    # and the rest of the CLI keeps working
    added = cli(config_path, "connections", "add", "smtp_exchange", "--description", "x",
                "--set", "sender_servers=127.0.0.1", env=env)
    assert added.code == 0, added


def test_block_and_allow_by_name() -> None:
    blocked = load_plugins(PluginsConfig(block=("smtp_exchange",)))
    assert "smtp_exchange" not in blocked.connection_types
    assert "smtp_exchange" in blocked.skipped
    allowed = load_plugins(PluginsConfig(allow=("filesystem", "smtp_o365")))
    assert set(allowed.connection_types) == {"smtp_o365"}


def test_block_from_config_file(tmp_path: Path) -> None:
    from helpers import write_config

    config = write_config(tmp_path, extra='[plugins]\nblock = ["smtp_o365"]\n')
    result = cli(config, "connections", "add", "smtp_o365", "--description", "x",
                 "--set", "undeliverable_journal_address=j@example.com")
    assert result.code == 1
    assert "unknown connection type 'smtp_o365'" in result.err


# --- async hook implementations -----------------------------------------------


class _AsyncValidatorA:
    @hookimpl
    async def mailpipe_validate(self, connection_type, settings, context):  # type: ignore[no-untyped-def]
        import anyio

        await anyio.sleep(0.01)
        return ["from A"]


class _AsyncValidatorB:
    @hookimpl
    async def mailpipe_validate(self, connection_type, settings, context):  # type: ignore[no-untyped-def]
        import anyio

        await anyio.sleep(0)
        return ["from B"]


class _SyncValidatorNone:
    @hookimpl
    def mailpipe_validate(self, connection_type, settings, context):  # type: ignore[no-untyped-def]
        return None


class _AsyncValidatorNone:
    @hookimpl
    async def mailpipe_validate(self, connection_type, settings, context):  # type: ignore[no-untyped-def]
        return None


@pytest.mark.anyio
async def test_two_async_implementations_both_run_and_both_answer() -> None:
    host = PluginHost()
    for index, plugin in enumerate(
        [_AsyncValidatorA(), _AsyncValidatorB(), _SyncValidatorNone(), _AsyncValidatorNone()]
    ):
        host.register(plugin, f"p{index}")
    context = ValidationContext(find_connection=lambda _id: None)
    with _no_unawaited_coroutine_warnings():
        answers = await host.call("mailpipe_validate", connection_type="x", settings={}, context=context)
    assert sorted(answers) == [["from A"], ["from B"]]


class _no_unawaited_coroutine_warnings:
    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.collect()
        self._catcher.__exit__(*exc)
        assert not [w for w in self.caught if "never awaited" in str(w.message)]


def test_hook_typos_are_caught(tmp_path: Path) -> None:
    """check_pending(): a misspelt hook name is an error, not a silently ignored function."""
    host = PluginHost()

    class Typo:
        @hookimpl
        def mailpipe_connection_type(self):  # type: ignore[no-untyped-def]  (missing s)
            return []

    host.register(Typo(), "typo")
    with pytest.raises(PluginError, match="mailpipe_connection_type"):
        host.collect_registrations()
