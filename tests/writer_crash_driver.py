"""A child process for the writer crash check: it appends planned events to two streams of an
experiment and flushes at planned points, until it is killed.

Run as ``python writer_crash_driver.py URL EXP SEED``. What it appends, with which writer options
and where it flushes, is :func:`planned_events` of ``SEED`` — so the harness, which kills it at a
random moment, knows every event it would have written, byte for byte. It prints
``durable STREAM SEQ`` each time a flush has returned (the writer's acknowledgement that every
event of STREAM up to SEQ is durable), and ``done`` once it closed its writers.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

from ledger.events import Event, make_event
from ledger.store import Store, StreamWriter

STREAMS = ("main", "worker-0")
EVENTS = 4000
FLUSH_CHANCE = 0.03


@dataclass(frozen=True)
class Step:
    """Append ``event`` to ``stream`` (with these ``fields``), or flush it (``event`` None)."""

    stream: str
    fields: dict[str, Any] | None = None
    event: Event | None = None


@dataclass(frozen=True)
class Plan:
    """Each stream's writer options, and the steps in order."""

    options: dict[str, dict[str, Any]]
    steps: list[Step]

    def events(self, stream: str) -> list[Event]:
        """The events the driver appends to ``stream``, in order."""
        return [step.event for step in self.steps if step.stream == stream and step.event]


def planned_events(exp: str, seed: int, heads: dict[str, tuple[int, bytes]]) -> Plan:
    """What the driver does for ``seed``, given each stream's (next seq, head) at its start."""
    rng = random.Random(seed)
    options = _options(rng)
    positions = dict(heads)
    steps = []
    for n in range(EVENTS):
        stream = rng.choice(STREAMS)
        if rng.random() < FLUSH_CHANCE:
            steps.append(Step(stream))
            continue
        fields = {"kind": rng.choice(["metric", "user_draw", "epoch_reset", "custom_draw"]),
                  "path": [rng.choice(["epoch", "batch", "x"]), n],
                  "seed": rng.randbytes(16) if rng.random() < 0.5 else None,
                  "params": {"n": n, "x": rng.random(), "s": rng.randbytes(4).hex(),
                             "nested": {"k": [rng.randint(-2**63, 2**64 - 1)]}},
                  "output": rng.randbytes(32) if rng.random() < 0.5 else None,
                  "meta": {"pid": 1}, "t": 1_800_000_000 * 10**9 + n}
        seq, head = positions[stream]
        event = make_event(exp, stream, seq, prev=head, **fields)
        positions[stream] = (seq + 1, event.hash)
        steps.append(Step(stream, fields, event))
    return Plan(options, steps)


def _options(rng: random.Random) -> dict[str, dict[str, Any]]:
    """Each stream's writer options: the first draws of a plan's generator."""
    return {stream: {"batch_size": rng.randint(1, 64), "write_behind": rng.random() < 0.5,
                     "flush_interval": rng.choice([None, 0.005, 0.05])} for stream in STREAMS}


def main(url: str, exp: str, seed: int) -> None:
    store = Store.open(url)
    options = _options(random.Random(seed))
    writers = {stream: StreamWriter(store, exp, stream, **options[stream]) for stream in STREAMS}
    plan = planned_events(exp, seed, {stream: (writer.next_seq, writer.head)
                                      for stream, writer in writers.items()})
    for step in plan.steps:
        writer = writers[step.stream]
        if step.event is None:
            print(f"durable {step.stream} {writer.flush()}", flush=True)
        else:
            assert step.fields is not None
            assert writer.append(**step.fields).hash == step.event.hash
    for writer in writers.values():
        writer.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
