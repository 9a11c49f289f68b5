"""``python -m mailpipe``: the same command line as the ``mailpipe`` script.

For hosts where the script's directory is not on PATH (a venv not
activated, ``pipx run``, a container's entry point): the interpreter alone
is enough.
"""

import sys

from mailpipe.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
