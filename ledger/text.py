"""Showing text that is not ours: escaped where it could drive a terminal or a page, and
another library's error quoted on one line.

Names, statuses, kinds and environments come from ledgers someone else wrote, and exceptions
from numpy, torch or a driver carry their own line breaks; the CLI, the reports and our own
error messages show both through these helpers.
"""

from __future__ import annotations


def escape_unprintable(text: str, keep: str = "") -> str:
    """``text`` with each character that is not printable (``\\x1b``, ``\\n``, bidi controls …)
    shown as its Python escape, except those in ``keep``."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() or character in keep
                   else ascii(character)[1:-1] for character in text)


def exception_message(error: BaseException) -> str:
    """``str(error)``, or ``<exception str() failed>`` (as Python's tracebacks show it) when the
    exception's own ``__str__`` raises: the error being reported must not be lost to that one."""
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - any failure of user code's __str__
        return "<exception str() failed>"


def error_text(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters: for quoting another
    library's error inside one of ours."""
    return " ".join(exception_message(error).split())[:limit]


def run_error(error: BaseException, limit: int = 500) -> str:
    """The ``error`` a failed run records: ``Type: message`` on one line (``Type`` alone when
    the message is empty, as a bare ``KeyboardInterrupt`` has), cut to ``limit`` characters."""
    message = " ".join(exception_message(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_summary(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception on one line (``Type`` alone when it says nothing)."""
    detail = error_text(error, limit)
    return f"{type(error).__name__}{': ' + detail if detail else ''}"


def quoted(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (``…`` marks the cut): for naming a
    value from a ledger inside one of our messages — a forged name or config can be megabytes,
    and an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def is_sendable_text(value: object) -> bool:
    """True for a str a database driver can send back as a parameter: not a tampered TEXT
    column's invalid UTF-8, which reads back with its bytes escaped as surrogates."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
