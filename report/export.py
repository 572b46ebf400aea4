"""Writing a report: one format to a file or stdout, or a bundle of everything; signing; and
recording the export in the experiment's audit stream.

A bundle (``--bundle DIR``, a new or empty folder) holds::

    report.json              the electronic copy (keys sorted, indented; canonical when parsed)
    report.json.sig          Ed25519 signature of its canonical bytes (when signed)
    report.html              the human-readable copy
    report.md                for reviews and tickets
    events.ndjson            the per-event appendix (R7)
    provenance.intoto.json   in-toto Statement, SLSA Provenance v1 predicate
    replay.intoto.json       in-toto Statement, test-result predicate of the replay verdict
    SHA256SUMS               ``sha256sum -c`` compatible, every file above

Files are written in this order: the appendix, the attestations, HTML and Markdown, then the JSON,
whose R0 lists the SHA-256 of every file written before it (so the signature covers them too).
Each file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.audit import record_audit
from ledger.errors import BadInputError
from ledger.events import REPORT_EXPORTED
from ledger.store.store import Store
from report.attest import provenance_statement, replay_statement
from report.html import render_html
from report.jsonview import canonical_json, pretty_json
from report.markdown import render_markdown
from report.model import ReportOptions, build_report
from report.signing import ALGORITHM, fingerprint, sign

FORMATS = ("json", "html", "md")
BUNDLE_FILES = {"json": "report.json", "html": "report.html", "md": "report.md",
                "appendix": "events.ndjson", "provenance": "provenance.intoto.json",
                "replay": "replay.intoto.json", "sums": "SHA256SUMS"}
MEDIA_TYPES = {"json": "application/json", "html": "text/html", "md": "text/markdown",
               "appendix": "application/x-ndjson", "provenance": "application/vnd.in-toto+json",
               "replay": "application/vnd.in-toto+json"}
ROLES = {"json": "report (electronic copy)", "html": "report (human-readable copy)",
         "md": "report (Markdown)", "appendix": "per-event appendix (R7)",
         "provenance": "SLSA provenance attestation", "replay": "replay test-result attestation"}
SIGNATURE_COVERS = ("canonical bytes of the parsed report.json: keys sorted, no whitespace, "
                    "UTF-8 (json.dumps(report, sort_keys=True, separators=(',', ':'), "
                    "ensure_ascii=False))")


@dataclass(slots=True)
class Written:
    """One file written: where, its role and its SHA-256."""

    path: Path
    role: str
    sha256: str


@dataclass(slots=True)
class ExportResult:
    """What an export produced."""

    report: dict[str, Any]
    written: list[Written] = field(default_factory=list)
    stdout: bytes | None = None
    report_sha256: str = ""


def _write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file; return its SHA-256."""
    _write_with(path, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()


def _write_with(path: Path, fill: Callable[[BinaryIO], Any]) -> Any:
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                                 suffix=".tmp")
    except OSError as error:
        raise BadInputError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            outcome = fill(handle)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return outcome


def _check_target(path: Path, what: str) -> None:
    """Refuse a target that the atomic rename would not write to as the user means: a folder,
    a missing folder, or a device, pipe or socket (renaming over one replaces the node)."""
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a folder")
    if not path.parent.is_dir():
        raise BadInputError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.exists() and not path.is_file():
        raise BadInputError(f"cannot write {path}: it is not a regular file (a device, pipe or "
                            f"socket); give a file path, or no -o to print to stdout")


def _prepare_bundle(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"bundle folder {folder} is a file")
    if folder.is_dir() and any(folder.iterdir()):
        raise BadInputError(f"bundle folder {folder} is not empty: a bundle goes to a new or "
                            f"empty folder, so it holds nothing of another report")
    if not folder.parent.is_dir():
        raise BadInputError(f"cannot create bundle folder {folder}: folder {folder.parent} does "
                            f"not exist")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise BadInputError(f"cannot create bundle folder {folder}: {error.strerror}") from None


def export_report(store: Store, exp: str, options: ReportOptions, *, fmt: str = "json",
                  output: Path | None = None, bundle: Path | None = None,
                  appendix: Path | None = None, key: Ed25519PrivateKey | None = None
                  ) -> ExportResult:
    """Build and write the report of ``exp`` (see the module docstring).

    Without ``output`` or ``bundle`` the one format goes to ``ExportResult.stdout``. A key
    needs the JSON written to a file, which its ``.sig`` goes beside.
    """
    if fmt not in FORMATS:
        raise BadInputError(f"unknown report format {fmt!r}: choose from {', '.join(FORMATS)}")
    row = store.experiment(exp)
    if bundle is not None:
        _prepare_bundle(bundle)
        appendix = bundle / BUNDLE_FILES["appendix"]
        json_path: Path | None = bundle / BUNDLE_FILES["json"]
    else:
        json_path = output if fmt == "json" else None
        for path, what in ((output, "output"), (appendix, "appendix")):
            if path is not None:
                _check_target(path, what)
    if key is not None:
        if json_path is None:
            raise BadInputError("signing needs the JSON report in a file: give --format json "
                                "with -o FILE, or --bundle DIR")
        _check_target(json_path.with_name(f"{json_path.name}.sig"), "signature")
        options.signature = {"signed": True, "algorithm": ALGORITHM,
                             "public_key_sha256": fingerprint(key.public_key()),
                             "signature_file": f"{json_path.name}.sig",
                             "covers": SIGNATURE_COVERS}
    result = ExportResult(report={})
    files: list[dict[str, Any]] = []

    def add(path: Path, what: str, digest: str) -> None:
        result.written.append(Written(path, ROLES.get(what, what), digest))
        files.append({"name": path.name, "role": ROLES[what], "media_type": MEDIA_TYPES[what],
                      "sha256": digest})

    if appendix is not None:
        report = _write_with(appendix, lambda handle: build_report(
            store, exp, options, appendix=handle, appendix_name=appendix.name, row=row))
        info = report["R7"]["appendix"]
        add(appendix, "appendix", info["sha256"])
    else:
        report = build_report(store, exp, options, row=row)
    result.report = report
    report["R0"]["files"] = files
    if bundle is not None:
        for what, statement in (("provenance", provenance_statement(report)),
                                ("replay", replay_statement(report))):
            path = bundle / BUNDLE_FILES[what]
            add(path, what, _write_atomic(path, pretty_json(statement)))
    renderers = {"html": lambda: render_html(report).encode("utf-8"),
                 "md": lambda: render_markdown(report).encode("utf-8")}
    for what, render in renderers.items():
        if bundle is not None:
            path = bundle / BUNDLE_FILES[what]
            add(path, what, _write_atomic(path, render()))
        elif fmt == what:
            if output is None:
                result.stdout = render()
            else:
                add(output, what, _write_atomic(output, render()))
    canonical = canonical_json(report)
    result.report_sha256 = hashlib.sha256(canonical).hexdigest()
    if json_path is not None:
        digest = _write_atomic(json_path, pretty_json(report))
        result.written.append(Written(json_path, ROLES["json"], digest))
        if key is not None:
            signature_path = json_path.with_name(f"{json_path.name}.sig")
            result.written.append(Written(signature_path, "signature",
                                          _write_atomic(signature_path, sign(key, canonical))))
    elif fmt == "json":
        result.stdout = pretty_json(report)
    if bundle is not None:
        sums = "".join(f"{item.sha256}  {item.path.name}\n"
                       for item in sorted(result.written, key=lambda w: w.path.name))
        path = bundle / BUNDLE_FILES["sums"]
        result.written.append(Written(path, "checksums", _write_atomic(path, sums.encode())))
    if options.record:
        _record(store, exp, report, result, fmt if bundle is None else "bundle")
    return result


def _record(store: Store, exp: str, report: dict[str, Any], result: ExportResult,
            fmt: str) -> None:
    """Record the export as ``report_exported`` in the experiment's audit stream."""
    formats = ["json", "html", "md"] if fmt == "bundle" else [fmt]
    params = {"report_id": report["R0"]["report_id"], "schema": report["schema"],
              "formats": formats, "bundle": fmt == "bundle",
              "files": {item.path.name: item.sha256 for item in result.written},
              "report_sha256": result.report_sha256,
              "signed": bool(report["R9"]["signature"].get("signed")),
              "public_key_sha256": report["R9"]["signature"].get("public_key_sha256"),
              "generated_by": report["R0"]["generated_by"],
              "generated_at": report["R0"]["generated_at"],
              "replay_verdict": report["R8"]["verdict"],
              "integrity": report["summary"]["integrity"]}
    record_audit(store, exp, REPORT_EXPORTED, params,
                 output=bytes.fromhex(result.report_sha256),
                 meta={"pid": os.getpid(), "host": socket.gethostname()})
