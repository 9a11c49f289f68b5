"""The connection lifecycle: one service used by the CLI (and later an HTTP API).

add → validate → stored disabled and untested; edit → re-validate, status
back to untested; enable / disable; test → testing → ok | failed; delete.

Every change names its ``Actor`` and is recorded in the audit log here
(secrets masked as in ``public``), so the CLI and the API record the same.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import anyio

from mailpipe.connections.audit import SYSTEM, Actor, AuditLog
from mailpipe.config import Config
from mailpipe.errors import NotFound, ValidationError
from mailpipe.plugin_host import PluginHost
from mailpipe.connections.secrets import SecretBox
from mailpipe.connections.settings import complete, convert, masked
from mailpipe.connections.store import ConnectionStore, StoredConnection
from mailpipe.common.timestamps import utc_now
from mailpipe.spool.disk_space import STATUS_PREFIX, StatusReporter
from mailpipe.types import Connection, ConnectionType, Status, TestResult, ValidationContext

TEST_TIMEOUT_SECONDS = 60.0


def new_connection_id() -> str:
    return "c" + secrets.token_hex(5)


def new_journal_address(domain: str) -> str:
    """An unguessable local part: 128 random bits, lower-case base32."""
    token = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
    return f"j-{token}@{domain.lower()}"


class ConnectionService:
    def __init__(self, config: Config, host: PluginHost, store: ConnectionStore, box: SecretBox) -> None:
        self.config = config
        self.host = host
        self.store = store
        self.box = box
        self.audit = AuditLog(store)

    def _record(
        self, actor: Actor, action: str, connection_id: str,
        before: Connection | None, after: Connection | None,
    ) -> None:
        self.audit.record(
            actor, f"connection.{action}", f"connection:{connection_id}",
            before=self.public(before) if before else None,
            after=self.public(after) if after else None,
            connection_id=connection_id,
        )

    # --- reading ---------------------------------------------------------

    def get(self, connection_id: str) -> Connection:
        return self.to_connection(self._stored(connection_id))

    def _stored(self, connection_id: str) -> StoredConnection:
        row = self.store.get(connection_id)
        if row is None:
            raise NotFound(
                f"no connection with id {connection_id!r}; `mailpipe connections list` shows the ids"
            )
        return row

    def find(self, connection_id: str) -> Connection | None:
        row = self.store.get(connection_id)
        return self.to_connection(row) if row else None

    def list(self) -> list[Connection]:
        return [self.to_connection(row) for row in self.store.list()]

    def to_connection(self, row: StoredConnection) -> Connection:
        connection_type = self.host.connection_types.get(row.type)
        settings = dict(row.settings)
        for setting in connection_type.settings if connection_type else ():
            if setting.kind == "secret" and isinstance(settings.get(setting.name), str):
                settings[setting.name] = self.box.decrypt(settings[setting.name])
        return Connection(
            id=row.id,
            type=row.type,
            description=row.description,
            enabled=row.enabled,
            settings=settings,
            status=Status(row.status),
            status_error=row.status_error,
            status_time=row.status_time,
            address=row.address,
            created=row.created,
            updated=row.updated,
        )

    def public(self, connection: Connection) -> dict[str, Any]:
        """What may be printed or logged: secrets masked."""
        return {
            "id": connection.id,
            "type": connection.type,
            "description": connection.description,
            "enabled": connection.enabled,
            "address": connection.address,
            "settings": masked(self.host.connection_types.get(connection.type), connection.settings),
            "status": connection.status.value,
            "status_error": connection.status_error,
            "status_time": connection.status_time,
            "created": connection.created,
            "updated": connection.updated,
        }

    # --- changing --------------------------------------------------------

    async def check_new(self, type_name: str, raw_settings: dict[str, Any]) -> None:
        """Raise what ``add`` would refuse, without storing anything."""
        await self._validated(self.host.connection_type(type_name), raw_settings, connection_id=None)

    async def add(
        self, type_name: str, description: str, raw_settings: dict[str, Any], actor: Actor = SYSTEM
    ) -> Connection:
        connection_type = self.host.connection_type(type_name)
        settings = await self._validated(connection_type, raw_settings, connection_id=None)
        now = utc_now()
        row = StoredConnection(
            id=new_connection_id(),
            type=type_name,
            description=description,
            enabled=False,
            settings=self._encrypt(connection_type, settings),
            address=(
                new_journal_address(self.config.smtp.journal_domain)
                if connection_type.receives == "smtp"
                else None
            ),
            status=Status.UNTESTED.value,
            status_error="",
            status_time=None,
            created=now,
            updated=now,
        )
        self.store.insert(row)
        added = self.to_connection(row)
        self._record(actor, "add", row.id, None, added)
        return added

    async def edit(
        self, connection_id: str, raw_settings: dict[str, Any], description: str | None = None,
        actor: Actor = SYSTEM,
    ) -> Connection:
        row = self._stored(connection_id)
        current = self.to_connection(row)
        connection_type = self.host.connection_type(current.type)
        merged = {**current.settings, **raw_settings}
        settings = await self._validated(connection_type, merged, connection_id=connection_id)
        row.settings = self._encrypt(connection_type, settings)
        if description is not None:
            row.description = description
        row.status, row.status_error, row.status_time = Status.UNTESTED.value, "", None
        row.updated = utc_now()
        self.store.update(row)
        edited = self.to_connection(row)
        self._record(actor, "edit", connection_id, current, edited)
        return edited

    def set_enabled(self, connection_id: str, enabled: bool, actor: Actor = SYSTEM) -> Connection:
        row = self._stored(connection_id)
        before = self.to_connection(row)
        row.enabled = enabled
        row.updated = utc_now()
        self.store.update(row)
        after = self.to_connection(row)
        self._record(actor, "enable" if enabled else "disable", connection_id, before, after)
        return after

    def delete(self, connection_id: str, actor: Actor = SYSTEM) -> None:
        before = self.find(connection_id)
        if before is None or not self.store.delete(connection_id):
            raise NotFound(
                f"no connection with id {connection_id!r}; `mailpipe connections list` shows the ids"
            )
        self._record(actor, "delete", connection_id, before, None)

    async def test(self, connection_id: str, actor: Actor = SYSTEM) -> tuple[Connection, TestResult]:
        current = self.begin_test(connection_id, actor)
        return await self.finish_test(current, actor)

    def begin_test(self, connection_id: str, actor: Actor = SYSTEM) -> Connection:
        """Status → testing (recorded as a test by ``actor``); ``finish_test`` runs it.
        Split so the API can answer 202 with the testing status at once."""
        current = self.get(connection_id)
        testing = self._set_status(current, Status.TESTING, "")
        self._record(actor, "test", connection_id, current, testing)
        return testing

    async def finish_test(self, current: Connection, actor: Actor = SYSTEM) -> tuple[Connection, TestResult]:
        """Run the test ``begin_test`` recorded; its outcome (status ok, or
        failed with the error) is audited as ``connection.test_result`` by
        the same ``actor``, so the log says who tested and what came of it."""
        result = await self.run_test(current)
        status = Status.OK if result.ok else Status.FAILED
        finished = self._set_status(current, status, result.error)
        self._record(actor, "test_result", current.id, current, finished)
        return finished, result

    async def run_test(self, connection: Connection) -> TestResult:
        try:
            with anyio.fail_after(TEST_TIMEOUT_SECONDS):
                return await self.host.test(connection, self._context(connection.id))
        except TimeoutError:
            return TestResult(ok=False, error=f"the test did not finish within {TEST_TIMEOUT_SECONDS:.0f} s")
        except Exception as error:  # a plugin bug must still end as a red status
            return TestResult(ok=False, error=f"the {connection.type} test crashed: {error}")

    def warnings(self, connection: Connection) -> list[str]:
        """Settings that work but that an operator should know about (the
        connection type says which), shown with the connection."""
        return self.host.warnings(connection)

    # --- helpers ---------------------------------------------------------

    def _set_status(self, current: Connection, status: Status, error: str) -> Connection:
        row = self.store.get(current.id)
        if row is None:  # deleted while testing
            raise NotFound(f"connection {current.id!r} was deleted during its test")
        row.status, row.status_error, row.status_time = status.value, error, utc_now()
        self.store.update(row)
        return self.to_connection(row)

    async def _validated(
        self, connection_type: ConnectionType, raw: dict[str, Any], connection_id: str | None
    ) -> dict[str, Any]:
        settings, problems = convert(connection_type, raw)
        problems += complete(connection_type, settings)
        if not problems:
            problems += await self.host.validate(connection_type, settings, self._context(connection_id))
        if problems:
            raise ValidationError(problems)
        return settings

    def _context(self, connection_id: str | None) -> ValidationContext:
        return ValidationContext(
            find_connection=self.find,
            accepted_domains=self.config.smtp.accepted_domains,
            connection_id=connection_id,
        )

    def _encrypt(self, connection_type: ConnectionType, settings: dict[str, Any]) -> dict[str, Any]:
        stored = dict(settings)
        for setting in connection_type.settings:
            value = stored.get(setting.name)
            if setting.kind == "secret" and isinstance(value, str) and value:
                stored[setting.name] = self.box.encrypt(value)
        return stored


def store_status_reporter(store: object) -> StatusReporter:
    """Records the spool's disk-full status in the connection store (``connections show``)."""
    def report(connection_id: str, error: str | None) -> None:
        row = store.get(connection_id)  # type: ignore[attr-defined]
        if row is None:
            return
        if error is None:
            if row.status != Status.FAILED.value or not row.status_error.startswith(STATUS_PREFIX):
                return  # only the status this module set is taken back
            row.status, row.status_error = Status.OK.value, ""
        else:
            row.status, row.status_error = Status.FAILED.value, error
        row.status_time = utc_now()
        store.update(row)  # type: ignore[attr-defined]

    return report
