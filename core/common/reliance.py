"""What a compatibility module relies on in a library, stated so a test can check it.

mailpipe leans on a few libraries' internals (aioimaplib's response reader,
aiosmtpd's session state) where their public API cannot do the job. Each
such library gets one compatibility module, and that module declares a
``RELIES_ON`` table of :class:`Reliance` entries: every private name it
touches, every method it overrides, with the parameters it assumes. The
library's tests (``tests/test_*_compat.py``) check each entry against the
installed library, so a release that renames or reshapes one of them fails
the tests instead of failing in production; the dependency's version range
in pyproject.toml stays within what those tests were run against.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reliance:
    """One name of a library that a compatibility module relies on.

    - a method: ``parameters`` names its parameters in order (``self``
      first); ``override`` is the compatibility class that replaces it, whose
      method must take the same parameters;
    - an instance attribute: ``set_in`` names the library method that
      assigns it (``self.<name> = ...``);
    - anything else (a class attribute, a module-level name): it must exist.
    """

    owner: object
    name: str
    why: str
    parameters: tuple[str, ...] | None = None
    override: type | None = None
    set_in: str | None = None

    @property
    def label(self) -> str:
        return f"{getattr(self.owner, '__qualname__', getattr(self.owner, '__name__', self.owner))}.{self.name}"

    def problem(self) -> str | None:
        """None while the installed library still matches; else what changed."""
        if self.set_in is not None:
            return self._attribute_problem()
        if not hasattr(self.owner, self.name):
            return f"{self.label} no longer exists"
        if self.parameters is None:
            return None
        found = _parameter_names(getattr(self.owner, self.name))
        if found != self.parameters:
            return f"{self.label} now takes {found}, not {self.parameters}"
        if self.override is not None:
            replacement = self.override.__dict__.get(self.name)
            if replacement is None:
                return f"{self.override.__qualname__} no longer overrides {self.label}"
            if _parameter_names(replacement) != self.parameters:
                return f"{self.override.__qualname__}.{self.name} does not take {self.parameters}"
        return None

    def _attribute_problem(self) -> str | None:
        assert self.set_in is not None
        method = getattr(self.owner, self.set_in, None)
        if method is None:
            return f"{self.label}: {self.set_in}, which assigns it, no longer exists"
        assignment = re.compile(rf"\bself\.{re.escape(self.name)}\s*(:[^=\n]*)?=[^=]")
        if not assignment.search(inspect.getsource(method)):
            return f"{self.label} is no longer assigned in {self.set_in}"
        return None


def _parameter_names(function: object) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)  # type: ignore[arg-type]
