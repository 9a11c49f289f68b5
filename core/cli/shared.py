"""What every command module uses: the runtime of a command, running async
code, and ``--set``/``--set-file`` values (secrets asked for on the terminal)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any, Callable


from mailpipe.common import event_loop
from mailpipe.connections.settings import parse_assignments
from mailpipe.errors import ValidationError
from mailpipe.runtime import Runtime


def open_runtime(args: argparse.Namespace, create: bool = False) -> Runtime:
    """The runtime for a command; only commands that bring state into being
    pass ``create=True`` (see mailpipe.runtime)."""
    runtime = Runtime.open(args.config, create=create)
    args.runtime_context = runtime.context()
    return runtime


def run_async(function: Callable[..., Any], *args: Any) -> Any:
    return event_loop.run(function, *args, backend=os.environ.get("MAILPIPE_ASYNC_BACKEND", "asyncio"))


def settings_from(args: argparse.Namespace) -> dict[str, str]:
    """``--set KEY=VALUE`` (``KEY=-``: asked for on the terminal, not echoed)
    and ``--set-file KEY=PATH`` (the file's content): secrets need not be on
    the command line, where ``ps`` and the shell history would keep them."""
    values, problems = parse_assignments(args.set or [])
    files, file_problems = parse_assignments(getattr(args, "set_file", None) or [], option="--set-file")
    problems += file_problems
    for key, path in files.items():
        try:
            values[key] = read_setting_file(key, Path(path).expanduser())
        except ValidationError as error:
            problems += error.problems
    for key, value in values.items():
        if value == "-" and key not in files:
            try:
                values[key] = prompt_for(key)
            except ValidationError as error:
                problems += error.problems
    if problems:
        raise ValidationError(problems)
    return values


def read_setting_file(key: str, path: Path) -> str:
    """The file's text without its final line break (``echo`` adds one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValidationError([f"--set-file {key}: cannot read {str(path)!r}: {reason}"]) from None
    return text.removesuffix("\n").removesuffix("\r")


def prompt_for(key: str) -> str:
    if not sys.stdin.isatty():
        raise ValidationError([
            f"--set {key}=- asks for the value on the terminal, but standard input is not a terminal; "
            f"give it in a file with --set-file {key}=PATH"
        ])
    return getpass.getpass(f"{key} (not echoed): ")
