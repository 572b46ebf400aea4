"""Shared by the report tests: schema validators and building a report without recording it."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema

from conftest import ROOT
from ledger.store import Store
from report.model import ReportOptions, build_report

SCHEMAS = ROOT / "schemas"


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``schemas/<name>`` (checked against the 2020-12 meta-schema first)."""
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(document: Any, name: str = "report.v1.json") -> list[str]:
    """Every validation error of ``document`` against ``schemas/<name>``, as readable lines."""
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
            for error in validator(name).iter_errors(document)]


def report_of(url: str, exp: str, **options: Any) -> dict[str, Any]:
    """Build the report of ``exp`` (not recorded unless asked), validated against the schema."""
    options.setdefault("record", False)
    with Store.open(url) as store:
        report = build_report(store, exp, ReportOptions(**options))
    errors = schema_errors(report)
    assert not errors, errors
    return report
