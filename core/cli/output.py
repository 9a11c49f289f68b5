"""How the CLI writes: one JSON object per command, or text safe for a terminal.

Every ``--json`` output is one object carrying ``config``, ``data_dir`` and
``state`` beside the command's own keys, so a script always knows which
state it looked at (docs/cli.md). Timestamps in it are RFC 3339 UTC with
milliseconds (mailpipe.common.timestamps), whatever form older state holds.

Human output escapes control characters: a description or a remote
server's error text could otherwise move the cursor, clear the screen or
forge lines. JSON stays exact (json.dumps escapes them itself).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Callable

from mailpipe.common.timestamps import with_rfc3339

#: Keys whose string values are timestamps, besides every ``*_at``.

#: C0 and C1 controls, DEL, and the bidirectional overrides that reorder text.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Exit status of a command whose reader went away (as if killed by SIGPIPE).
EXIT_READER_GONE = 128 + 13


def printable(value: Any) -> str:
    """``value`` as text with every control character escaped (``\\n``, ``\\x1b``)."""
    return _UNPRINTABLE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    if character in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[character]
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def output_context(args: argparse.Namespace) -> dict[str, Any]:
    """``config``, ``data_dir`` and ``state`` of this command (see Runtime.context)."""
    context = getattr(args, "runtime_context", None)
    if context is None:
        from mailpipe.config import load_config
        from mailpipe.runtime import state_context

        context = state_context(load_config(args.config))
        args.runtime_context = context
    return dict(context)


def emit(args: argparse.Namespace, data: dict[str, Any], human: Callable[[Any], str]) -> None:
    shown = with_rfc3339(data)
    if args.json:
        document = {**shown, **output_context(args)}
        print(json.dumps(document, indent=2, ensure_ascii=False, default=str))
        return
    text = human(shown)
    if text:
        print(text)
    note = state_note(args)
    if note:
        print(f"mailpipe: {note}", file=sys.stderr)


def state_note(args: argparse.Namespace) -> str:
    """For people: where state was just created, or where there was none."""
    context = output_context(args)
    config = context.get("config") or "the embedded default"
    if context.get("state") == "created":
        return f"created new state in {context['data_dir']} (config: {config})"
    if context.get("state") == "none":
        return f"no state in {context['data_dir']} (config: {config})"
    return ""


def fail(args: argparse.Namespace, message: str, code: int = 1, **details: Any) -> int:
    """An error: one sentence on stderr; with --json, an object with ``error``."""
    context = getattr(args, "runtime_context", None) or {}
    if context.get("state") == "none":
        message += f" (there is no state in {context['data_dir']}: is --config right?)"
    if getattr(args, "json", False):
        print(json.dumps({"error": message, **details, **context}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"mailpipe: error: {printable(message)}", file=sys.stderr)
        for key, values in details.items():
            for value in values if isinstance(values, list) else [values]:
                print(f"  {printable(value)}", file=sys.stderr)
    return code


def reader_gone() -> int:
    """stdout's reader closed early (``| head -1``): stop quietly.

    Python would otherwise raise again when it flushes stdout at exit, so
    stdout now points at /dev/null.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_READER_GONE


def progress(args: argparse.Namespace, total: int, unit: str, what: str) -> Any:
    """A progress bar on stderr (count, rate, time left) for a person at a
    terminal; nothing with --json or when stdout or stderr is not a terminal."""
    from tqdm import tqdm

    shown = not args.json and sys.stdout.isatty() and sys.stderr.isatty()
    return tqdm(total=total, unit=unit, desc=what, disable=not shown, file=sys.stderr, leave=False)
