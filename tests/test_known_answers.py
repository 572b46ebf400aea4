"""Known-answer vectors: tests/known_answers.json, from an independent implementation of DESIGN §1–3.

Every vector is reproduced exactly: seeds, the generator of a path, canonical bytes, array
digests, event canonical bytes and hashes.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ledger.canonical import canonical
from ledger.digests import array_digest, event_hash
from ledger.events import Event, body_map, decode_body, make_event
from ledger.seeds import derive, derive_bytes, generator

VECTORS = json.loads((Path(__file__).parent / "known_answers.json").read_text())
_NAMESPACE = {"__builtins__": {}, "np": np, "numpy": np}


def evaluate(expression: str) -> Any:
    """A vector's value, written as a Python expression (literals, or numpy constructors)."""
    try:
        return ast.literal_eval(expression)
    except ValueError:
        return eval(expression, dict(_NAMESPACE))  # noqa: S307 - our own test data, no builtins


def test_every_section_has_vectors() -> None:
    assert {"seeds", "generator", "canonical", "arrays", "events"} <= set(VECTORS)
    assert len(VECTORS["seeds"]) >= 10 and len(VECTORS["canonical"]) >= 20
    assert len(VECTORS["arrays"]) >= 10 and len(VECTORS["events"]) >= 2


@pytest.mark.parametrize("vector", VECTORS["seeds"],
                         ids=lambda v: f"{v['root'][:6]}-{'.'.join(map(str, v['path']))}")
def test_seed_vectors(vector: dict[str, Any]) -> None:
    root, path = int(vector["root"]), tuple(vector["path"])
    assert derive_bytes(root, path).hex() == vector["derived_hex"]
    assert derive(root, path) == int(vector["derived"])


def test_generator_vector() -> None:
    vector = VECTORS["generator"]
    name, arguments = re.fullmatch(r"(\w+)\((.*)\)", vector["call"]).groups()
    draw = getattr(generator(int(vector["root"]), tuple(vector["path"])), name)
    result = draw(*ast.literal_eval(f"({arguments},)"))
    assert result.tolist() == vector["result"]


@pytest.mark.parametrize("vector", VECTORS["canonical"], ids=lambda v: v["value"][:30])
def test_canonical_vectors(vector: dict[str, Any]) -> None:
    assert canonical(evaluate(vector["value"])).hex() == vector["canonical_hex"]


def array_of(expression: str) -> np.ndarray:
    zero_d = expression.endswith(" (0-d)")
    value = np.asarray(evaluate(expression.removesuffix(" (0-d)")))
    assert (value.ndim == 0) == zero_d
    return value


@pytest.mark.parametrize("vector", VECTORS["arrays"], ids=lambda v: v["array"][:40])
def test_array_vectors(vector: dict[str, Any]) -> None:
    assert array_digest(array_of(vector["array"])).hex() == vector["digest"]


def vector_body(vector: dict[str, Any]) -> dict[str, Any]:
    body = dict(vector["body"])
    for name in vector["bytes_fields"]:
        body[name] = bytes.fromhex(body[name])
    return body


def vector_event(vector: dict[str, Any]) -> Event:
    body = vector_body(vector)
    return make_event(body["exp"], body["stream"], body["seq"], body["kind"], path=body["path"],
                      seed=body["seed"], params=body["params"], input=body["input"],
                      output=body["output"], meta=body["meta"], prev=body["prev"], t=body["t"])


@pytest.mark.parametrize("vector", VECTORS["events"], ids=lambda v: v["body"]["kind"])
def test_event_vectors(vector: dict[str, Any]) -> None:
    body = vector_body(vector)
    assert canonical(body).hex() == vector["canonical_hex"]
    assert event_hash(body).hex() == vector["hash"]
    event = vector_event(vector)
    assert event.body.hex() == vector["canonical_hex"]
    assert event.hash.hex() == vector["hash"]
    assert decode_body(event.body) == body
    assert canonical(event.body_map()) == event.body
    assert canonical(body_map(*[body[name] for name in (
        "exp", "stream", "seq", "kind", "path", "seed", "params", "input", "output", "meta",
        "prev", "t")])) == event.body


def test_event_vectors_form_a_chain_with_derived_seeds() -> None:
    first, second = (vector_event(vector) for vector in VECTORS["events"])
    assert first.prev == bytes(32)
    assert second.prev == first.hash
    assert first.seed == derive_bytes(42, first.path)
