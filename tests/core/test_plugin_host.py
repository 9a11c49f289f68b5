"""Plugin loading: entry points, clashes, broken plugins, allow/block, dispatch by type."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.helpers import cli
from tests.support.paths import REPO_ROOT
from mailpipe import hookimpl
from mailpipe.config import PluginsConfig
from mailpipe.errors import PluginError
from mailpipe.plugin_host import PluginHost, load_plugins
from mailpipe.types import (
    Connection,
    ConnectionType,
    Decision,
    Envelope,
    IntakeContext,
    TestResult,
    ValidationContext,
)

EXAMPLE = REPO_ROOT / "examples" / "mailpipe-example"
BUILTIN_TYPES = {"smtp_o365", "smtp_exchange"}


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
    assert plugins["example"]["connection_types"] == ["maildir_drop", "tcp_drop"]
    assert plugins["example"]["sink_types"] == ["example_jsonl"]
    # What a type does is on its registration, not in per-connection hooks.
    assert plugins["example"]["hooks"] == ["mailpipe_connection_types", "mailpipe_sink_types"]


class _Clash:
    def __init__(self, label: str) -> None:
        self.label = label

    @hookimpl
    def mailpipe_connection_types(self) -> list[ConnectionType]:
        return [ConnectionType(name="smtp_o365", description=self.label, receives="smtp", accept=_accept_all)]


def _accept_all(connection: Connection, envelope: Envelope) -> Decision:
    return Decision.accept()


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
    from tests.support.helpers import write_config

    config = write_config(tmp_path, extra='[plugins]\nblock = ["smtp_o365"]\n')
    result = cli(config, "connections", "add", "smtp_o365", "--description", "x",
                 "--set", "undeliverable_journal_address=j@example.com")
    assert result.code == 1
    assert "unknown connection type 'smtp_o365'" in result.err


# --- dispatch by type ------------------------------------------------------------


class _Recorder:
    """Registers one type whose callables record every call they get, one of
    them ``def`` and the others ``async def``."""

    def __init__(self, type_name: str, calls: list[tuple[str, str]]) -> None:
        self.type_name, self.calls = type_name, calls

    @hookimpl
    def mailpipe_connection_types(self) -> list[ConnectionType]:
        async def validate(settings, context):  # type: ignore[no-untyped-def]
            import anyio

            await anyio.sleep(0)
            self.calls.append((self.type_name, "validate"))
            return [f"problem from {self.type_name}"]

        def test(connection, context):  # type: ignore[no-untyped-def]
            self.calls.append((self.type_name, "test"))
            return TestResult(ok=True, details={"by": self.type_name})

        async def collect(connection, context):  # type: ignore[no-untyped-def]
            self.calls.append((self.type_name, "collect"))

        return [ConnectionType(name=self.type_name, description="x", validate=validate, test=test, collect=collect)]


def _connection(type_name: str) -> Connection:
    return Connection(id="c1", type=type_name, description="", enabled=True, settings={})


@pytest.mark.anyio
async def test_only_the_owning_type_is_called() -> None:
    calls: list[tuple[str, str]] = []
    host = PluginHost()
    host.register(_Recorder("alpha", calls), "a")
    host.register(_Recorder("beta", calls), "b")
    host.collect_registrations()
    context = ValidationContext(find_connection=lambda _id: None)
    with _no_unawaited_coroutine_warnings():
        problems = await host.validate(host.connection_type("beta"), {}, context)
        result = await host.test(_connection("alpha"), context)
        await host.collect(_connection("beta"), context)  # type: ignore[arg-type]
    assert problems == ["problem from beta"]
    assert result.details == {"by": "alpha"}
    assert calls == [("beta", "validate"), ("alpha", "test"), ("beta", "collect")]


def _only(connection_type: ConnectionType) -> object:
    class Plugin:
        @hookimpl
        def mailpipe_connection_types(self) -> list[ConnectionType]:
            return [connection_type]

    return Plugin()


@pytest.mark.parametrize(
    ("receives", "needed"), [("smtp", "accept"), ("pull", "collect"), ("push", "serve")]
)
def test_a_type_without_what_its_kind_needs_is_refused_naming_the_plugin(receives: str, needed: str) -> None:
    host = PluginHost()
    host.register(_only(ConnectionType(name="half", description="x", receives=receives)), "vendor_x")  # type: ignore[arg-type]
    with pytest.raises(PluginError) as raised:
        host.collect_registrations()
    message = str(raised.value)
    assert "'vendor_x'" in message and "'half'" in message and f"no {needed}=" in message


def test_a_push_type_with_serve_is_accepted() -> None:
    async def serve(context: IntakeContext) -> None:
        return None

    host = PluginHost()
    host.register(_only(ConnectionType(name="webhook", description="x", receives="push", serve=serve)), "vendor_y")
    host.collect_registrations()
    assert host.connection_type("webhook").serve is serve


def test_provenance_comes_from_the_registration() -> None:
    async def collect(connection: Connection, context: object) -> None:
        return None

    host = PluginHost()
    host.register(_only(ConnectionType(name="drop", description="x", provenance="dropbox", collect=collect)), "p1")
    host.register(_only(ConnectionType(name="plain", description="x", collect=collect)), "p2")
    host.collect_registrations()
    assert host.arrival(_connection("drop"))["provenance"] == "dropbox"
    assert host.arrival(_connection("plain")) == {"connection_id": "c1", "connection_type": "plain", "provenance": "plain"}


def test_old_per_connection_hooks_are_refused_with_the_new_place_named() -> None:
    class OldStyle:
        @hookimpl
        def mailpipe_validate(self, connection_type, settings, context):  # type: ignore[no-untyped-def]
            return None

    host = PluginHost()
    host.register(OldStyle(), "old")
    with pytest.raises(PluginError, match=r"ConnectionType\(validate=\.\.\.\)"):
        host.collect_registrations()


def test_no_plugin_asks_whether_a_call_is_for_it() -> None:
    """The host dispatches by type, so no plugin compares a type name to its own."""
    root = REPO_ROOT
    sources = [*root.joinpath("plugins").rglob("*.py"), *EXAMPLE.rglob("*.py")]
    guards = [
        f"{path.relative_to(root)}: {line.strip()}"
        for path in sources
        for line in path.read_text().splitlines()
        if "!= TYPE" in line or "connection_type != " in line
    ]
    assert not guards


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


def test_an_async_registration_hook_is_refused_with_a_reason() -> None:
    class AsyncRegistration:
        @hookimpl
        async def mailpipe_connection_types(self):  # type: ignore[no-untyped-def]
            return []

    host = PluginHost()
    host.register(AsyncRegistration(), "eager")
    with _no_unawaited_coroutine_warnings(), pytest.raises(PluginError, match="'eager'.*plain `def`"):
        host.collect_registrations()


def test_an_installed_type_without_what_its_kind_needs_is_reported_and_skipped(
    tmp_path: Path, config_path: Path
) -> None:
    """Found through its entry point like any third-party plugin: the host
    skips it with the reason, and everything else keeps working."""
    site = tmp_path / "site"
    dist = site / "half_vendor-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: half-vendor\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mailpipe]\nhalf_vendor = half_vendor_plugin\n")
    (site / "half_vendor_plugin.py").write_text(textwrap.dedent("""
        from mailpipe import hookimpl
        from mailpipe.types import ConnectionType

        @hookimpl
        def mailpipe_connection_types():
            return [ConnectionType(name="half", description="pulls nothing", receives="pull")]
    """))
    result = cli(config_path, "plugins", env={"PYTHONPATH": str(site)}, check=True)
    broken = {b["name"]: b["error"] for b in result.json["broken"]}
    assert "'half_vendor'" in broken["half_vendor"] and "no collect=" in broken["half_vendor"]
    assert "half" not in {t for p in result.json["plugins"] for t in p["connection_types"]}
    assert BUILTIN_TYPES <= {t for p in result.json["plugins"] for t in p["connection_types"]}
