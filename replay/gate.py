"""Verification as the gate of a replay: nothing is reported about a ledger that fails it.

Replay may prepare (re-load datasets, start workers, even re-execute draws) before its chains are
verified, but every outcome passes :meth:`VerificationGate.check` first: a verdict, a divergence
and an error alike. When verification fails, its finding is what replay reports (exit 1) —
whatever else went wrong with the tampered ledger on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ledger.errors import CheckFailedError, StoreError
from ledger.store.store import Store
from ledger.verify import verify


class VerificationGate:
    """Verifies ``exp``'s chains once, when first asked; raises its finding on every check."""

    def __init__(self, store: Store, exp: str) -> None:
        self.store = store
        self.exp = exp
        self._finding: str | None = None
        self._checked = False

    def check(self) -> None:
        """Verify (the first time); raise CheckFailedError when the ledger fails verification."""
        if not self._checked:
            report = verify(self.store, self.exp)
            self._checked = True
            if not report.ok:
                self._finding = report.findings[0].describe()
        if self._finding is not None:
            raise CheckFailedError(f"ledger fails verification, not replayed: {self._finding}")

    @contextmanager
    def guarding(self) -> Iterator["VerificationGate"]:
        """A block whose errors are reported only once the ledger verifies (see module doc) —
        except a StoreError: a ledger that cannot be read (a table another session locks, a
        lost server) cannot be verified either, and trying made the command wait out the
        same lock twice before saying so."""
        try:
            yield self
        except StoreError:
            raise
        except Exception:
            self.check()
            raise
        self.check()
