"""Checking a report someone hands you: ``ledger verify-report REPORT --public-key KEY``.

In order: the file must be JSON and one of our reports (else exit 2); the detached signature
(``REPORT.sig`` unless named) must be the public key's Ed25519 signature of the report's canonical
bytes; the report must match its schema (``schemas/report.v1.json``: ids of their form, no field
missing, of another type or unknown — signed or not, what no honest export writes); every
file R0 lists that is present beside the report must have the SHA-256 R0 records; a
``SHA256SUMS`` beside it must match every file it lists; and, when asked, the report must be of
the expected experiment, and the ledger (``--db``) must still hold the heads the report
certifies — which catches a chain rewritten after the report, even with a new run_completed
(a stream of an incomplete run that went on after the report must hold the certified head
at the position the report saw it, with no gap before it).
Anything altered is a failure (exit 1); a file listed in R0 but absent is reported, not failed.
An unsigned report (``--unsigned``) gets every check but the signature's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import BadInputError, CheckFailedError, UnknownExperimentError
from ledger.events import AUDIT_STREAM, RUN_COMPLETED
from ledger.store.store import Store, StreamHead
from ledger.verify import VerifyReport, verify
from report.export import ROLES
from report.jsonview import canonical_json, parse_json
from report.model import SCHEMA_ID, SECTION_IDS
from report.schema_check import SchemaError, schema_errors
from report.signing import (fingerprint, load_public_key, read_regular_file, signature_bytes,
                            verify_signature)

_CHUNK = 1 << 20
_LOWER_HEX_64 = re.compile("[0-9a-f]{64}")
REPORT_BYTES = 256 << 20
"""Most bytes a report file may hold (reports are small: the per-event list is an appendix)."""


@dataclass(slots=True)
class ReportCheck:
    """What verification of a report found: ``ok`` when nothing failed."""

    report: Path
    exp: str | None = None
    report_id: str | None = None
    signature: str = "not checked"
    files: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the signature and every check that ran passed."""
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"ok": self.ok, "report": str(self.report), "exp": self.exp,
                "report_id": self.report_id, "signature": self.signature, "files": self.files,
                "failures": self.failures, "notes": self.notes}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def load_report(path: Path) -> dict[str, Any]:
    """Read and parse a report; BadInputError (exit 2) when it is not JSON or not our report."""
    try:
        data = read_regular_file(path, "report", REPORT_BYTES)
    except FileNotFoundError:
        raise BadInputError(f"cannot read report {path}: no such file") from None
    report = parse_json(data, f"report {path}")
    if (not isinstance(report, dict) or report.get("schema") != SCHEMA_ID
            or not all(isinstance(report.get(key), dict) for key in SECTION_IDS)
            or not isinstance(report.get("summary"), dict)):
        raise BadInputError(f"{path} is not a {SCHEMA_ID} report")
    return report


UNSIGNED = "not checked: --unsigned"
"""``ReportCheck.signature`` of a report checked without a key (``public_key=None``)."""


def check_report(path: Path, public_key: Path | None, *, signature: Path | None = None,
                 exp: str | None = None, store: Store | None = None) -> ReportCheck:
    """Check a report (see the module docstring); raises BadInputError for unusable inputs.

    ``public_key=None`` checks an unsigned report (exported without ``--sign-key``): every
    digest, ``exp`` and the ledger as for a signed one, but nothing vouches for who wrote it.
    """
    report = load_report(path)
    key = None if public_key is None else load_public_key(public_key)
    check = ReportCheck(path, exp=_get(report, "R1", "exp"), report_id=_get(report, "R0",
                                                                             "report_id"))
    signature = signature or path.with_name(f"{path.name}.sig")
    if key is None:
        check.signature = UNSIGNED
        named = _signing_key_named(report)
        if named is not None:
            check.notes.append(f"the report names signing key {named}: give --public-key to "
                               f"check its signature")
    else:
        _check_signature(check, report, key, signature)
    _check_schema(check, report)
    _check_files(check, report, path.parent)
    _check_sums(check, report, path.parent, covered={path.name, signature.name})
    if exp is not None and check.exp != exp:
        check.failures.append(f"report is of experiment {check.exp}, not {exp}")
    if store is not None:
        _check_ledger(check, report, store)
    return check


def _get(report: dict[str, Any], section: str, key: str) -> Any:
    value = report.get(section, {}).get(key)
    return value if isinstance(value, str) else None


def _signing_key_named(report: dict[str, Any]) -> str | None:
    """The fingerprint of the key R9 says the report is signed with, if it names one."""
    signed = report["R9"].get("signature")
    named = signed.get("public_key_sha256") if isinstance(signed, dict) else None
    return named if isinstance(named, str) else None


def _check_signature(check: ReportCheck, report: dict[str, Any], key: Ed25519PublicKey,
                     signature_path: Path) -> None:
    try:
        text = read_regular_file(signature_path, "signature")
    except FileNotFoundError:
        raise BadInputError(f"no signature {signature_path} (give --signature FILE)") from None
    raw = signature_bytes(text)
    given = fingerprint(key)
    named = _signing_key_named(report)
    if raw is None:
        check.signature = "malformed"
        check.failures.append(f"{signature_path.name} is not a base64 Ed25519 signature")
    elif verify_signature(key, raw, canonical_json(report)):
        check.signature = "valid"
    else:
        check.signature = "invalid"
        why = (f"the report names signing key {named}, you gave {given}" if named and
               named != given else "the report or the signature was altered")
        check.failures.append(f"signature does not verify with this key: {why}")
    if check.signature == "valid" and named != given:
        check.failures.append(f"the report names signing key {named}, but it verifies with "
                              f"{given}")


def _check_schema(check: ReportCheck, report: dict[str, Any]) -> None:
    """One failure when the report does not match ``schemas/report.v1.json``, naming the first
    mismatch and how many more there are; BadInputError when the schema cannot be read."""
    try:
        errors = schema_errors(report)
    except SchemaError as error:
        raise BadInputError(str(error)) from None
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        check.failures.append(f"the report does not match its schema "
                              f"(schemas/report.v1.json): {errors[0]}{more}")


def _check_files(check: ReportCheck, report: dict[str, Any], folder: Path) -> None:
    files = report["R0"].get("files")
    for entry in files if isinstance(files, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            check.failures.append(f"R0 lists a file with an unusable name {name!r}")
            continue
        candidate = folder / name
        if not candidate.is_file():
            check.files[name] = "absent"
            check.notes.append(f"{name} is listed in R0 but not beside the report: not checked")
        elif file_sha256(candidate) == entry.get("sha256"):
            check.files[name] = "ok"
        else:
            check.files[name] = "altered"
            check.failures.append(f"{name} does not have the SHA-256 the report records")


BUNDLE_ROLES = frozenset({ROLES["provenance"], ROLES["replay"]})
"""R0 roles of the files only a bundle holds: a report listing one was exported in a bundle."""


def _check_sums(check: ReportCheck, report: dict[str, Any], folder: Path,
                covered: set[str]) -> None:
    """Check SHA256SUMS beside the report. A file it lists that R0 does not (other than the
    report and its signature, in ``covered``) matches only an unsigned list: shown as such.
    SHA256SUMS itself is listed: ``altered`` when a line is malformed or contradicts a file
    the signed report vouches for. A report exported in a bundle checked without it (taken
    out of its bundle, or the list deleted) gets a note: a file deleted from the bundle is
    then only absent."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        if _exported_in_bundle(report):
            check.notes.append("no SHA256SUMS beside a report exported in a bundle (R0 lists its "
                               "attestations): checked as a report taken out of its bundle, so "
                               "a file missing from the bundle is reported absent, not failed")
        return
    failed_before = len(check.failures)
    # bytes, not read_text: its universal newlines would read a \r\n or \r line ending as \n
    lines = sums.read_bytes().decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    for number, line in enumerate(lines, 1):
        # exactly as written: a changed byte that a lenient reading would skip over (a line
        # ending in \x0b, a space after the name) is a changed file
        digest, _, name = line.partition("  ")
        if (not _LOWER_HEX_64.fullmatch(digest) or not name.isprintable() or name.strip() != name
                or not name or Path(name).name != name):
            check.failures.append(f"SHA256SUMS line {number} is malformed")
            check.files.setdefault("SHA256SUMS", f"altered (line {number} is malformed)")
            continue
        target = folder / name
        if not target.is_file():
            check.failures.append(f"{name} is listed in SHA256SUMS but missing")
            check.files.setdefault(name, "absent")
        elif file_sha256(target) != digest:
            vouched = check.files.get(name) == "ok"  # the file has the digest R0 records
            check.failures.append(f"{name} does not match SHA256SUMS" + (
                ", though it has the SHA-256 the report records: SHA256SUMS was altered"
                if vouched else ""))
            if vouched:
                check.files.setdefault("SHA256SUMS", f"altered (its line for {name} does not "
                                                     f"match the file the report vouches for)")
            # listed as such where R0 did not list it already (the report itself, say)
            check.files.setdefault(name, "altered (does not match SHA256SUMS)")
        elif name in check.files or name in covered:
            check.files.setdefault(name, "ok")
        else:
            check.files[name] = "unsigned (listed only in SHA256SUMS)"
            check.notes.append(f"{name} matches SHA256SUMS, which the signature does not cover: "
                               f"not vouched for by the report")
    check.files.setdefault("SHA256SUMS", "ok (every line matches; the signature does not "
                                         "cover it)" if len(check.failures) == failed_before
                           else "a line does not match its file (see the files)")


def _exported_in_bundle(report: dict[str, Any]) -> bool:
    files = report["R0"].get("files")
    return isinstance(files, list) and any(
        isinstance(entry, dict) and entry.get("role") in BUNDLE_ROLES for entry in files)


def _check_ledger(check: ReportCheck, report: dict[str, Any], store: Store) -> None:
    """The ledger must pass verification of the run and still hold the run head and stream
    heads the report certifies. Heads alone are the stored hash columns of the last rows: a
    body edited under an untouched hash column keeps them, so the chains are verified too."""
    exp = check.exp
    if exp is None:
        check.failures.append("the report names no experiment")
        return
    try:
        store.experiment(exp)
    except UnknownExperimentError:
        check.failures.append(f"the ledger {store.url} holds no experiment {exp}")
        return
    except CheckFailedError as error:  # its events are there, its row deleted
        check.failures.append(str(error))
        return
    _check_verification(check, report, verify(store, exp))
    run_head = store.first_event_hash(exp, RUN_COMPLETED)
    recorded = report["R9"].get("run_head")
    if recorded is not None and (run_head is None or run_head.hex() != recorded):
        check.failures.append(f"the ledger's run head of {exp} is "
                              f"{run_head.hex() if run_head else 'missing'}, the report "
                              f"certifies {recorded}")
    heads = store.stream_heads(exp)
    streams = report["R9"].get("streams")
    if not isinstance(streams, list):
        check.failures.append("the report's R9 has no list of streams")
        return
    for entry in streams:
        stream = entry.get("stream") if isinstance(entry, dict) else None
        if not isinstance(stream, str):
            check.failures.append(f"the report's R9 lists a stream entry {entry!r:.60}")
            continue
        if stream == AUDIT_STREAM:
            continue  # the audit stream grows with every later replay and report
        head = heads.get(stream)
        count = entry.get("count")
        if head is not None and head.head.hex() == entry.get("head") and head.count == count:
            continue
        grown = None if recorded is not None else _grown_by(store, exp, head, count,
                                                             entry.get("head"))
        if grown is not None:  # an incomplete run that went on: what it certified is there
            check.notes.append(f"stream {stream} of {exp} has {grown} more event(s) than the "
                               f"report certifies: the run went on after the report")
            continue
        check.failures.append(f"stream {stream} of {exp} in the ledger differs from the "
                              f"report ({entry.get('count')} events, head "
                              f"{entry.get('head')})")
    if not check.failures:
        check.notes.append("the ledger still holds the heads this report certifies")


def _check_verification(check: ReportCheck, report: dict[str, Any], now: VerifyReport) -> None:
    """Fail a ledger that fails verification in a way the report did not find: one it found
    intact, or one with findings beside those the report lists. A report that found the same
    findings describes the ledger as it still is: a note says so."""
    if now.ok:
        return
    recorded = report["R9"].get("verification")
    found = recorded.get("findings") if isinstance(recorded, dict) else None
    known = found if isinstance(found, list) else []
    new = [finding for finding in now.findings if finding.to_json() not in known]
    if not new:
        check.notes.append(f"the ledger fails verification with the {len(now.findings)} "
                           f"finding(s) the report lists")
        return
    beyond = " beyond what the report found" if known else ""
    more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
    check.failures.append(f"the ledger fails verification{beyond}: {new[0].describe()}{more}")


def _grown_by(store: Store, exp: str, head: StreamHead | None, count: Any, certified: Any
              ) -> int | None:
    """How many events a stream has gained since the report — an incomplete run resumed —
    when it still holds the certified head where the report saw it: the stream has no gap
    (its last seq is its count less one) and its event at seq ``count - 1`` has the certified
    hash. None otherwise."""
    if (head is None or isinstance(count, bool) or not isinstance(count, int)
            or not 0 < count < head.count or not isinstance(certified, str)):
        return None
    last = store.last_event(exp, head.stream)
    if last is None or last[0] != head.count - 1:
        return None
    held = list(store.iter_segment_rows(exp, head.stream, count - 1, count, ("hash",)))
    if len(held) != 1 or bytes(held[0][0]).hex() != certified:
        return None
    return head.count - count
