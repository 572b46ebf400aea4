"""The ledger's commands; importing this package registers each on the ``cli`` group."""

from cli.commands import (demo, diff, inspect, keygen, replay, report, verify,  # noqa: F401
                          verify_report)
