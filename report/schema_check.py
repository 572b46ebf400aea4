"""Checking a report against the JSON Schema the project ships (``schemas/report.v1.json``).

``ledger verify-report`` must fail a report that does not match its own schema — an R0
``report_id`` of arbitrary text, a section missing a field, a count that is text — signed or
not. The project has no JSON Schema library at run time (``jsonschema`` is a test dependency),
so this module evaluates the keywords that schema uses (JSON Schema 2020-12): ``type``,
``const``, ``enum``, ``pattern``, ``minLength``, ``minimum``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``prefixItems``, ``minItems``, ``maxItems``, ``anyOf``,
``oneOf`` and local ``$ref``. A schema using any other keyword is refused when loaded, so a
keyword added to the schema later cannot be skipped without a word;
``tests/test_report_schema_check.py`` holds it to ``jsonschema``'s verdicts. The schema is read
from ``report/schemas/``, a link to the repository's ``schemas/`` that a wheel carries as package
data, so an installed copy checks as a checkout does; without it, verification stops with
BadInputError (exit 2) rather than skip the check.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "report.v1.json"
"""The report's schema: ``report/schemas`` links to the top-level ``schemas/`` in a checkout and is
a copy of it in an installed wheel."""

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
_KEYWORDS = frozenset({"type", "const", "enum", "pattern", "minLength", "minimum", "properties",
                       "required", "additionalProperties", "items", "prefixItems", "minItems",
                       "maxItems", "anyOf", "oneOf", "$ref"})
_TYPES: dict[str, Any] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


class SchemaError(Exception):
    """The schema file is missing, unreadable, or uses a keyword this module does not check."""


@functools.cache
def report_schema() -> dict[str, Any]:
    """The parsed report schema; SchemaError when it cannot be read or uses an unknown
    keyword."""
    try:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SchemaError(f"cannot read the report schema {SCHEMA_PATH}: {error}") from None
    _check_keywords(schema, "#")
    return schema


def _check_keywords(schema: Any, where: str) -> None:
    """Refuse a keyword this module would not evaluate (it would pass anything)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"the report schema at {where} is not a schema")
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise SchemaError(f"the report schema uses {sorted(unknown)} at {where}, which "
                          f"report.schema_check does not evaluate")
    for key in ("properties", "$defs"):
        for name, sub in schema.get(key, {}).items():
            _check_keywords(sub, f"{where}/{key}/{name}")
    for key in ("additionalProperties", "items"):
        if key in schema:
            _check_keywords(schema[key], f"{where}/{key}")
    for key in ("prefixItems", "anyOf", "oneOf"):
        for index, sub in enumerate(schema.get(key, [])):
            _check_keywords(sub, f"{where}/{key}/{index}")


def schema_errors(document: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Every place ``document`` does not match ``schema`` (the report schema by default), as
    ``PATH: what is wrong`` lines in document order; empty when it matches."""
    root = report_schema() if schema is None else schema
    return list(_errors(document, root, root, ""))


def _errors(value: Any, schema: Any, root: dict[str, Any], path: str) -> Iterator[str]:
    if schema is True:
        return
    if schema is False:
        yield f"{_at(path)}: not allowed"
        return
    if "$ref" in schema:
        yield from _errors(value, _resolve(root, schema["$ref"]), root, path)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[name](value) for name in names):
            yield f"{_at(path)}: {_shown(value)} is not of type {' or '.join(names)}"
            return
    if "const" in schema and not _same(value, schema["const"]):
        yield f"{_at(path)}: {_shown(value)} is not {_shown(schema['const'])}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        options = ", ".join(_shown(option) for option in schema["enum"])
        yield f"{_at(path)}: {_shown(value)} is not one of {options}"
    if isinstance(value, str):
        yield from _string_errors(value, schema, path)
    if (isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema
            and value < schema["minimum"]):
        yield f"{_at(path)}: {_shown(value)} is less than {schema['minimum']}"
    if isinstance(value, dict):
        yield from _object_errors(value, schema, root, path)
    if isinstance(value, list):
        yield from _array_errors(value, schema, root, path)
    if "anyOf" in schema and not any(
            not any(True for _ in _errors(value, sub, root, path)) for sub in schema["anyOf"]):
        yield f"{_at(path)}: {_shown(value)} matches none of the forms allowed here"
    if "oneOf" in schema:
        matched = sum(not any(True for _ in _errors(value, sub, root, path))
                      for sub in schema["oneOf"])
        if matched != 1:
            yield (f"{_at(path)}: {_shown(value)} matches {matched} of the forms allowed "
                   f"here, not exactly one")


def _string_errors(value: str, schema: dict[str, Any], path: str) -> Iterator[str]:
    if "minLength" in schema and len(value) < schema["minLength"]:
        yield f"{_at(path)}: {_shown(value)} is shorter than {schema['minLength']} characters"
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        yield f"{_at(path)}: {_shown(value)} does not match {schema['pattern']}"


def _object_errors(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any],
                   path: str) -> Iterator[str]:
    for name in schema.get("required", []):
        if name not in value:
            yield f"{_at(path)}: required field {name!r} is missing"
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            yield from _errors(item, properties[name], root, f"{path}/{name}")
        elif extra is False:
            yield f"{_at(path)}: field {_shown(name)} is not allowed"
        else:
            yield from _errors(item, extra, root, f"{path}/{name}")


def _array_errors(value: list[Any], schema: dict[str, Any], root: dict[str, Any], path: str
                  ) -> Iterator[str]:
    if "minItems" in schema and len(value) < schema["minItems"]:
        yield f"{_at(path)}: {len(value)} item(s), fewer than {schema['minItems']}"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        yield f"{_at(path)}: {len(value)} item(s), more than {schema['maxItems']}"
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else schema.get("items", True)
        yield from _errors(item, sub, root, f"{path}/{index}")


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """A local reference (``#/$defs/sha256``); SchemaError for any other."""
    if not ref.startswith("#/"):
        raise SchemaError(f"the report schema refers to {ref}: only local references are read")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    """An ECMA-262 pattern as Python reads it: a final ``$`` matches only at the very end (in
    Python it also matches before a final newline, so ``rpt-x\\n`` would pass ``^rpt-…$``)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1`` (as it is in Python), ``1`` is ``1.0``."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(map(_same, value, expected))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_same(value[k], expected[k])
                                                       for k in value)
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return value == expected
    return type(value) is type(expected) and value == expected


def _at(path: str) -> str:
    return path[1:] if path else "(the report)"


def _shown(value: Any) -> str:
    """A value as JSON, cut to 60 characters: a report can hold anything."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
