"""Errors a person sees. Each message says what was wrong and what to do;
the CLI prints them without a traceback and exits non-zero."""


class MailpipeError(Exception):
    """Base class: the message is meant for the operator."""


class ConfigError(MailpipeError):
    pass


class PluginError(MailpipeError):
    pass


class ValidationError(MailpipeError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class NotFound(MailpipeError):
    pass


class SecretKeyError(MailpipeError):
    pass


def operator_errors(error: BaseException) -> list[MailpipeError]:
    """The MailpipeErrors in ``error``, which may be one or a (nested) task-group
    exception group; empty when there is none (then it is a bug, not the
    operator's to fix)."""
    if isinstance(error, MailpipeError):
        return [error]
    if not isinstance(error, BaseExceptionGroup):
        return []
    return [leaf for leaf in leaf_errors(error) if isinstance(leaf, MailpipeError)]


def leaf_errors(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``: itself, or every exception of a
    (nested) task-group exception group, groups unwrapped."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in leaf_errors(inner)]


# --- the sink contract: which failure is which --------------------------------
#
# The pipeline must tell "the store is down" (wait, however long the outage
# lasts) from "the store refuses this message" (retry a few times, then
# quarantine it for a person). A sink says which by the exception it raises;
# see docs/sinks.md, "Failures: unavailable or rejected".


class SinkUnavailable(Exception):
    """The sink cannot store anything now: connection refused, timeout, 5xx,
    throttling, or a configuration only the operator can fix (access denied,
    missing bucket, a full or read-only disk). The pipeline keeps the message
    and retries with capped, jittered backoff for ``[pipeline]
    outage_retry_for``; this never counts toward ``max_attempts``."""


class MessageRejected(Exception):
    """The sink refuses this message itself (too large for the store, a name
    or argument it will not accept). Counts toward ``[pipeline]
    max_attempts``; then the message is quarantined."""


class LeaseLost(Exception):
    """This node no longer holds the collector lease of a connection (it
    expired, or another node took it over): a fenced write was refused, and
    the collector must stop before its next action at the source."""
