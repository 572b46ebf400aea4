"""Which code replay may run: built-in replayers, installed plug-ins, modules the user trusts.

A *replayer* re-executes the draw of one event kind and returns the digests it produced. Replay
never imports code because a ledger names it: it runs the built-in replayers, plug-ins installed
under the ``ledger.replayers`` entry-point group (installing a package is an act of trust), and
modules the user names with ``--trust MODULE``. Plug-ins and trusted modules register what they
bring when imported: augmenter ops (``ledger.register_op``), dataset loaders, user draw points
(``ledger.register_draw``) or whole replayers (:func:`register_replayer`). Anything else that a
ledger needs is refused with exit 3 and a message saying how to allow it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import CannotReplayError

if TYPE_CHECKING:
    from replay.context import ReplayContext

ENTRY_POINT_GROUP = "ledger.replayers"
TRUSTED_CODE_ERRORS = (Exception, SystemExit)
"""What code replay runs but does not own — a plug-in, a ``--trust`` module, an op, draw,
loader or replayer they register — may raise and replay turns into exit 3 naming it: a
``sys.exit`` too, which escaping would end the command with its code and no verdict (exit 0
reading as a certificate). Ctrl-C (KeyboardInterrupt) stays an interruption."""


@dataclass(frozen=True, slots=True)
class Redraw:
    """What re-executing a draw produced: the digests to compare with the recorded ones."""

    output: bytes | None
    input: bytes | None = None


Replayer = Callable[["ReplayContext", dict[str, Any]], Redraw]
_replayers: dict[str, Replayer] = {}


def register_replayer(kind: str) -> Callable[[Replayer], Replayer]:
    """Register ``function(context, body) -> Redraw`` as the replayer of events of ``kind``."""

    def decorate(function: Replayer) -> Replayer:
        _replayers[kind] = function
        return function

    return decorate


def replayer_for(kind: str) -> Replayer | None:
    """The replayer registered for ``kind``, if any."""
    _load_builtins()
    return _replayers.get(kind)


def _load_builtins() -> None:
    import replay.replayers  # noqa: F401 - registers the built-in replayers


def hint() -> str:
    """How a user allows more code, for error messages."""
    return (f"install the package that provides it (entry-point group {ENTRY_POINT_GROUP!r}) "
            f"or name its module with --trust MODULE")


@functools.lru_cache(maxsize=4)
def _installed_plugins(search_path: tuple[str, ...]) -> tuple[metadata.EntryPoint, ...]:
    """The ``ledger.replayers`` entry points installed on ``search_path``.

    Finding them reads every installed distribution's metadata (milliseconds), so the answer
    is kept per ``sys.path``: a process that replays many runs looks once. A package installed
    into the running process without changing ``sys.path`` is seen by the next process.
    """
    return tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(trusted: Iterable[str] = ()) -> list[str]:
    """Import installed plug-ins and the modules the user trusts; return what was loaded.

    A trusted name must be a plain dotted module name (never a path or ``module:attr``); a
    plug-in or module that cannot be imported — that raises, or calls ``sys.exit``, as it
    loads — raises CannotReplayError.
    """
    _load_builtins()
    loaded = []
    for entry in _installed_plugins(tuple(sys.path)):
        try:
            target = entry.load()
            if callable(target) and not isinstance(target, type):
                target()
        except TRUSTED_CODE_ERRORS as error:  # a broken plug-in must not pass silently
            raise CannotReplayError(f"replay plug-in {entry.name!r} ({entry.value}) failed to "
                                    f"load: {import_failure(error)}") from None
        loaded.append(f"plugin:{entry.name}")
    for name in trusted:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise CannotReplayError(f"--trust takes a dotted module name, got {name!r}")
        try:
            importlib.import_module(name)
        except TRUSTED_CODE_ERRORS as error:
            raise CannotReplayError(f"cannot import trusted module {name}: "
                                    f"{import_failure(error)}{_not_searched(name, error)}"
                                    ) from None
        loaded.append(f"trusted:{name}")
    return loaded


def import_failure(error: BaseException) -> str:
    """``error`` of an import as one line (``ModuleNotFoundError: No module named …``); when a
    package of the missing module's top-level name was imported from somewhere that lacks it —
    a project's own ``examples/__init__.py`` ahead of the installed ``examples`` on
    ``sys.path`` (the current folder, ``PYTHONPATH``) — the line names that package's file."""
    text = f"{type(error).__name__}: {error}"
    missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    if not missing or "." not in missing:
        return text
    top = missing.partition(".")[0]
    where = getattr(sys.modules.get(top), "__file__", None)
    if not isinstance(where, str):  # not imported, or a namespace package: nothing hides it
        return text
    return (f"{text}: the package {top!r} was imported from {where}, which has no {missing!r} "
            f"(a package of that name earlier on sys.path — the current folder, PYTHONPATH — "
            f"hides the installed one)")


def _not_searched(name: str, error: BaseException) -> str:
    """A hint when a trusted module that cannot be found lies in the current folder: the
    ``ledger`` script does not search it (``sys.path`` starts at the script's own folder, unlike
    ``python -m``), and replay adds no folder to where it imports from."""
    top = name.partition(".")[0]
    if not isinstance(error, ModuleNotFoundError) or error.name != top:
        return ""
    here = Path.cwd()
    if not ((here / f"{top}.py").is_file() or (here / top).is_dir()):
        return ""
    return (f" ({top!r} is in the current folder, which the ledger command does not search: "
            f"PYTHONPATH=. ledger … --trust {name})")
