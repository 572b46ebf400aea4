"""One exception hierarchy for the whole project.

Every error a user can cause derives from :class:`LedgerError` and carries the process exit code
the command line maps it to (DESIGN §5): ``1`` a check failed, ``2`` bad input, ``3`` cannot
replay. Driver errors (sqlite3, psycopg) are translated at the store boundary, so no caller ever
imports a driver to catch something.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code: int = 2


class BadInputError(LedgerError, ValueError):
    """Input that is not of the documented form: a malformed id, path, value or file."""

    exit_code = 2


class EncodingError(BadInputError):
    """A value that canonical encoding (DESIGN §2) refuses: unknown type, non-str key, big int."""


class InvalidIdError(BadInputError):
    """An experiment id or stream name that does not match its documented pattern."""


class UnknownExperimentError(BadInputError):
    """An experiment id that the ledger does not hold."""


class StoreError(LedgerError):
    """The database cannot be used: missing, unreadable, not a ledger, newer schema, unreachable."""

    exit_code = 2


class ConcurrentWriteError(StoreError):
    """Another writer appended to the same stream: refused rather than forking the chain."""


class StreamClaimedError(ConcurrentWriteError):
    """A writer opened a stream that another writer holds open: refused at open, never forked."""


class AppendOnlyError(StoreError):
    """The database refused to change or remove a recorded event (append-only triggers)."""


class ResourceError(LedgerError):
    """The machine lacks what the work needs: shared memory in ``/dev/shm``, file descriptors."""

    exit_code = 2


class StateAheadError(BadInputError):
    """An iterator state past what a resumed run recorded: resuming from it would leave a hole.

    Raised before the resumed run did anything, so leaving its ``with`` block on this error
    suspends the run (still resumable) instead of completing it as failed."""


class ForeignStateError(BadInputError):
    """An iterator state saved by a run other than the resumed one or the run it continues:
    nothing in this run's record says where such a state stands, so it cannot be checked.

    Like :class:`StateAheadError`, leaving the resumed run's ``with`` block on it suspends the
    run (still resumable) instead of completing it as failed."""


class CheckFailedError(LedgerError):
    """A verification found a tampered, missing or misplaced event."""

    exit_code = 1


class CannotReplayError(LedgerError):
    """Replay cannot run: missing data or code, an import that was not allowed, a mismatch."""

    exit_code = 3
