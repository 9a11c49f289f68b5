"""The operator's command line. Every command takes ``--json``.

``--json`` and ``--config`` are global: they mean the same before or after
the sub-command (``mailpipe --json archive verify`` and ``mailpipe archive
verify --json``). Each level of sub-command accepts them with a SUPPRESS
default, so a level where they are not given never overwrites a level
where they are; ``parse_arguments`` fills the defaults once at the end.

Errors go to stderr as one sentence a person can act on, with exit code 1
(2 for usage errors); never a traceback for a mistake in the input.
Output and errors are written by mailpipe.cli_output.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any, Callable

import anyio

from mailpipe import __version__
from mailpipe.cli_output import emit, fail, printable, reader_gone  # noqa: F401  (commands import them from here)
from mailpipe.errors import MailpipeError, ValidationError, operator_errors
from mailpipe.runtime import Runtime
from mailpipe.settings import parse_assignments

#: Global options and their values when given nowhere.
GLOBAL_DEFAULTS: dict[str, Any] = {"json": False, "config": None}


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        return reader_gone()


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parse_arguments(argv, parser)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    from mailpipe.logs import setup_logging

    setup_logging("WARNING", human=True)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside main's handler
        return code
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


def parse_arguments(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    args = (parser or build_parser()).parse_args(argv)
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


class Parser(argparse.ArgumentParser):
    """argparse with text laid out as written, and help that may be built
    only when asked for (``more_help``: e.g. the installed connection types,
    which need the plugins loaded)."""

    def __init__(self, *args: Any, more_help: Callable[[], str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.more_help = more_help

    def format_help(self) -> str:
        text = super().format_help()
        return f"{text}\n{self.more_help()}" if self.more_help else text


def build_parser() -> argparse.ArgumentParser:
    # Shared by every level; SUPPRESS so a level where an option is absent
    # leaves the namespace alone (see the module docstring). Never call
    # set_defaults for these: parents share action objects, so a default set
    # on one parser would reach every sub-command and undo the option.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output (one JSON object; see docs/cli.md)")
    common.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="PATH", help="TOML config (default: $MAILPIPE_CONFIG or embedded)"
    )
    parser = Parser(
        prog="mailpipe",
        description="Mail archiving pipeline",
        parents=[common],
        epilog="--json and --config may be given before or after the command.",
    )
    parser.add_argument("--version", action="version", version=f"mailpipe {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    from mailpipe.cli_commands import register_commands

    register_commands(commands, common)
    return parser


def open_runtime(args: argparse.Namespace, create: bool = False) -> Runtime:
    """The runtime for a command; only commands that bring state into being
    pass ``create=True`` (see mailpipe.runtime)."""
    runtime = Runtime.open(args.config, create=create)
    args.runtime_context = runtime.context()
    return runtime


def run_async(function: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(function, *args, backend=os.environ.get("MAILPIPE_ASYNC_BACKEND", "asyncio"))


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


if __name__ == "__main__":
    sys.exit(main())
