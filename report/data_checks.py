"""The train/test independence check of R5: do any records appear in both?

Runs only where datasets carry a ``role`` in their ``dataset_registered`` params and the data
files can be re-loaded (their digests are re-checked as replay does). A record's digest is
``SHA-256(b"ledger/record/v1\\x00" + canonical([dtype, shape]) + the row's bytes)`` of one row of
the features array; the check counts the rows of each test-like dataset whose digest also occurs
in a training dataset — expected 0. Memory grows with the data checked, not with the run.
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
    try:
        loaded = {id(body): load_dataset(body["params"].get("loader"), data_dir)[0]
                  for body in train + test}
    except (LedgerError, KeyError, TypeError, ValueError) as error:
        return {"status": "not_checked", "pairs": [],
                "reason": f"data not available: {' '.join(str(error).split())}"}
    pairs = []
    for test_body in test:
        test_digests = record_digests(loaded[id(test_body)])
        for train_body in train:
            overlap = len(test_digests & record_digests(loaded[id(train_body)]))
            pairs.append({"train": train_body["params"].get("name"),
                          "test": test_body["params"].get("name"), "overlap": overlap,
                          "test_records": len(loaded[id(test_body)])})
    failed = any(pair["overlap"] for pair in pairs)
    return {"status": "failed" if failed else "passed", "pairs": pairs,
            "reason": "records of a test dataset also occur in a training dataset" if failed
            else "no record occurs in both"}
