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
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.audit import record_audit, require_audit_append
from ledger.durable_files import commit_file, flush_folder, in_device_folder, stage_file
from ledger.errors import BadInputError
from ledger.events import REPORT_EXPORTED
from ledger.store.store import Store
from ledger.text import quoted
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


class _Staged:
    """The files of one export, written to temporaries beside their targets and renamed into
    place together once all are written: a refused or failed target leaves nothing written."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, Path]] = []

    def write(self, path: Path, data: bytes) -> str:
        """Stage ``data`` for ``path``; return its SHA-256."""
        self.write_with(path, lambda handle: handle.write(data))
        return hashlib.sha256(data).hexdigest()

    def write_with(self, path: Path, fill: Callable[[BinaryIO], Any]) -> Any:
        """Stage what ``fill`` writes into the handle it is given for ``path``, flushed to
        disk (:mod:`ledger.durable_files`); return what ``fill`` returns."""
        try:
            temporary, outcome = stage_file(path, fill)
        except OSError as error:
            raise BadInputError(f"cannot write {path}: {error.strerror or error}") from None
        self._pending.append((temporary, path))
        return outcome

    def commit(self) -> None:
        """Rename every staged file into place and flush its folder (after the export was
        recorded, see :func:`_record`)."""
        for temporary, path in self._pending:
            try:
                commit_file(temporary, path)
            except OSError as error:
                raise BadInputError(f"cannot write {path}: {error.strerror or error}") from None
        self._pending.clear()

    def discard(self) -> None:
        """Remove the temporaries of what was not committed."""
        for temporary, _path in self._pending:
            Path(temporary).unlink(missing_ok=True)
        self._pending.clear()


def _resolve_target(path: Path, what: str, ledger_files: set[str]) -> Path:
    """The file a target names, symlinks followed (the rename writes through a link instead of
    replacing it), refused when it is the ledger itself or a path under /dev or /proc (whose
    entries stand for streams and devices: renaming over one replaces the node)."""
    given = os.path.abspath(path)
    if in_device_folder(given):
        raise BadInputError(f"cannot write {path}: not a path for a file (without -o the report "
                            f"goes to stdout)")
    real = Path(os.path.realpath(given))
    if str(real) in ledger_files:
        raise BadInputError(f"cannot write {what} {path}: it is the ledger's own database")
    _check_target(real, what)
    return real


def _ledger_files(store: Store) -> set[str]:
    """The files of an SQLite ledger (database, WAL, shared memory, journal), resolved."""
    database = store.sqlite_file
    if database is None:
        return set()
    real = os.path.realpath(database)
    return {real, *(real + suffix for suffix in ("-wal", "-shm", "-journal"))}


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
    held = [entry.name for entry in islice(folder.iterdir(), 3)] if folder.is_dir() else []
    if held:  # named: what a killed export leaves is hidden temporaries, which `ls` omits
        raise BadInputError(f"bundle folder {folder} is not empty (it holds "
                            f"{', '.join(quoted(name) for name in held)}): a bundle goes to a "
                            f"new or empty folder, so it holds nothing of another report")
    if not folder.parent.is_dir():
        raise BadInputError(f"cannot create bundle folder {folder}: folder {folder.parent} does "
                            f"not exist")
    try:
        if not folder.is_dir():
            folder.mkdir()
            flush_folder(folder.parent)  # the new folder's entry, as its files' are flushed
    except OSError as error:
        raise BadInputError(f"cannot create bundle folder {folder}: {error.strerror}") from None


def export_report(store: Store, exp: str, options: ReportOptions, *, fmt: str = "json",
                  output: Path | None = None, bundle: Path | None = None,
                  appendix: Path | None = None, key: Ed25519PrivateKey | None = None,
                  deliver: Callable[[bytes], None] | None = None) -> ExportResult:
    """Build and write the report of ``exp`` (see the module docstring).

    Without ``output`` or ``bundle`` the one format goes to ``ExportResult.stdout`` — and to
    ``deliver`` when given, before the export is recorded: a reader that went away (a closed
    pipe raised from ``deliver``) leaves no record of an export nobody received. A key needs
    the JSON written to a file, which its ``.sig`` goes beside.
    """
    if fmt not in FORMATS:
        raise BadInputError(f"unknown report format {fmt!r}: choose from {', '.join(FORMATS)}")
    row = store.experiment(exp)
    if options.record:
        require_audit_append(store, "this export", exp, take_over=options.take_over)
    ledger_files = _ledger_files(store)
    named_json: Path | None = None
    if bundle is not None:
        _prepare_bundle(bundle)
        appendix = bundle / BUNDLE_FILES["appendix"]
        json_path: Path | None = bundle / BUNDLE_FILES["json"]
    else:
        # the signature goes beside the name given: beside a link, not beside its target,
        # where verify-report of that name would not look for it
        named_json = output if fmt == "json" else None
        if output is not None:
            output = _resolve_target(output, "output", ledger_files)
        if appendix is not None:
            appendix = _resolve_target(appendix, "appendix", ledger_files)
        json_path = output if fmt == "json" else None
    signature_path = None
    if key is not None:
        if json_path is None:
            raise BadInputError("signing needs the JSON report in a file: give --format json "
                                "with -o FILE, or --bundle DIR")
        signature_path = json_path.with_name(f"{json_path.name}.sig")
        if bundle is None:  # beside -o FILE, which may be beside the ledger
            assert named_json is not None  # json_path is set only from it here
            signature_path = _resolve_target(named_json.with_name(f"{named_json.name}.sig"),
                                             "signature", ledger_files)
        else:
            _check_target(signature_path, "signature")
    targets = [path for path in (output, appendix, signature_path) if path is not None]
    if len(set(targets)) < len(targets):
        raise BadInputError("the report, its appendix and its signature need three different "
                            "files")
    stage = _Staged()
    try:
        result = _export(store, exp, options, row, stage, fmt=fmt, output=output, bundle=bundle,
                         appendix=appendix, json_path=json_path, key=key,
                         signature_name=f"{(named_json or json_path).name}.sig"
                         if json_path is not None else None, signature_path=signature_path)
        if result.stdout is not None and deliver is not None:
            deliver(result.stdout)
        if options.record:  # recorded first: a record that fails (a full disk) leaves no file
            _record(store, exp, result.report, result, fmt if bundle is None else "bundle",
                    take_over=options.take_over)
        stage.commit()
    finally:
        stage.discard()
    return result


def _export(store: Store, exp: str, options: ReportOptions, row: Any, stage: _Staged, *,
            fmt: str, output: Path | None, bundle: Path | None, appendix: Path | None,
            json_path: Path | None, key: Ed25519PrivateKey | None,
            signature_name: str | None, signature_path: Path | None) -> ExportResult:
    """Build the report and stage its files (see :func:`export_report`)."""
    if key is not None:
        assert json_path is not None  # export_report refuses a key without a JSON file
        options.signature = {"signed": True, "algorithm": ALGORITHM,
                             "public_key_sha256": fingerprint(key.public_key()),
                             "signature_file": signature_name,
                             "covers": SIGNATURE_COVERS}
    result = ExportResult(report={})
    files: list[dict[str, Any]] = []

    def add(path: Path, what: str, digest: str) -> None:
        result.written.append(Written(path, ROLES.get(what, what), digest))
        files.append({"name": path.name, "role": ROLES[what], "media_type": MEDIA_TYPES[what],
                      "sha256": digest})

    if appendix is not None:
        report = stage.write_with(appendix, lambda handle: build_report(
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
            add(path, what, stage.write(path, pretty_json(statement)))
    renderers = {"html": lambda: render_html(report).encode("utf-8", "backslashreplace"),
                 "md": lambda: render_markdown(report).encode("utf-8", "backslashreplace")}
    for what, render in renderers.items():
        if bundle is not None:
            path = bundle / BUNDLE_FILES[what]
            add(path, what, stage.write(path, render()))
        elif fmt == what:
            if output is None:
                result.stdout = render()
            else:
                add(output, what, stage.write(output, render()))
    canonical = canonical_json(report)
    result.report_sha256 = hashlib.sha256(canonical).hexdigest()
    if json_path is not None:
        digest = stage.write(json_path, pretty_json(report))
        result.written.append(Written(json_path, ROLES["json"], digest))
        if key is not None:
            assert signature_path is not None  # export_report names it with the key
            result.written.append(Written(signature_path, "signature",
                                          stage.write(signature_path, sign(key, canonical))))
    elif fmt == "json":
        result.stdout = pretty_json(report)
    if bundle is not None:
        sums = "".join(f"{item.sha256}  {item.path.name}\n"
                       for item in sorted(result.written, key=lambda w: w.path.name))
        path = bundle / BUNDLE_FILES["sums"]
        result.written.append(Written(path, "checksums", stage.write(path, sums.encode())))
    return result


def _record(store: Store, exp: str, report: dict[str, Any], result: ExportResult,
            fmt: str, take_over: bool) -> None:
    """Record the export as ``report_exported`` in the experiment's audit stream, before its
    staged files are renamed into place: a record that cannot be written (a full disk — SQLite
    finds that out only at the commit) leaves no file behind. The rename that follows cannot
    run out of space, and its folder was written to already while staging."""
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
                 meta={"pid": os.getpid(), "host": socket.gethostname()},
                 take_over=take_over)
