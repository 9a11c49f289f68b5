"""``mailpipe users``, ``mailpipe tokens`` and ``mailpipe audit``: who may use the
console and the API, and what everyone changed.

Passwords never go on the command line (``ps`` and the shell history would
keep them): they are asked for twice without echo, or read from
``--password-file``. A token is printed once, when it is created.
``users add`` may create the state (the first user is made before the first
``serve``); every other command here only reads what is there.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any, Callable

from mailpipe.connections.accounts import ROLES, AccountService
from mailpipe.connections.audit import Actor, audit_view
from mailpipe.cli.output import emit, printable
from mailpipe.cli.shared import open_runtime, read_setting_file
from mailpipe.errors import ValidationError


def register(commands: Any, common: argparse.ArgumentParser, actions: Callable[..., Any]) -> None:
    users = actions(commands, common, "users", "console and API accounts (admin or viewer)")
    add = users.add_parser("add", parents=[common], help="add an account (password asked for, or --password-file)")
    add.add_argument("name")
    # Checked by the service (one sentence, as from the API), not by argparse choices.
    add.add_argument("--role", required=True, metavar="|".join(ROLES))
    _password_option(add)
    add.set_defaults(handler=cmd_users_add)
    users.add_parser("list", parents=[common], help="list accounts").set_defaults(handler=cmd_users_list)
    passwd = users.add_parser("passwd", parents=[common], help="set an account's password")
    passwd.add_argument("name")
    _password_option(passwd)
    passwd.set_defaults(handler=cmd_users_passwd)
    delete = users.add_parser("delete", parents=[common], help="delete an account and revoke its tokens")
    delete.add_argument("name")
    delete.set_defaults(handler=cmd_users_delete)

    tokens = actions(commands, common, "tokens", "bearer tokens for scripts using the API")
    create = tokens.add_parser("create", parents=[common], help="create a token (printed once, stored hashed)")
    create.add_argument("--user", required=True, help="the account the token acts as (and whose role it has)")
    create.add_argument("--name", default="", help="what the token is for (shown in lists and the audit log)")
    create.set_defaults(handler=cmd_tokens_create)
    listing = tokens.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    listing.add_argument("--user")
    listing.set_defaults(handler=cmd_tokens_list)
    revoke = tokens.add_parser("revoke", parents=[common], help="revoke a token at once")
    revoke.add_argument("id")
    revoke.set_defaults(handler=cmd_tokens_revoke)

    audit = actions(commands, common, "audit", "the audit log of every change")
    audit_list = audit.add_parser("list", parents=[common], help="list changes, oldest first")
    audit_list.add_argument("--connection", metavar="ID", help="only changes to this connection")
    audit_list.add_argument("--since", metavar="TIME", help="RFC 3339 time or a duration back from now (30m, 24h, 7d)")
    audit_list.set_defaults(handler=cmd_audit_list)


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-file", metavar="PATH",
                        help="read the password from a file (default: asked for twice, not echoed)")


def read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            return read_setting_file("password", Path(args.password_file).expanduser())
        except ValidationError:
            raise ValidationError([f"--password-file: cannot read {args.password_file!r}"]) from None
    if not sys.stdin.isatty():
        raise ValidationError([
            "the password is asked for on the terminal, but standard input is not a terminal; "
            "give it in a file with --password-file PATH"
        ])
    first = getpass.getpass("password (not echoed): ")
    if getpass.getpass("again: ") != first:
        raise ValidationError(["password: the two entries differ; nothing was changed"])
    return first


def _accounts(args: argparse.Namespace, create: bool = False) -> AccountService:
    return AccountService(open_runtime(args, create=create).store)


def _user_line(user: dict[str, Any]) -> str:
    return f"{printable(user['name']):<24} {user['role']:<7} tokens={user['tokens']}  created {user['created']}"


def cmd_users_add(args: argparse.Namespace) -> int:
    password = read_password(args)
    user = _accounts(args, create=True).add_user(args.name, args.role, password, Actor.cli())
    emit(args, user, lambda d: f"user {printable(d['name'])} added ({d['role']})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    data = {"users": _accounts(args).users()}
    emit(args, data, lambda d: "\n".join(map(_user_line, d["users"]))
         or "no users; add one with `mailpipe users add NAME --role admin`")
    return 0


def cmd_users_passwd(args: argparse.Namespace) -> int:
    accounts = _accounts(args)
    accounts.user(args.name)  # a wrong name fails before the password is asked for
    user = accounts.set_password(args.name, read_password(args), Actor.cli())
    emit(args, user, lambda d: f"password of {printable(d['name'])} changed")
    return 0


def cmd_users_delete(args: argparse.Namespace) -> int:
    user = {**_accounts(args).delete_user(args.name, Actor.cli()), "deleted": True}
    emit(args, user, lambda d: f"user {printable(d['name'])} deleted; their tokens are revoked")
    return 0


def cmd_tokens_create(args: argparse.Namespace) -> int:
    record, token = _accounts(args).create_token(args.user, args.name, Actor.cli())
    emit(args, {**record, "token": token},
         lambda d: f"{d['token']}\n(token {d['id']} for {printable(d['user'])}; shown only now, store it safely)")
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    data = {"tokens": _accounts(args).tokens(args.user)}
    emit(args, data, lambda d: "\n".join(
        f"{t['id']}  {printable(t['user']):<20} {printable(t['name']):<20} last used {t['last_used_at'] or 'never'}"
        for t in d["tokens"]) or "no tokens")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    record = {**_accounts(args).revoke_token(args.id, Actor.cli()), "revoked": True}
    emit(args, record, lambda d: f"token {d['id']} revoked")
    return 0


def cmd_audit_list(args: argparse.Namespace) -> int:
    data = audit_view(open_runtime(args).store, args.connection, args.since)
    emit(args, data, lambda d: "\n".join(
        f"{e['recorded_at']}  {printable(e['actor'])} ({printable(e['remote'])})  {e['action']}  {printable(e['target'])}"
        for e in d["entries"]) or "no changes recorded")
    return 0
