"""mailpipe: a plugin-based mail archiving pipeline."""

import pluggy

__version__ = "0.1.0"

#: Mark plugin functions with ``@mailpipe.hookimpl``.
hookimpl = pluggy.HookimplMarker("mailpipe")

__all__ = ["hookimpl", "__version__"]
