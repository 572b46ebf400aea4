"""The train/test independence check of R5: do any records appear in both?

Runs only where datasets carry a ``role`` in their ``dataset_registered`` params and the data
files can be re-loaded (their digests are re-checked as replay does). A record's digest is
``SHA-256(b"ledger/record/v1\\x00" + canonical([dtype, shape]) + the row's bytes)`` of one row of
the features array; the check counts the rows of each test-like dataset whose digest also occurs
in a training dataset — expected 0. Memory grows with the data checked, not with the run: each
content (by its verified digest) is loaded and digested once, however many datasets name it, and
at most MAX_PAIRS pairs are checked.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ledger.canonical import canonical
from ledger.datasets import load_dataset
from ledger.errors import LedgerError

RECORD_TAG = b"ledger/record/v1\x00"
TRAIN_ROLES = frozenset({"train", "training"})
TEST_ROLES = frozenset({"test", "testing", "validation", "valid", "holdout", "eval",
                        "evaluation"})
MAX_PAIRS = 10_000
"""Most (training, test) pairs checked and listed: a forged run can name its datasets many times
over, and the pairs grow with the product of their counts."""


def record_digests(features: np.ndarray) -> set[bytes]:
    """The digests of every row of ``features`` (see the module docstring)."""
    array = np.ascontiguousarray(features)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    array = array.astype(dtype, copy=False)
    prefix = RECORD_TAG + canonical([dtype.str, list(array.shape[1:])])
    rows = array.reshape(len(array), -1).view(np.uint8) if len(array) else array
    return {hashlib.sha256(prefix + row.tobytes()).digest() for row in rows}


def _role(body: dict[str, Any]) -> str | None:
    params = body.get("params")
    role = params.get("role") if isinstance(params, dict) else None
    return role.lower() if isinstance(role, str) else None


def independence(datasets: list[dict[str, Any]], data_dir: Any) -> dict[str, Any]:
    """The R5 independence check: status ``passed``, ``failed`` or ``not_checked`` with why."""
    train = [body for body in datasets if _role(body) in TRAIN_ROLES]
    test = [body for body in datasets if _role(body) in TEST_ROLES]
    if not train or not test:
        return {"status": "not_checked", "pairs": [],
                "reason": "no dataset roles recorded" if not any(map(_role, datasets))
                else "needs a training and a test (or validation) dataset"}
    if len(train) * len(test) > MAX_PAIRS:
        return {"status": "not_checked", "pairs": [],
                "reason": f"{len(train):,} training and {len(test):,} test datasets: more than "
                          f"{MAX_PAIRS:,} pairs to check"}
    try:
        records = _records_by_content(train + test, data_dir)
    except (LedgerError, KeyError, TypeError, ValueError) as error:
        return {"status": "not_checked", "pairs": [],
                "reason": f"data not available: {' '.join(str(error).split())}"}
    overlaps: dict[tuple[str, str], int] = {}
    pairs = []
    for test_body in test:
        test_content = test_body["params"]["loader"]["digest"]
        for train_body in train:
            content = (test_content, train_body["params"]["loader"]["digest"])
            if content not in overlaps:
                overlaps[content] = len(records[content[0]][1] & records[content[1]][1])
            pairs.append({"train": train_body["params"].get("name"),
                          "test": test_body["params"].get("name"), "overlap": overlaps[content],
                          "test_records": records[test_content][0]})
    failed = any(pair["overlap"] for pair in pairs)
    return {"status": "failed" if failed else "passed", "pairs": pairs,
            "reason": "records of a test dataset also occur in a training dataset" if failed
            else "no record occurs in both"}


def _records_by_content(datasets: list[dict[str, Any]], data_dir: Any
                        ) -> dict[str, tuple[int, set[bytes]]]:
    """(rows, record digests) of each dataset's content, by the content digest its loader
    records — which :func:`load_dataset` checks: a content several datasets name is loaded and
    digested once."""
    records: dict[str, tuple[int, set[bytes]]] = {}
    for body in datasets:
        loader = body["params"].get("loader")
        content = loader.get("digest") if isinstance(loader, dict) else None
        if not (isinstance(content, str) and content in records):
            features = load_dataset(loader, data_dir)[0]
            assert isinstance(content, str)  # load_dataset checked the content has this digest
            records[content] = (len(features), record_digests(features))
    return records
