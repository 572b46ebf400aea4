"""The ``ledger`` command line: parses, calls ledger/ and replay/, formats; no logic of its own."""

import os
import signal
import sys


def _aborted_while_starting(_signal: int, _frame: object) -> None:
    """Ctrl-C while the command's modules load (numpy, SQLAlchemy: about half a second): the
    documented line and exit 130, not a KeyboardInterrupt traceback through the imports.
    :func:`cli.main.main` puts Python's own handler back before any work starts."""
    os.write(2, b"ledger: aborted\n")
    os._exit(130)


# Only when this process is the `ledger` command (or `python -m cli`, whose argv[0] is "-m"
# while the package loads) and Ctrl-C has Python's own handler: a program importing the package
# keeps its own, and a command started with SIGINT ignored (`ledger … &` in a script) keeps
# ignoring it.
if ((os.path.basename(sys.argv[0]) == "ledger" or sys.argv[0] == "-m")
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, _aborted_while_starting)
