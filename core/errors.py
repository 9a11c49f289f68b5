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
