"""The loop a worker process runs: seed itself, then make the batches it is asked for.

A worker attaches the dataset and its batch slots (shared memory), seeds its global RNGs from
``("worker", k)``, reports the digest of the seeded states, then answers tasks until told to stop
or until its pipe closes (the main process ended). Every message is msgpack bytes on a pipe:

- main → worker: ``[TASK, epoch, batch, slot]`` or ``[STOP]``;
- worker → main: ``{"ready": k, "pid": pid, "states": digest, "seeded": [...]}`` once, then
  ``[epoch, batch, slot, rows, indices digest, output digest, seed]`` per task (digests and
  seed None when not recording), or
  ``{"error": "Type: message", "traceback": text, "epoch": e, "batch": b}`` before exiting.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import select
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import msgpack

from ledger.augment import DataAugmenter
from ledger.batches import BatchMaker
from ledger.shm import SharedArray
from ledger.text import exception_message
from ledger.worker_seeding import seed_worker_process, seeded_libraries

TASK = 0
STOP = 1


def pack(message: Any) -> bytes:
    """Encode a message for the pipe."""
    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Decode a message from the pipe."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def worker_main(connection: Connection, config_bytes: bytes) -> None:
    """Entry point of worker processes (every start method); ``config_bytes`` is msgpack."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    config = unpack(config_bytes)
    attached: list[SharedArray] = []
    epoch = batch = None
    try:
        for module in config["modules"]:
            importlib.import_module(module)
        states = seed_worker_process(int.from_bytes(config["root"], "big"), config["worker"])
        maker, slots_x, slots_y = _attach(config, attached)
        connection.send_bytes(pack({"ready": config["worker"], "pid": os.getpid(),
                                    "states": states, "seeded": seeded_libraries()}))
        next_message = _receiver(connection)
        while True:
            message = next_message()
            if message is None:
                return  # the main process is gone
            if message[0] == STOP:
                return
            _, epoch, batch, slot = message
            y_out = None if slots_y is None else slots_y[slot]
            digests = maker.fill(epoch, batch, slots_x[slot], y_out)
            connection.send_bytes(pack([epoch, batch, slot, digests.rows, digests.indices,
                                        digests.output, digests.seed]))
            epoch = batch = None
    except BaseException as error:  # reported to the main process, which raises WorkerError
        report = {"error": f"{type(error).__name__}: {exception_message(error)}",
                  "traceback": traceback.format_exc(), "epoch": epoch, "batch": batch}
        try:
            connection.send_bytes(pack(report))
        except (OSError, ValueError):
            pass
        raise SystemExit(1) from None  # a failed worker exits non-zero
    finally:
        for shared in attached:
            shared.close()
        connection.close()


def _receiver(connection: Connection) -> Callable[[], Any]:
    """A function returning the next message, or None once the main process is gone.

    Waiting on the parent's sentinel as well as the pipe matters with ``fork``: a forked worker
    inherits the main process's end of its own pipe, so the pipe alone never reports EOF.
    """
    parent = multiprocessing.parent_process()
    sentinel = None if parent is None else parent.sentinel
    poller = None
    if sentinel is not None and hasattr(select, "poll"):
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN)
        poller.register(sentinel, select.POLLIN)
    fileno = connection.fileno()

    def receive() -> Any:
        try:
            if poller is not None:
                if not any(fd == fileno for fd, _mask in poller.poll()):
                    return None
            elif sentinel is not None:
                if connection not in wait([connection, sentinel]):
                    return None
            return unpack(connection.recv_bytes())
        except (EOFError, OSError):
            return None

    return receive


def _attach(config: dict[str, Any], attached: list[SharedArray]
            ) -> tuple[BatchMaker, Any, Any]:
    def attach(descriptor: dict[str, Any] | None) -> Any:
        if descriptor is None:
            return None
        shared = SharedArray.attach(descriptor)
        attached.append(shared)
        return shared.array

    features = attach(config["features"])
    labels = attach(config["labels"])
    slots_x = attach(config["slots_x"])
    slots_y = attach(config["slots_y"])
    spec = config["augmenter"]
    maker = BatchMaker(features, labels, root=int.from_bytes(config["root"], "big"),
                       augment_root=int.from_bytes(config["augment_root"], "big"),
                       batch_size=config["batch_size"], shuffle=config["shuffle"],
                       drop_last=config["drop_last"],
                       augmenter=None if spec is None else DataAugmenter.from_spec(spec),
                       record=config["record"])
    return maker, slots_x, slots_y
