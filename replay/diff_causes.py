"""The words of ``ledger diff``'s causes: why two runs' events differ, beyond the digests.

Which session recorded an event and how its environment differs from the other run's
(*same seed, different output*), which epoch each run had drawn when it logged a metric
(*epochs out of step*), the params a draw was made with (*parameters differ*), how each run
ended (*status differs*) and a dataset registered under another name. :mod:`replay.diff`
decides the cause; this module words it, and imports nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ledger.events import EPOCH_RESET
from ledger.json_view import json_view
from replay.causes import Cause, explain_output


class Recorded(Protocol):
    """What the wording reads of one run's side of an event (a ``replay.diff.EventSide``)."""

    @property
    def stream(self) -> str: ...

    @property
    def session(self) -> int: ...

    @property
    def drawn_epoch(self) -> Any: ...

    @property
    def resumed_seq(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Session:
    """A session that recorded part of a run: where it began and the environment it recorded."""

    environment: Any
    resumed_at: str | None = None
    """``stream#seq`` of the ``run_resumed`` that began it; None for the creating session."""
    code: Any = None
    """The code version it recorded."""


class Explanation:
    """The words of a *same seed, different output*: how the environments of the sessions that
    recorded the two events differ — a run resumed under another numpy drew its later events
    with it, which comparing the creating sessions' environments alone called "the same library
    versions" (worded once per pair of sessions)."""

    def __init__(self, exp_a: str, sessions_a: list[Session], exp_b: str,
                 sessions_b: list[Session]) -> None:
        self.runs = ((exp_a, sessions_a), (exp_b, sessions_b))
        self.worded: dict[tuple[int, int], str] = {}

    def __call__(self, a: Recorded, b: Recorded) -> str:
        """The explanation for the events ``a`` and ``b``, by the sessions that recorded them."""
        key = (a.session, b.session)
        if key not in self.worded:
            (exp_a, sessions_a), (exp_b, sessions_b) = self.runs
            first, second = sessions_a[a.session], sessions_b[b.session]
            self.worded[key] = explain_output(first.environment, second.environment,
                                              (in_session(exp_a, first),
                                               in_session(exp_b, second)))
        return self.worded[key]


def in_session(exp: str, session: Session) -> str:
    """``in exp-a``, or ``in exp-a's session resumed at main#9``."""
    if session.resumed_at is None:
        return f"in {exp}"
    return f"in {exp}'s session resumed at {session.resumed_at}"


def ending(status: str, error: Any) -> str:
    """How a run ended, in words: ``completed ok``, ``failed (ValueError: …)``, ``is
    incomplete (no run_completed)``; ``error`` is what its ``run_completed`` recorded. A run that
    failed is not the same run as one that completed ok, however alike their events: its status
    is what the run recorded last."""
    if status == "incomplete":
        return "is incomplete (no run_completed)"
    shown = "" if error is None else f" ({json_view(error)})"
    return f"completed {status}{shown}" if status == "ok" else f"{status}{shown}"


def renamed_note(digest: Any, other: str, datasets: dict[str, Any]) -> str | None:
    """``; OTHER registered the same content as 'NAME': a dataset renamed`` when run ``other``
    registered a dataset of ``digest`` (its ``datasets``: name to digest) under another name,
    else None: a dataset one run lacks read only "the other run has no such event", as if the
    runs had trained on other data."""
    names = [name for name, registered in datasets.items()
             if digest is not None and registered == digest]
    if not names:
        return None
    return f"; {other} registered the same content as {names[0]!r}: a dataset renamed"


def unseeded_cause(config: list[tuple[str, Any, Any]]) -> tuple[Cause, str] | None:
    """The cause of a differing event with no seed of its own (a metric, a checkpoint) that the
    runs' configurations explain, from their differences: other root seeds, from which all
    their draws derive, or other hyperparameters, which training follows. None when neither
    differs: such an event is then *same seed, different output*."""
    if any(key == "root_seed" for key, _a, _b in config):
        return Cause.SEED, ("the runs have different root seeds, from which all their draws "
                            "derive (this event has no seed of its own)")
    hyperparams = [key for key, _a, _b in config
                   if key == "hyperparams" or key.startswith("hyperparams.")]
    if hyperparams:
        return Cause.PARAMS, (f"the runs have different hyperparameters ({', '.join(hyperparams)})"
                              f" (this event has no seed of its own)")
    return None


def out_of_step(a: Recorded, b: Recorded) -> bool:
    """Whether two runs logged a metric or checkpoint after drawing different epochs."""
    return None not in (a.drawn_epoch, b.drawn_epoch) and a.drawn_epoch != b.drawn_epoch


def epochs_detail(aligned: tuple[Any, ...], a: Recorded, b: Recorded,
                  names: tuple[str, str]) -> str:
    """The detail of *epochs out of step*: which epoch each run had drawn when it logged the
    event and, when the event's own epoch label matches one run's, that the other run's loop
    labels its epochs behind (or ahead of) the data it trains on — after a resume, the loop of
    a resumed run restarted at the epoch it saved instead of the iterator's ``next_epoch``
    (README, Preemption), which trains one epoch more than the uninterrupted run."""
    (name_a, name_b), label = names, aligned[2] if len(aligned) > 2 else None
    detail = (f"{name_a} logged it after drawing epoch {a.drawn_epoch}, {name_b} after drawing "
              f"epoch {b.drawn_epoch}: the runs' training loops label their epochs differently")
    sides = [(name, side, other) for name, side, other in ((name_a, a, b), (name_b, b, a))
             if side.drawn_epoch != label and other.drawn_epoch == label]
    if not sides or type(label) is not int or type(sides[0][1].drawn_epoch) is not int:
        return detail
    name, side, _other = sides[0]
    gap = side.drawn_epoch - label
    detail += (f"; {name}'s loop labels its epochs {abs(gap)} "
               f"{'behind' if gap > 0 else 'ahead of'} the data it trained on")
    if side.resumed_seq is not None:
        detail += (f", since its resume (run_resumed {side.stream}#{side.resumed_seq}): a loop "
                   f"restarted at the epoch it saved rather than at the iterator's next_epoch "
                   f"trains an epoch more than the uninterrupted run")
    return detail


def params_detail(kind: str, same_output: bool, keys: list[str]) -> str:
    """The detail of a draw made with other params, naming them (``keys``) when known."""
    if kind == EPOCH_RESET and same_output:
        settings = ", ".join(keys) or "batch_size, drop_last, dataset, …"
        return (f"the same order batched with other settings ({settings}): the epochs' "
                f"batches differ")
    named = f" ({', '.join(keys)})" if keys else ""
    return f"the draw was made with other params{named}, so its output differs"
