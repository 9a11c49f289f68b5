"""The operator's command line. Every command takes ``--json``.

Errors go to stderr as one sentence a person can act on, with exit code 1
(2 for usage errors); never a traceback for a mistake in the input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import anyio

from mailpipe import __version__
from mailpipe.errors import MailpipeError, operator_errors
from mailpipe.runtime import Runtime
from mailpipe.settings import parse_assignments


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    from mailpipe.logs import setup_logging

    setup_logging("WARNING", human=True)
    try:
        return int(args.handler(args) or 0)
    except MailpipeError as error:
        return fail(args, str(error))
    except BaseExceptionGroup as group:
        # Raised inside `serve`'s task groups (a port in use, an unreadable
        # TLS key): still one sentence for the operator, not a traceback.
        problems = operator_errors(group)
        if not problems:
            raise
        return fail(args, "; ".join(str(e) for e in problems))
    except KeyboardInterrupt:
        return 130


def fail(args: argparse.Namespace, message: str, code: int = 1) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}), file=sys.stderr)
    else:
        print(f"mailpipe: error: {message}", file=sys.stderr)
    return code


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        text = human(data)
        if text:
            print(text)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="PATH", help="TOML config (default: $MAILPIPE_CONFIG or embedded)"
    )
    parser = argparse.ArgumentParser(prog="mailpipe", description="Mail archiving pipeline", parents=[common])
    parser.add_argument("--version", action="version", version=f"mailpipe {__version__}")
    parser.set_defaults(json=False, config=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    from mailpipe.cli_commands import register_commands

    register_commands(commands, common)
    return parser


def open_runtime(args: argparse.Namespace) -> Runtime:
    return Runtime.open(args.config)


def run_async(function: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(function, *args, backend=os.environ.get("MAILPIPE_ASYNC_BACKEND", "asyncio"))


def settings_from(args: argparse.Namespace) -> dict[str, str]:
    values, problems = parse_assignments(args.set or [])
    if problems:
        from mailpipe.errors import ValidationError

        raise ValidationError(problems)
    return values


if __name__ == "__main__":
    sys.exit(main())
