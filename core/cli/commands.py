"""The sub-commands: serve, plugins, connections, archive, spool, sinks.

Each ``--json`` output is one object (see mailpipe.cli.output and
docs/cli.md, whose examples tests/core/cli/test_cli_json.py checks against the real
output). Only ``serve`` and ``connections add`` may create state.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from mailpipe.cli import config as cli_config
from mailpipe.connections.audit import Actor
from mailpipe.cli.output import emit, fail, printable
from mailpipe.cli.shared import open_runtime, run_async, settings_from
from mailpipe.errors import MailpipeError
from mailpipe.connections.live_progress import progress_text
from mailpipe.connections.views import archive_summary as _summary
from mailpipe.connections.views import connection_view as _public
from mailpipe.connections.views import plugins_view, sinks_view, spool_view
from mailpipe.types import ReadableArchive

SECRETS_HELP = """\
secret settings (such as password) need not be typed on the command line,
where ps and the shell history would keep them:
  --set password=-           asks for the value on the terminal (not echoed;
                             refused when standard input is not a terminal)
  --set-file password=PATH   reads the value from a file (final newline dropped)"""


def register_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument(
        "--workers", type=_worker_count, default=1,
        help="SMTP worker processes (default 1: the server process listens itself)",
    )
    serve.set_defaults(handler=cmd_serve)

    plugins = commands.add_parser("plugins", parents=[common], help="list installed plugins")
    plugins.set_defaults(handler=cmd_plugins)

    _connections(commands, common)
    _archive(commands, common)
    _spool(commands, common)
    _sinks(commands, common)
    cli_config.register(commands, common)
    register_account_commands(commands, common)


def register_account_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    from mailpipe.cli.accounts import register

    register(commands, common, _actions)
    from mailpipe.cli.state import register as register_state

    register_state(commands, common, _actions)


def _actions(commands: Any, common: argparse.ArgumentParser, name: str, help_text: str) -> Any:
    """A command whose actions are sub-commands; each action's help line shows in ``NAME --help``."""
    group = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
    return group.add_subparsers(title="actions", metavar="ACTION", required=True)


# --- serve / plugins -----------------------------------------------------------


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number, 1 or more (1, the default: the server process listens itself; "
            f"N: N SMTP worker processes), not {text!r}"
        )
    return count


def cmd_serve(args: argparse.Namespace) -> int:
    from mailpipe.logs import setup_logging
    from mailpipe.runtime import Runtime
    from mailpipe.server.master import serve

    runtime = Runtime.open(args.config)
    setup_logging(runtime.config.log_level)
    from mailpipe.connections.metrics import enable_multiprocess

    enable_multiprocess(runtime.config.data_dir)  # before any child process starts
    runtime.extras["workers"] = args.workers
    try:
        run_async(serve, runtime)
    finally:
        runtime.close()
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from mailpipe.config import load_config
    from mailpipe.plugin_host import load_plugins

    host = load_plugins(load_config(args.config).plugins)
    data = plugins_view(host)

    def human(d: dict[str, Any]) -> str:
        lines = []
        for p in d["plugins"]:
            provides = ", ".join(
                [f"connection type {t}" for t in p["connection_types"]]
                + [f"sink {s}" for s in p["sink_types"]]
            )
            lines.append(f"{p['name']:<16} {p['distribution']} {p['version']}  {provides}")
            lines.append(f"{'':<16} hooks: {', '.join(p['hooks'])}")
        for b in d["broken"]:
            lines.append(f"{b['name']:<16} BROKEN, skipped: {printable(b['error'])} ({b['target']})")
        for name in d["skipped"]:
            lines.append(f"{name:<16} not loaded (blocked or not allowed by config)")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


# --- connections -------------------------------------------------------------------


def _connections(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _actions(commands, common, "connections", "manage connections (how mail comes in)")

    add = sub.add_parser(
        "add", parents=[common], help="add a connection (disabled and untested)",
        description="Add a connection of TYPE; it starts disabled and untested.",
        epilog=SECRETS_HELP, more_help=connection_types_help,
    )
    add.add_argument("type", help="connection type (listed below)")
    add.add_argument("--description", required=True)
    _setting_options(add)
    add.set_defaults(handler=cmd_add)

    sub.add_parser("list", parents=[common], help="list connections").set_defaults(handler=cmd_list)
    for name, handler, help_text in (
        ("show", cmd_show, "show one connection (secrets masked)"),
        ("enable", cmd_enable, "start receiving or collecting"),
        ("disable", cmd_disable, "stop receiving or collecting"),
        ("test", cmd_test, "check the settings against the real server (status → ok or failed)"),
        ("delete", cmd_delete, "delete a connection (its archived mail stays)"),
    ):
        action = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        action.add_argument("id")
        action.set_defaults(handler=handler)

    edit = sub.add_parser(
        "edit", parents=[common], help="change settings (re-validates, status → untested)",
        epilog=SECRETS_HELP,
    )
    edit.add_argument("id")
    _setting_options(edit)
    edit.add_argument("--description")
    edit.set_defaults(handler=cmd_edit)


def _setting_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a setting; KEY=- asks for the value on the terminal")
    parser.add_argument("--set-file", action="append", metavar="KEY=PATH",
                        help="a setting read from a file (for secrets)")


def connection_types_help() -> str:
    """The installed connection types and their settings, from the plugins'
    registrations: a third-party type shows as soon as it is installed."""
    from mailpipe.plugin_host import load_plugins

    try:
        host = load_plugins()
    except MailpipeError as error:  # e.g. two plugins claim one type name: still show the help
        return f"connection types cannot be listed: {error}\n"
    lines = ["connection types (from the installed plugins) and their settings:"]
    for name, connection_type in sorted(host.connection_types.items()):
        lines.append(f"  {name}: {connection_type.description}")
        for setting in connection_type.settings:
            facts = [setting.kind] + (["required"] if setting.required else [])
            if setting.default not in (None, ""):
                facts.append(f"default {setting.default}")
            if setting.choices:
                facts.append("one of " + ", ".join(setting.choices))
            text = f"{setting.name} ({'; '.join(facts)}) {setting.help}".rstrip()
            lines += textwrap.wrap(text, width=96, initial_indent="      ", subsequent_indent="          ")
    return "\n".join(lines) + "\n"


def _describe(connection: dict[str, Any]) -> str:
    lines = [
        f"id:          {connection['id']}",
        f"type:        {connection['type']}",
        f"description: {printable(connection['description'])}",
        f"enabled:     {'yes' if connection['enabled'] else 'no'}",
    ]
    if connection.get("address"):
        lines.append(f"address:     {printable(connection['address'])}")
    status = connection["status"]
    if connection.get("status_error"):
        status += f" — {connection['status_error']}"
    lines.append(f"status:      {printable(status)}")
    if "archived_24h" in connection:
        lines.append(f"last message: {connection.get('last_message_at') or 'never'}")
        lines.append(f"archived 24h: {connection['archived_24h']}")
        if progress_text(connection):
            lines.append(f"progress:    {progress_text(connection)}")
        if connection.get("collected_by"):
            lines.append(f"collected by: {printable(connection['collected_by'])}")
        if connection.get("last_error"):
            lines.append(f"last error:  {printable(connection['last_error'])}")
    for key, value in sorted(connection["settings"].items()):
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        lines.append(f"  {printable(key)} = {printable(shown)}")
    for warning in connection.get("warnings", []):
        lines.append(f"warning:     {printable(warning)}")
    return "\n".join(lines)


def cmd_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    runtime = open_runtime(args)
    if runtime.state == "none":
        # Refuse bad input before the first state is created.
        run_async(runtime.service.check_new, args.type, settings)
        runtime = open_runtime(args, create=True)
    connection = run_async(runtime.service.add, args.type, args.description, settings, Actor.cli())
    data = _public(runtime, connection)
    emit(args, data, lambda d: "connection added (disabled; enable it with "
         f"`mailpipe connections enable {d['id']}`)\n" + _describe(d))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    data = {"connections": [_public(runtime, c) for c in runtime.service.list()]}

    def human(d: dict[str, Any]) -> str:
        if not d["connections"]:
            return "no connections; add one with `mailpipe connections add TYPE --description TEXT`"
        return "\n".join(
            f"{r['id']}  {r['type']:<14} {'enabled ' if r['enabled'] else 'disabled'}  "
            f"{r['status']:<8}  {r.get('last_message_at') or 'never':<24}  {r.get('archived_24h', 0):>6}  "
            f"{printable(r.get('address') or '')}  {printable(r['description'])}"
            + (f"  ({progress_text(r)})" if progress_text(r) else "")
            for r in d["connections"]
        )

    emit(args, data, human)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, _public(runtime, runtime.service.get(args.id)), _describe)
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    runtime = open_runtime(args)
    connection = run_async(runtime.service.edit, args.id, settings, args.description, Actor.cli())
    emit(args, _public(runtime, connection), _describe)
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, _public(runtime, runtime.service.set_enabled(args.id, True, Actor.cli())), _describe)
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, _public(runtime, runtime.service.set_enabled(args.id, False, Actor.cli())), _describe)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    connection, result = run_async(runtime.service.test, args.id, Actor.cli())
    data = _public(runtime, connection)
    data["test"] = {"ok": result.ok, "error": result.error, "warnings": list(result.warnings)}
    data["warnings"] = sorted(set(data["warnings"]) | set(result.warnings))
    emit(args, data, _describe)
    return 0 if result.ok else 1


def cmd_delete(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    data = {**_public(runtime, runtime.service.get(args.id)), "deleted": True}
    runtime.service.delete(args.id, Actor.cli())
    emit(args, data, lambda d: f"connection {d['id']} deleted")
    return 0


# --- archive -------------------------------------------------------------------------


def _archive(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _actions(commands, common, "archive", "look into the filesystem archive")
    sub.add_parser("list", parents=[common], help="list archived messages").set_defaults(handler=cmd_archive_list)
    show = sub.add_parser("show", parents=[common], help="one message's metadata (refuses an ambiguous prefix)")
    show.add_argument("id", help="connection/sha256, sha256, or a unique prefix of either")
    show.set_defaults(handler=cmd_archive_show)
    sub.add_parser(
        "verify", parents=[common], help="re-hash every message (progress on a terminal)"
    ).set_defaults(handler=cmd_archive_verify)


def _readable_archives(args: argparse.Namespace) -> list[ReadableArchive]:
    runtime = open_runtime(args)
    archives = [slot.sink for slot in runtime.build_sinks() if isinstance(slot.sink, ReadableArchive)]
    if not archives:
        raise MailpipeError("no configured sink can be listed here; `archive` reads filesystem sinks")
    return archives


def cmd_archive_list(args: argparse.Namespace) -> int:
    data = {"messages": [_summary(e) for sink in _readable_archives(args) for e in sink.entries()]}
    emit(
        args,
        data,
        lambda d: "\n".join(
            f"{r['id']}  {r['size']:>9}  {r['received_at']}  {'journal' if r['journal_report'] else 'mail'}"
            for r in d["messages"]
        )
        or "the archive is empty",
    )
    return 0


def cmd_archive_show(args: argparse.Namespace) -> int:
    import json

    found = [e for sink in _readable_archives(args) for e in sink.find(args.id)]
    if not found:
        return fail(args, f"no archived message matches {args.id!r}; `mailpipe archive list` shows the ids")
    if len(found) > 1:
        return fail(
            args,
            f"{args.id!r} matches {len(found)} archived messages; give more of the id, one of:",
            candidates=[e.id for e in found],
        )
    (entry,) = found
    emit(args, {**_summary(entry), "metadata": entry.metadata},
         lambda d: "\n".join(map(printable, json.dumps(d, indent=2, ensure_ascii=False).splitlines())))
    return 0


def cmd_archive_verify(args: argparse.Namespace) -> int:
    from mailpipe.cli.output import progress

    archives = _readable_archives(args)
    checked, mismatches = 0, []
    with progress(args, sum(sink.count() for sink in archives), "msg", "verifying") as bar:
        for sink in archives:
            count, problems = sink.verify(on_checked=bar.update)
            checked += count
            mismatches += problems
    data = {"checked": checked, "mismatches": [m.__dict__ for m in mismatches], "ok": not mismatches}
    emit(
        args,
        data,
        lambda d: "\n".join([f"MISMATCH {m['id']}: {m['problem']}" for m in d["mismatches"]]
                            + [f"{d['checked']} messages checked, {len(d['mismatches'])} mismatches"]),
    )
    return 1 if mismatches else 0


# --- spool ------------------------------------------------------------------------------


def _spool(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _actions(commands, common, "spool", "queued and quarantined messages")
    listing = sub.add_parser("list", parents=[common], help="list queued (or quarantined) messages")
    listing.add_argument("--quarantine", action="store_true", help="show quarantined messages")
    listing.set_defaults(handler=cmd_spool_list)
    retry = sub.add_parser("retry", parents=[common], help="move quarantined messages back to the queue")
    retry.add_argument("ids", nargs="*", help="spool ids (default: all quarantined)")
    retry.set_defaults(handler=cmd_spool_retry)


def cmd_spool_list(args: argparse.Namespace) -> int:
    from mailpipe.spool.queue import QUARANTINE, QUEUE

    runtime = open_runtime(args)
    where = QUARANTINE if args.quarantine else QUEUE
    emit(
        args,
        spool_view(runtime, where),
        lambda d: "\n".join(
            f"{r['spool_id']}  {r['connection_id']}  attempts={r['attempts']}  {printable(r['reason'])}"
            for r in d["messages"]
        )
        or f"the {where} is empty",
    )
    return 0


def cmd_spool_retry(args: argparse.Namespace) -> int:
    from mailpipe.pipeline.delivery import retry_quarantined

    runtime = open_runtime(args)
    try:
        moved = retry_quarantined(runtime.spool, args.ids or None) if runtime.has_spool else []
        if args.ids and not runtime.has_spool:
            raise KeyError(args.ids[0])
    except KeyError as error:
        return fail(args, f"no quarantined message with spool id {error.args[0]!r}; see `mailpipe spool list --quarantine`")
    emit(args, {"retried": moved}, lambda d: f"{len(d['retried'])} message(s) back in the queue")
    return 0


# --- sinks ------------------------------------------------------------------------------


def _sinks(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _actions(commands, common, "sinks", "configured sinks (where mail is stored)")
    sub.add_parser("list", parents=[common], help="list the configured sinks").set_defaults(handler=cmd_sinks_list)
    test = sub.add_parser("test", parents=[common], help="check that each sink (or NAME) can store mail")
    test.add_argument("name", nargs="?")
    test.set_defaults(handler=cmd_sinks_test)


def cmd_sinks_list(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, sinks_view(runtime.config), lambda d: "\n".join(
        f"{r['name']:<16} {r['type']:<12} {'required' if r['required'] else 'optional'}" for r in d["sinks"]))
    return 0


def cmd_sinks_test(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    slots = runtime.build_sinks()
    if args.name:
        slots = [s for s in slots if s.name == args.name]
        if not slots:
            names = ", ".join(s["name"] for s in runtime.config.sinks)
            return fail(args, f"no sink named {args.name!r}; configured sinks: {names}")

    async def test_all() -> list[dict[str, Any]]:
        results = []
        for slot in slots:
            try:
                result = await slot.sink.test()
            except Exception as error:  # a sink bug still ends as a red answer
                from mailpipe.types import TestResult

                result = TestResult(ok=False, error=f"the sink's test crashed: {error}")
            results.append({"name": slot.name, "ok": result.ok, "error": result.error,
                            "warnings": list(result.warnings)})
            await slot.sink.aclose()
        return results

    def human_row(r: dict[str, Any]) -> str:
        lines = [f"{r['name']:<16} {'ok' if r['ok'] else 'FAILED: ' + printable(r['error'])}"]
        lines += [f"{'':<16} warning: {printable(w)}" for w in r["warnings"]]
        return "\n".join(lines)

    rows = run_async(test_all)
    if args.name:
        (row,) = rows
        emit(args, row, human_row)
        return 0 if row["ok"] else 1
    ok = all(r["ok"] for r in rows)
    emit(args, {"ok": ok, "sinks": rows}, lambda d: "\n".join(human_row(r) for r in d["sinks"]))
    return 0 if ok else 1
