"""The ledger's commands; importing this package registers each on the ``cli`` group."""

from cli.commands import inspect, verify  # noqa: F401
