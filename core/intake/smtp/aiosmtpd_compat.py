"""What mailpipe still takes from aiosmtpd: its PROXY protocol parser (tested against aiosmtpd 1.4.6).

mailpipe's SMTP session is its own (connection.py and protocol.py, where
the measured reason is written down). From aiosmtpd it keeps the
maintained parser of the PROXY protocol header, v1 and v2
(``aiosmtpd.proxy_protocol.get_proxy``), fed by proxy_header.py from the
session's buffer, and reads three fields of the ``ProxyData`` it returns:
true when the header is valid, ``error`` (why not) and ``src_addr`` (the
client). All three are public; ``RELIES_ON`` lists them with the
signature assumed, and ``tests/core/intake/test_aiosmtpd_compat.py``
checks them against the installed aiosmtpd, checks that no mailpipe
module uses a private name of aiosmtpd, and that pyproject.toml pins
aiosmtpd to the releases the checks were run against.
"""

from __future__ import annotations

import aiosmtpd.proxy_protocol
from aiosmtpd.proxy_protocol import ProxyData

from mailpipe.common.reliance import Reliance

#: The releases the checks of ``RELIES_ON`` were run against; pyproject.toml
#: lists exactly this requirement (the test checks that too).
REQUIREMENT = "aiosmtpd>=1.4.6,<1.5"

RELIES_ON: tuple[Reliance, ...] = (
    Reliance(aiosmtpd.proxy_protocol, "get_proxy", "parses a v1 or v2 header through read/readexactly/readuntil",
             ("reader_func",)),
    Reliance(ProxyData, "__bool__", "true for a valid header", ("self",)),
    Reliance(ProxyData, "error", "why a header was refused"),
    Reliance(ProxyData, "src_addr", "the client address the balancer saw"),
)
