"""The train/test independence check of R5: do any records appear in both?

Runs only where datasets carry a ``role`` in their ``dataset_registered`` params and the data
files can be re-loaded (their digests are re-checked as replay does). Roles are read trimmed and
in lower case: ``train``/``training`` on one side; ``test``, ``testing``, ``validation``,
``valid``, ``val``, ``dev``, ``development``, ``holdout``, ``held-out``, ``eval``,
``evaluation`` on the other. A dataset with any other role is not checked, and the check then
says so rather than pass.

A record's digest is ``SHA-256(b"ledger/record/v1\\x00" + canonical([dtype, shape]) + the row's
bytes)`` of one row of the features array, its values first widened to one dtype per kind
(floats to float64, integers and booleans to int64), so that the same rows stored as float32 in
one dataset and float64 in another are the same records. The check counts the rows of each
test-like dataset (every row, repeats included) whose digest also occurs in a training dataset —
expected 0. Memory grows with the data checked, not with the run: each content (by its verified
digest) is loaded and digested once, however many datasets name it, and at most MAX_PAIRS
pairs are checked.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np

from ledger.canonical import canonical
from ledger.datasets import load_dataset
from ledger.errors import LedgerError

RECORD_TAG = b"ledger/record/v1\x00"
TRAIN_ROLES = frozenset({"train", "training"})
TEST_ROLES = frozenset({"test", "testing", "validation", "valid", "val", "dev", "development",
                        "holdout", "held-out", "eval", "evaluation"})
MAX_PAIRS = 10_000
"""Most (training, test) pairs checked and listed: a forged run can name its datasets many times
over, and the pairs grow with the product of their counts."""


def record_digests(features: np.ndarray) -> Counter[bytes]:
    """How many rows of ``features`` have each record digest (see the module docstring)."""
    array = np.ascontiguousarray(features)
    kind = array.dtype.kind
    dtype = (np.dtype("<f8") if kind == "f" else np.dtype("<i8") if kind in "iub"
             else array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
    array = array.astype(dtype, copy=False)
    prefix = RECORD_TAG + canonical([dtype.str, list(array.shape[1:])])
    rows = array.reshape(len(array), -1).view(np.uint8) if len(array) else array
    return Counter(hashlib.sha256(prefix + row.tobytes()).digest() for row in rows)


def _role(body: dict[str, Any]) -> str | None:
    params = body.get("params")
    role = params.get("role") if isinstance(params, dict) else None
    return role.strip().lower() if isinstance(role, str) else None


def independence(datasets: list[dict[str, Any]], data_dir: Any) -> dict[str, Any]:
    """The R5 independence check: status ``passed``, ``failed`` or ``not_checked`` with why."""
    roles = [(body, _role(body)) for body in datasets]
    train = [body for body, role in roles if role in TRAIN_ROLES]
    test = [body for body, role in roles if role in TEST_ROLES]
    unknown = [body for body, role in roles
               if role is not None and role not in TRAIN_ROLES | TEST_ROLES]
    if not train or not test:
        return {"status": "not_checked", "pairs": [],
                "reason": "no dataset roles recorded" if not any(role for _b, role in roles)
                else "needs a training and a test (or validation) dataset"
                + (f"; {_unknown_note(unknown)}" if unknown else "")}
    if len(train) * len(test) > MAX_PAIRS:
        return {"status": "not_checked", "pairs": [],
                "reason": f"{len(train):,} training and {len(test):,} test datasets: more than "
                          f"{MAX_PAIRS:,} pairs to check"}
    try:
        records = _records_by_content(train + test, data_dir)
    except KeyError as error:  # a forged dataset_registered: its loader lacks a field
        return {"status": "not_checked", "pairs": [],
                "reason": f"data not available: a recorded loader has no field {error}"}
    except (LedgerError, TypeError, ValueError) as error:
        return {"status": "not_checked", "pairs": [],
                "reason": f"data not available: {' '.join(str(error).split())}"}
    overlaps: dict[tuple[str, str], int] = {}
    pairs = []
    for test_body in test:
        test_content = test_body["params"]["loader"]["digest"]
        for train_body in train:
            content = (test_content, train_body["params"]["loader"]["digest"])
            if content not in overlaps:
                test_rows, training = records[content[0]][1], records[content[1]][1]
                overlaps[content] = sum(count for digest, count in test_rows.items()
                                        if digest in training)
            pairs.append({"train": train_body["params"].get("name"),
                          "test": test_body["params"].get("name"), "overlap": overlaps[content],
                          "test_records": records[test_content][0]})
    if any(pair["overlap"] for pair in pairs):
        return {"status": "failed", "pairs": pairs,
                "reason": "records of a test dataset also occur in a training dataset"}
    if unknown:
        return {"status": "not_checked", "pairs": pairs,
                "reason": f"no record of the test datasets occurs in the training ones, but "
                          f"{_unknown_note(unknown)}"}
    return {"status": "passed", "pairs": pairs, "reason": "no record occurs in both"}


def _unknown_note(unknown: list[dict[str, Any]]) -> str:
    """Which datasets carry a role the check does not know (so were not checked)."""
    named = ", ".join(f"{body['params'].get('name')!r} ({body['params'].get('role')!r})"
                      for body in unknown[:5]) + (" …" if len(unknown) > 5 else "")
    return (f"dataset(s) {named} carry a role the check does not know, so were not checked "
            f"(train or training; test, validation, val, dev, holdout, eval, …)")


def _records_by_content(datasets: list[dict[str, Any]], data_dir: Any
                        ) -> dict[str, tuple[int, Counter[bytes]]]:
    """(rows, record digests) of each dataset's content, by the content digest its loader
    records — which :func:`load_dataset` checks: a content several datasets name is loaded and
    digested once."""
    records: dict[str, tuple[int, Counter[bytes]]] = {}
    for body in datasets:
        loader = body["params"].get("loader")
        content = loader.get("digest") if isinstance(loader, dict) else None
        if not (isinstance(content, str) and content in records):
            features = load_dataset(loader, data_dir)[0]
            assert isinstance(content, str)  # load_dataset checked the content has this digest
            records[content] = (len(features), record_digests(features))
    return records
