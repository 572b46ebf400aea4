"""The fraud-detection scenario of the bug report, end to end: ``ledger demo`` runs it.

``dataset`` generates the synthetic ``dataset-fraud-2024Q1``; ``model`` is the numpy MLP
``fraud-detection-v3``; ``train`` trains it through the ledger's trainer hooks; ``legacy`` holds
the original bug (an augmenter that ignores its seed) for ``--inject-nondeterminism``; ``demo``
trains twice and compares the runs.
"""
