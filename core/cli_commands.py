"""The sub-commands: serve, plugins, connections, archive, spool, sinks."""

from __future__ import annotations

import argparse
from typing import Any

from mailpipe import cli_config
from mailpipe.cli import emit, fail, open_runtime, run_async, settings_from
from mailpipe.errors import MailpipeError


def register_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--workers", type=int, default=1, help="SMTP worker processes (default 1)")
    serve.set_defaults(handler=cmd_serve)

    plugins = commands.add_parser("plugins", parents=[common], help="list installed plugins")
    plugins.set_defaults(handler=cmd_plugins)

    _connections(commands, common)
    _archive(commands, common)
    _spool(commands, common)
    _sinks(commands, common)
    cli_config.register(commands, common)


# --- serve / plugins -----------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from mailpipe.logs import setup_logging
    from mailpipe.runtime import Runtime
    from mailpipe.server import serve

    runtime = Runtime.open(args.config)
    setup_logging(runtime.config.log_level)
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
    data = {
        "plugins": [info.__dict__ for info in sorted(host.infos.values(), key=lambda i: i.name)],
        "broken": [b.__dict__ for b in host.broken],
        "skipped": host.skipped,
    }

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
            lines.append(f"{b['name']:<16} BROKEN, skipped: {b['error']} ({b['target']})")
        for name in d["skipped"]:
            lines.append(f"{name:<16} not loaded (blocked or not allowed by config)")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


# --- connections -------------------------------------------------------------------


def _connections(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("connections", parents=[common], help="manage connections")
    sub = group.add_subparsers(title="actions", metavar="ACTION", required=True)

    add = sub.add_parser("add", parents=[common], help="add a connection (disabled)")
    add.add_argument("type")
    add.add_argument("--description", required=True)
    add.add_argument("--set", action="append", metavar="KEY=VALUE")
    add.set_defaults(handler=cmd_add)

    sub.add_parser("list", parents=[common]).set_defaults(handler=cmd_list)
    for name, handler in (
        ("show", cmd_show),
        ("enable", cmd_enable),
        ("disable", cmd_disable),
        ("test", cmd_test),
        ("delete", cmd_delete),
    ):
        action = sub.add_parser(name, parents=[common])
        action.add_argument("id")
        action.set_defaults(handler=handler)

    edit = sub.add_parser("edit", parents=[common], help="change settings (re-validates, status → untested)")
    edit.add_argument("id")
    edit.add_argument("--set", action="append", metavar="KEY=VALUE")
    edit.add_argument("--description")
    edit.set_defaults(handler=cmd_edit)


def _describe(connection: dict[str, Any]) -> str:
    lines = [
        f"id:          {connection['id']}",
        f"type:        {connection['type']}",
        f"description: {connection['description']}",
        f"enabled:     {'yes' if connection['enabled'] else 'no'}",
    ]
    if connection.get("address"):
        lines.append(f"address:     {connection['address']}")
    status = connection["status"]
    if connection.get("status_error"):
        status += f" — {connection['status_error']}"
    lines.append(f"status:      {status}")
    for key, value in sorted(connection["settings"].items()):
        shown = ",".join(value) if isinstance(value, list) else value
        lines.append(f"  {key} = {shown}")
    for warning in connection.get("warnings", []):
        lines.append(f"warning:     {warning}")
    return "\n".join(lines)


def _public(runtime: Any, connection: Any) -> dict[str, Any]:
    data = runtime.service.public(connection)
    data["warnings"] = connection_warnings(runtime, connection)
    return data


def connection_warnings(runtime: Any, connection: Any) -> list[str]:
    """Settings that work but that an operator should know about."""
    if connection.settings.get("tls_verify") is False:
        return ["tls_verify is false: the server's certificate is not checked"]
    return []


def cmd_add(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    connection = run_async(runtime.service.add, args.type, args.description, settings_from(args))
    data = _public(runtime, connection)
    emit(args, data, lambda d: "connection added (disabled; enable it with "
         f"`mailpipe connections enable {d['id']}`)\n" + _describe(d))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    data = [_public(runtime, c) for c in runtime.service.list()]

    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no connections; add one with `mailpipe connections add TYPE --description TEXT`"
        return "\n".join(
            f"{r['id']}  {r['type']:<14} {'enabled ' if r['enabled'] else 'disabled'}  "
            f"{r['status']:<8}  {r.get('address') or ''}  {r['description']}"
            for r in rows
        )

    emit(args, data, human)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, _public(runtime, runtime.service.get(args.id)), _describe)
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    connection = run_async(runtime.service.edit, args.id, settings_from(args), args.description)
    emit(args, _public(runtime, connection), _describe)
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, _public(runtime, runtime.service.set_enabled(args.id, True)), _describe)
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    emit(args, _public(runtime, runtime.service.set_enabled(args.id, False)), _describe)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    connection, result = run_async(runtime.service.test, args.id)
    data = _public(runtime, connection)
    data["test"] = {"ok": result.ok, "error": result.error, "warnings": list(result.warnings)}
    data["warnings"] = sorted(set(data["warnings"]) | set(result.warnings))
    emit(args, data, _describe)
    return 0 if result.ok else 1


def cmd_delete(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    runtime.service.delete(args.id)
    emit(args, {"deleted": args.id}, lambda d: f"connection {d['deleted']} deleted")
    return 0


# --- archive -------------------------------------------------------------------------


def _archive(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("archive", parents=[common], help="look into the filesystem archive")
    sub = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    sub.add_parser("list", parents=[common]).set_defaults(handler=cmd_archive_list)
    show = sub.add_parser("show", parents=[common])
    show.add_argument("id", help="connection/sha256, sha256, or a unique prefix")
    show.set_defaults(handler=cmd_archive_show)
    sub.add_parser("verify", parents=[common], help="re-hash every message").set_defaults(
        handler=cmd_archive_verify
    )


def _readable_archives(args: argparse.Namespace) -> list[Any]:
    runtime = open_runtime(args)
    archives = [slot.sink for slot in runtime.build_sinks() if hasattr(slot.sink, "entries")]
    if not archives:
        raise MailpipeError("no configured sink can be listed here; `archive` reads filesystem sinks")
    return archives


def _summary(entry: Any) -> dict[str, Any]:
    meta = entry.metadata
    journal = meta.get("journal") or {}
    return {
        "id": entry.id,
        "connection_id": meta.get("connection_id"),
        "size": meta.get("size"),
        "sha256": meta.get("sha256"),
        "received_at": (meta.get("arrivals") or [{}])[0].get("received_at"),
        "arrivals": len(meta.get("arrivals", [])),
        "journal_report": bool(journal),
        "path": str(entry.eml_path),
    }


def cmd_archive_list(args: argparse.Namespace) -> int:
    rows = [_summary(e) for sink in _readable_archives(args) for e in sink.entries()]
    emit(
        args,
        rows,
        lambda rs: "\n".join(
            f"{r['id']}  {r['size']:>9}  {r['received_at']}  {'journal' if r['journal_report'] else 'mail'}"
            for r in rs
        )
        or "the archive is empty",
    )
    return 0


def cmd_archive_show(args: argparse.Namespace) -> int:
    found = [e for sink in _readable_archives(args) for e in sink.find(args.id)]
    if not found:
        return fail(args, f"no archived message matches {args.id!r}; `mailpipe archive list` shows the ids")
    data = [{**_summary(e), "metadata": e.metadata} for e in found]
    import json

    emit(args, data if len(data) > 1 else data[0], lambda d: json.dumps(d, indent=2, ensure_ascii=False))
    return 0


def cmd_archive_verify(args: argparse.Namespace) -> int:
    checked, mismatches = 0, []
    for sink in _readable_archives(args):
        count, problems = sink.verify()
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
    group = commands.add_parser("spool", parents=[common], help="queued and quarantined messages")
    sub = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common])
    listing.add_argument("--quarantine", action="store_true", help="show quarantined messages")
    listing.set_defaults(handler=cmd_spool_list)
    retry = sub.add_parser("retry", parents=[common], help="move quarantined messages back to the queue")
    retry.add_argument("ids", nargs="*", help="spool ids (default: all quarantined)")
    retry.set_defaults(handler=cmd_spool_retry)


def cmd_spool_list(args: argparse.Namespace) -> int:
    from mailpipe.spool import QUARANTINE, QUEUE

    runtime = open_runtime(args)
    where = QUARANTINE if args.quarantine else QUEUE
    rows = []
    for message in runtime.spool.pending(where):
        state = runtime.spool.state(message.id, where)
        rows.append(
            {
                "spool_id": message.id,
                "connection_id": message.metadata.get("connection_id"),
                "size": message.size,
                "received_at": message.metadata.get("received_at"),
                "attempts": state.attempts,
                "stored_in": state.stored_in,
                "reason": state.last_error,
                "quarantined_at": state.quarantined_at,
            }
        )
    emit(
        args,
        rows,
        lambda rs: "\n".join(
            f"{r['spool_id']}  {r['connection_id']}  attempts={r['attempts']}  {r['reason']}" for r in rs
        )
        or f"the {where} is empty",
    )
    return 0


def cmd_spool_retry(args: argparse.Namespace) -> int:
    from mailpipe.pipeline import retry_quarantined

    runtime = open_runtime(args)
    try:
        moved = retry_quarantined(runtime.spool, args.ids or None)
    except KeyError as error:
        return fail(args, f"no quarantined message with spool id {error.args[0]!r}; see `mailpipe spool list --quarantine`")
    emit(args, {"retried": moved}, lambda d: f"{len(d['retried'])} message(s) back in the queue")
    return 0


# --- sinks ------------------------------------------------------------------------------


def _sinks(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("sinks", parents=[common], help="configured sinks")
    sub = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    sub.add_parser("list", parents=[common]).set_defaults(handler=cmd_sinks_list)
    test = sub.add_parser("test", parents=[common])
    test.add_argument("name", nargs="?")
    test.set_defaults(handler=cmd_sinks_test)


def cmd_sinks_list(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    rows = [
        {"name": t["name"], "type": t["type"], "required": bool(t.get("required", True))}
        for t in runtime.config.sinks
    ]
    emit(args, rows, lambda rs: "\n".join(
        f"{r['name']:<16} {r['type']:<12} {'required' if r['required'] else 'optional'}" for r in rs))
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

    def human(rs: list[dict[str, Any]]) -> str:
        lines = []
        for r in rs:
            lines.append(f"{r['name']:<16} {'ok' if r['ok'] else 'FAILED: ' + r['error']}")
            lines += [f"{'':<16} warning: {w}" for w in r["warnings"]]
        return "\n".join(lines)

    rows = run_async(test_all)
    emit(args, rows, human)
    return 0 if all(r["ok"] for r in rows) else 1
