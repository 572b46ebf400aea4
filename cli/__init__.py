"""The ``ledger`` command line: parses, calls ledger/ and replay/, formats; no logic of its own."""
