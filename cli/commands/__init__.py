"""The ledger's commands; importing this package registers each on the ``cli`` group."""

from cli.commands import demo, diff, inspect, replay, verify  # noqa: F401
