"""Persistence: opening a ledger database, its schema, reads, and the stream writer."""

from ledger.store.connect import DEFAULT_URL, URL_ENV, resolve_url
from ledger.store.schema import SCHEMA_VERSION
from ledger.store.store import ExperimentRow, Store, StreamHead
from ledger.store.writer import StreamWriter

__all__ = ["DEFAULT_URL", "SCHEMA_VERSION", "URL_ENV", "ExperimentRow", "Store", "StreamHead",
           "StreamWriter", "resolve_url"]
