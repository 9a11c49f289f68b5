"""aiosmtpd_compat still matches the installed aiosmtpd, and is the only module touching its internals.

Fails when an aiosmtpd release renames or reshapes a private name the
SMTP session overrides or reads (see the module's ``RELIES_ON``); then
check the new release's session, DATA and STARTTLS handling against the
module's docstring before widening the range in pyproject.toml.
"""

from __future__ import annotations

import aiosmtpd
from tests.support.compat import broken_reliances, pin_problems, private_uses_elsewhere, unlisted_reliances

from mailpipe.intake.smtp import aiosmtpd_compat


def test_every_reliance_on_aiosmtpd_still_holds() -> None:
    assert broken_reliances(aiosmtpd_compat.RELIES_ON) == []


def test_the_compat_module_lists_every_aiosmtpd_name_it_uses() -> None:
    assert unlisted_reliances(aiosmtpd_compat, aiosmtpd) == []


def test_no_other_module_uses_aiosmtpd_internals() -> None:
    assert private_uses_elsewhere(aiosmtpd_compat, aiosmtpd) == []


def test_pyproject_pins_aiosmtpd_to_the_checked_releases() -> None:
    assert pin_problems(aiosmtpd_compat) == []
