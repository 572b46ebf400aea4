"""`ledger verify-report` checks a report against schemas/report.v1.json, signed or not: an
unsigned report whose R0 report_id was edited to arbitrary text used to verify (exit 0). The
run-time checker (report/schema_check.py, no JSON Schema library) is held to jsonschema's
verdicts here."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import run_cli
from ledger.errors import BadInputError
from ledger.store import Store
from replay_helpers import record_run
from report import schema_check
from report.check import check_report
from report.export import export_report
from report.jsonview import canonical_json
from report.model import ReportOptions
from report.signing import generate_key_pair, load_private_key, sign
from report_helpers import report_of, validator


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(folder holding an unsigned report.json, a signed bundle signed/ and its key pair
    key.*; the report as built)."""
    folder = tmp_path_factory.mktemp("schema")
    url = f"sqlite:///{folder / 'ledger.db'}"
    exp = record_run(url, folder / "data")
    generate_key_pair(folder / "key")
    with Store.open(url) as store:
        export_report(store, exp, ReportOptions(record=False), output=folder / "report.json")
        export_report(store, exp, ReportOptions(record=False), bundle=folder / "signed",
                      key=load_private_key(folder / "key.key"))
    return folder, report_of(url, exp)


def _edited(made: tuple[Path, dict[str, Any]], tmp_path: Path, section: str, key: str,
            value: Any) -> Path:
    folder, _ = made
    report = json.loads((folder / "report.json").read_text())
    report[section][key] = value
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def test_an_honest_report_matches_the_schema_and_verifies_unsigned(
        made: tuple[Path, dict[str, Any]]) -> None:
    folder, report = made
    assert schema_check.schema_errors(report) == []
    done = run_cli("verify-report", str(folder / "report.json"), "--unsigned")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("section,key,value,said", [
    ("R0", "report_id", "anything at all", 'R0/report_id: "anything at all" does not match '
                                           "^rpt-[0-9A-Za-z._-]+$"),
    ("R0", "report_id", "rpt-1\n", 'R0/report_id: "rpt-1\\n" does not match'),
    ("R0", "generated_at", "yesterday", 'R0/generated_at: "yesterday" does not match'),
    ("R9", "run_head", "abc", 'R9/run_head: "abc" matches none of the forms allowed here'),
    ("R1", "checkpoints", {"final": [], "recorded": "3"},
     'R1/checkpoints/recorded: "3" is not of type integer'),
    ("R11", "retain_months", -1, "R11/retain_months: -1 is less than 0"),
    ("R12", "invented", True, 'R12: field "invented" is not allowed'),
])
def test_an_unsigned_report_that_breaks_its_schema_fails_with_one_finding(
        made: tuple[Path, dict[str, Any]], tmp_path: Path, section: str, key: str, value: Any,
        said: str) -> None:
    path = _edited(made, tmp_path, section, key, value)
    done = run_cli("verify-report", str(path), "--unsigned")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "ledger: check failed: the report does not match its schema (schemas/report.v1.json): ")
    assert said in lines[0]
    shown = json.loads(run_cli("verify-report", str(path), "--unsigned", "--json").stdout)
    assert [f for f in shown["failures"] if "schema" in f] == [lines[0].split(": ", 2)[2]]


def test_a_required_field_removed_is_named(made: tuple[Path, dict[str, Any]],
                                           tmp_path: Path) -> None:
    folder, _ = made
    report = json.loads((folder / "report.json").read_text())
    del report["R1"]["purpose"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    done = run_cli("verify-report", str(path), "--unsigned")
    assert done.returncode == 1
    assert "R1: required field 'purpose' is missing" in done.stderr


def test_a_signed_report_that_breaks_its_schema_fails_though_the_signature_is_valid(
        made: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A holder of the key can sign anything: the signature verifies, the schema does not."""
    folder, _ = made
    bundle = Path(shutil.copytree(folder / "signed", tmp_path / "signed"))
    report = json.loads((bundle / "report.json").read_text())
    report["R0"]["report_id"] = "not an id"
    (bundle / "report.json").write_text(json.dumps(report))
    (bundle / "SHA256SUMS").unlink()
    key = load_private_key(folder / "key.key")
    (bundle / "report.json.sig").write_bytes(sign(key, canonical_json(report)))
    done = run_cli("verify-report", str(bundle / "report.json"), "--public-key",
                   str(folder / "key.pub"), "--json")
    assert done.returncode == 1
    outcome = json.loads(done.stdout)
    assert outcome["signature"] == "valid"
    assert outcome["failures"] == ['the report does not match its schema '
                                   '(schemas/report.v1.json): R0/report_id: "not an id" does '
                                   'not match ^rpt-[0-9A-Za-z._-]+$']


_VALUES: tuple[Any, ...] = ("x", "", 7, -1, 1.5, None, True, [], {}, ["x"], {"x": 1})


def _mutations(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) pairs: every value of the report replaced by each of ``_VALUES``, and
    ``_DELETE`` / ``_EXTRA`` for every object's fields. Long lists are sampled (first, last)."""
    if isinstance(node, dict):
        yield path + ("",), _EXTRA
        for key, value in node.items():
            yield path + (key,), _DELETE
            yield from _mutations(value, path + (key,))
    elif isinstance(node, list):
        for index in sorted({0, len(node) - 1}) if node else []:
            yield from _mutations(node[index], path + (index,))
    for value in _VALUES:
        if path:
            yield path, value


_DELETE, _EXTRA = object(), object()


@contextlib.contextmanager
def _applied(report: dict[str, Any], path: tuple[Any, ...], value: Any) -> Iterator[None]:
    """``report`` with one change made in place, undone afterwards."""
    *parents, last = path
    target: Any = report
    for part in parents:
        target = target[part]
    if value is _EXTRA:
        target["an_unknown_field"] = 1
        yield
        del target["an_unknown_field"]
        return
    before = dict(target) if isinstance(target, dict) else list(target)
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    yield
    target.clear()
    (target.update if isinstance(target, dict) else target.extend)(before)


@functools.cache
def _section_validator(section: str) -> jsonschema.Draft202012Validator:
    """jsonschema's validator of the report schema cut to one required section."""
    schema = dict(validator("report.v1.json").schema)
    schema.update(required=[section], properties={section: schema["properties"][section]})
    return jsonschema.Draft202012Validator(schema)


def test_the_checker_agrees_with_jsonschema_on_every_single_change(
        made: tuple[Path, dict[str, Any]]) -> None:
    """Each field deleted, an unknown field added to each object, and each value replaced by
    text, numbers, null, a boolean, lists and objects: the run-time checker fails exactly the
    documents jsonschema (Draft 2020-12) fails."""
    _, report = made
    disagreements, checked = [], 0
    report = copy.deepcopy(report)
    for path, value in list(_mutations(report)):
        with _applied(report, path, value):
            ours = bool(schema_check.schema_errors(report))
            if len(path) == 1:
                theirs = not validator("report.v1.json").is_valid(report)
            else:  # jsonschema is slow on the whole report: the changed section is enough
                theirs = not _section_validator(path[0]).is_valid({path[0]: report[path[0]]})
        checked += 1
        if ours != theirs:
            disagreements.append((path, value if value not in (_DELETE, _EXTRA) else
                                  "delete" if value is _DELETE else "extra", ours, theirs))
    assert checked > 1000 and disagreements == []


def test_a_schema_keyword_the_checker_does_not_evaluate_is_refused() -> None:
    with pytest.raises(schema_check.SchemaError, match="uniqueItems"):
        schema_check._check_keywords({"properties": {"a": {"uniqueItems": True}}}, "#")


def test_without_the_schema_file_verification_stops_rather_than_skip_it(
        made: tuple[Path, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = made
    monkeypatch.setattr(schema_check, "SCHEMA_PATH", tmp_path / "no-such.json")
    schema_check.report_schema.cache_clear()
    try:
        with pytest.raises(BadInputError, match="cannot read the report schema"):
            check_report(folder / "report.json", None)
    finally:
        schema_check.report_schema.cache_clear()


def test_json_equality_tells_true_from_one() -> None:
    schema = {"properties": {"signed": {"const": False}, "n": {"enum": [1]}}}
    assert schema_check.schema_errors({"signed": 0, "n": True}, schema) == [
        "signed: 0 is not false", "n: true is not one of 1"]
    assert schema_check.schema_errors({"signed": False, "n": 1.0}, schema) == []
