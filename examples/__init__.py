"""Example applications of the ledger; ``examples.fraud`` is the scenario behind ``ledger demo``."""
