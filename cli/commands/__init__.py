"""The ledger's commands; importing this package registers each on the ``cli`` group."""

from cli.commands import diff, inspect, replay, verify  # noqa: F401
