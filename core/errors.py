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
    matched, _rest = error.split(MailpipeError)
    return _leaves(matched) if matched is not None else []


def _leaves(group: BaseExceptionGroup) -> list[MailpipeError]:
    found: list[MailpipeError] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])  # type: ignore[list-item]
    return found
