"""The operator's command line. Every command takes ``--json``.

``--json`` and ``--config`` are global: they mean the same before or after
the sub-command (``mailpipe --json archive verify`` and ``mailpipe archive
verify --json``). Each level of sub-command accepts them with a SUPPRESS
default, so a level where they are not given never overwrites a level
where they are; ``parse_arguments`` fills the defaults once at the end.

Errors go to stderr as one sentence a person can act on, with exit code 1
(2 for usage errors); never a traceback for a mistake in the input.
Output and errors are written by mailpipe.cli.output; what every command
module shares (the runtime, --set values) is in mailpipe.cli.shared.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from mailpipe import __version__
from mailpipe.cli.commands import register_commands
from mailpipe.cli.output import fail, reader_gone
from mailpipe.errors import MailpipeError, operator_errors

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

    register_commands(commands, common)
    return parser


if __name__ == "__main__":
    sys.exit(main())
