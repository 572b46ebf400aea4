"""Signing and verifying reports: `ledger keygen`, `ledger report --sign-key`, and
`ledger verify-report` — 0 when everything checks, 1 when anything was altered, 2 for input
that is not one of our reports."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import run_cli
from ledger.audit import record_audit
from ledger.errors import BadInputError
from ledger.events import REPORT_EXPORTED
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.store import Store
from ledger_builders import (delete_event, drop_append_only_triggers, execute,
                             record_experiment)
from report import signing
from report.check import check_report, file_sha256
from report.export import export_report
from report.jsonview import canonical_json
from report.model import ReportOptions
from report.signing import fingerprint, generate_key_pair, load_private_key, load_public_key, sign

A, B = "exp-aaaaaaaaaaaa", "exp-bbbbbbbbbbbb"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Signed bundles of two experiments (a/, b/), the key pair (key.*), another (other.*)."""
    folder = tmp_path_factory.mktemp("signed")
    url = f"sqlite:///{folder / 'ledger.db'}"
    generate_key_pair(folder / "key")
    generate_key_pair(folder / "other")
    key = load_private_key(folder / "key.key")
    with Store.open(url, create=True) as store:
        for exp, root in ((A, 1), (B, 2)):
            record_experiment(store, exp, root=root)
            export_report(store, exp, ReportOptions(record=False), bundle=folder / exp[-1],
                          key=key)
    return folder


@pytest.fixture
def bundle(signed: Path, tmp_path: Path) -> Path:
    """A fresh copy of experiment A's signed bundle, free to alter."""
    return Path(shutil.copytree(signed / "a", tmp_path / "a"))


def _verify(report: Path, key: Path, *extra: str) -> tuple[int, str, str]:
    done = run_cli("verify-report", str(report), "--public-key", str(key), *extra)
    return done.returncode, done.stdout, done.stderr


def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(tmp_path: Path) -> None:
    done = run_cli("keygen", "--out", str(tmp_path / "k"), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(info["fingerprint"]) == 64
    before = (tmp_path / "k.key").read_bytes()
    again = run_cli("keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "k.key").read_bytes() == before


def test_a_signed_bundle_verifies(bundle: Path, signed: Path) -> None:
    code, out, err = _verify(bundle / "report.json", signed / "key.pub", "--exp", A)
    assert code == 0, err
    assert out.startswith("OK:") and "signature valid" in out and "report.html: ok" in out
    report = json.loads((bundle / "report.json").read_text())
    assert report["R9"]["signature"]["signed"] is True
    assert report["R13"]["signature_method"].startswith("Ed25519")


def test_a_reindented_copy_still_verifies(bundle: Path, signed: Path) -> None:
    path = bundle / "report.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=False))
    (bundle / "SHA256SUMS").unlink()  # the file's bytes changed, its content did not
    assert check_report(path, signed / "key.pub").ok


def test_one_changed_character_fails(bundle: Path, signed: Path) -> None:
    path = bundle / "report.json"
    text = path.read_text()
    path.write_text(text.replace('"root_seed": "1"', '"root_seed": "7"', 1))
    assert path.read_text() != text
    (bundle / "SHA256SUMS").unlink()
    code, out, err = _verify(path, signed / "key.pub")
    assert code == 1 and out.startswith("FAILED")
    assert "signature does not verify" in err


def test_a_swapped_signature_fails(bundle: Path, signed: Path) -> None:
    shutil.copy(signed / "b" / "report.json.sig", bundle / "report.json.sig")
    (bundle / "SHA256SUMS").unlink()
    assert _verify(bundle / "report.json", signed / "key.pub")[0] == 1


def test_a_report_of_another_experiment_fails(signed: Path) -> None:
    code, _out, err = _verify(signed / "b" / "report.json", signed / "key.pub", "--exp", A)
    assert code == 1 and f"report is of experiment {B}, not {A}" in err
    outcome = check_report(signed / "b" / "report.json", signed / "key.pub",
                           signature=signed / "a" / "report.json.sig")
    assert not outcome.ok and outcome.signature == "invalid"


@pytest.mark.parametrize("given", ["bad id!", "x" * 10_000])
def test_a_malformed_expected_experiment_is_bad_usage_not_a_failed_check(signed: Path,
                                                                         given: str) -> None:
    """``--exp 'bad id!'`` was compared with the report's id and failed the check (exit 1),
    its line quoting all of a 10,000-character value; a malformed id is bad usage, as on
    every other command: exit 2, the id cut short."""
    code, out, err = _verify(signed / "a" / "report.json", signed / "key.pub", "--exp", given)
    assert (code, out) == (2, "")
    assert err.startswith("ledger: error: malformed experiment id ") and len(err) < 300


def test_a_wrong_key_fails_and_says_which_key_signed(signed: Path) -> None:
    code, _out, err = _verify(signed / "a" / "report.json", signed / "other.pub")
    assert code == 1 and "the report names signing key" in err


def test_an_altered_file_of_the_bundle_fails(bundle: Path, signed: Path) -> None:
    html = bundle / "report.html"
    html.write_text(html.read_text().replace("Replay verdict", "Replay verdikt"))
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert outcome.signature == "valid" and outcome.files["report.html"] == "altered"
    assert any("report.html does not match SHA256SUMS" in f for f in outcome.failures)


def test_a_report_json_that_no_longer_matches_sha256sums_is_listed_as_altered(
        bundle: Path) -> None:
    """A re-indented report.json of a bundle failed, but its own line was missing from the
    file list (text and --json), which showed every other file: the reason was on stderr
    alone. A file R0 cannot list (the report itself), or a listed one deleted, now has its
    line."""
    report = bundle / "report.json"
    report.write_text(json.dumps(json.loads(report.read_text()), indent=4))
    (bundle / "report.md").unlink()
    outcome = check_report(report, None)
    assert not outcome.ok
    assert outcome.files["report.json"] == "altered (does not match SHA256SUMS)"
    assert outcome.files["report.md"] == "absent"
    done = run_cli("verify-report", str(report), "--unsigned")
    assert done.returncode == 1
    assert "report.json: altered (does not match SHA256SUMS)" in done.stdout


def test_several_failures_are_one_line_on_stderr(bundle: Path, signed: Path) -> None:
    for name in ("report.html", "report.md"):
        (bundle / name).write_text((bundle / name).read_text() + "x")
    code, out, err = _verify(bundle / "report.json", signed / "key.pub")
    assert code == 1 and out.startswith("FAILED")
    assert err.count("\n") == 1 and "report.html" in err and "report.md" in err


def test_keygen_that_cannot_write_its_key_leaves_no_key_file(tmp_path: Path) -> None:
    # A full disk, as RLIMIT_FSIZE 0 makes every write to a file fail (stderr is a pipe).
    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)); "
               "from cli.main import main; main()")
    done = subprocess.run([sys.executable, "-c", limited, "keygen", "--out", "k"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "ledger: error: cannot write k.key: File too large\n"
    assert list(tmp_path.iterdir()) == []  # no empty key under its name to refuse a retry
    assert run_cli("keygen", "--out", "k", cwd=tmp_path).returncode == 0
    assert load_private_key(tmp_path / "k.key")


def test_keygen_flushes_both_keys_and_their_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    generate_key_pair(tmp_path / "k")
    assert flushed == [str(tmp_path / "k.key"), str(tmp_path / "k.pub"), str(tmp_path)]


@pytest.mark.parametrize("prefix", ["keys/", ".", ".."])  # "": test_cli_help's empty values
def test_keygen_needs_a_prefix_ending_in_a_file_name(tmp_path: Path, prefix: str) -> None:
    (tmp_path / "keys").mkdir()
    done = run_cli("keygen", "--out", prefix, cwd=tmp_path)
    assert done.returncode == 2 and "must end in a file name" in done.stderr
    assert done.stderr.count("\n") == 1
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["keys"]  # nothing written


@pytest.mark.parametrize("prefix", ["/dev/null", "/dev/shm/ledger-keygen-test", "/proc/k"])
def test_keygen_refuses_device_and_process_folders(prefix: str) -> None:
    """``keygen --out /dev/null`` wrote /dev/null.key and /dev/null.pub, keys nobody means to
    keep, where ``report -o`` refuses the same paths."""
    done = run_cli("keygen", "--out", prefix)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"ledger: error: got key prefix '{prefix}', but keys cannot go under /dev or /proc: "
        f"give a path in an ordinary folder"]
    assert not Path(f"{prefix}.key").exists() and not Path(f"{prefix}.pub").exists()


def test_a_missing_appendix_is_noted_not_failed(bundle: Path, signed: Path) -> None:
    (bundle / "events.ndjson").unlink()
    (bundle / "SHA256SUMS").unlink()
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert outcome.ok and outcome.files["events.ndjson"] == "absent"


def test_a_bundle_checked_without_its_sha256sums_says_so(bundle: Path, signed: Path) -> None:
    """Deleting SHA256SUMS (unsigned) with a file of the bundle passed as a report taken out of
    its bundle, without a word: the report, which lists the bundle's attestations, now says
    what that check could not catch."""
    for name in ("SHA256SUMS", "replay.intoto.json", "report.html"):
        (bundle / name).unlink()
    done = run_cli("verify-report", str(bundle / "report.json"), "--public-key",
                   str(signed / "key.pub"))
    assert done.returncode == 0, done.stderr
    assert "  report.html: absent" in done.stdout
    assert ("  note: no SHA256SUMS beside a report exported in a bundle (R0 lists its "
            "attestations): checked as a report taken out of its bundle, so a file missing from "
            "the bundle is reported absent, not failed") in done.stdout
    standalone = bundle.parent / "alone.json"
    assert run_cli("report", A, "-o", str(standalone), "--no-record", "--db",
                   f"sqlite:///{signed / 'ledger.db'}").returncode == 0
    assert not [note for note in check_report(standalone, None).notes if "SHA256SUMS" in note]


def test_sha256sums_is_listed_and_named_when_its_own_line_was_altered(bundle: Path,
                                                                      signed: Path) -> None:
    """A line of SHA256SUMS edited: every file showed ok, SHA256SUMS was not named."""
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert outcome.ok
    assert outcome.files["SHA256SUMS"] == "ok (every line matches; the signature does not cover it)"
    listing = bundle / "SHA256SUMS"
    lines = listing.read_text().splitlines()
    name = lines[0].partition("  ")[2]
    listing.write_text("\n".join(["0" * 64 + "  " + name, *lines[1:]]) + "\n")
    done = run_cli("verify-report", str(bundle / "report.json"), "--public-key",
                   str(signed / "key.pub"))
    assert done.returncode == 1
    assert (f"  SHA256SUMS: altered (its line for {name} does not match the file the report "
            f"vouches for)") in done.stdout
    assert f"  {name}: ok" in done.stdout
    assert (f"{name} does not match SHA256SUMS, though it has the SHA-256 the report records: "
            f"SHA256SUMS was altered") in done.stderr


@pytest.mark.parametrize("content,message", [(b"not json at all", "is not JSON"),
                                             (b'{"schema": "other"}', "is not a ledger/report")])
def test_files_that_are_not_our_reports_exit_2(tmp_path: Path, signed: Path, content: bytes,
                                               message: str) -> None:
    (tmp_path / "r.json").write_bytes(content)
    code, _out, err = _verify(tmp_path / "r.json", signed / "key.pub")
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_missing_signature_or_bad_key_exits_2(bundle: Path, signed: Path) -> None:
    (bundle / "report.json.sig").unlink()
    code, _out, err = _verify(bundle / "report.json", signed / "key.pub")
    assert code == 2 and "no signature" in err
    code, _out, err = _verify(bundle / "report.json", bundle / "report.md",
                              "--signature", str(signed / "a" / "report.json.sig"))
    assert code == 2 and "not a PEM public key" in err


def test_the_ledger_must_still_hold_the_certified_heads(signed: Path, tmp_path: Path) -> None:
    rewritten = f"sqlite:///{tmp_path / 'rewritten.db'}"
    with Store.open(rewritten, create=True) as store:
        record_experiment(store, A, root=99)  # the same run id, recomputed chains
    report = signed / "a" / "report.json"
    honest = run_cli("--db", f"sqlite:///{signed / 'ledger.db'}", "verify-report", str(report),
                     "--public-key", str(signed / "key.pub"), "--against-ledger")
    assert honest.returncode == 0, honest.stderr
    forged = run_cli("--db", rewritten, "verify-report", str(report), "--public-key",
                     str(signed / "key.pub"), "--against-ledger", "--json")
    assert forged.returncode == 1
    assert any("run head" in failure for failure in json.loads(forged.stdout)["failures"])


def test_a_private_key_others_can_read_is_refused(tmp_path: Path, signed: Path) -> None:
    key = tmp_path / "loose.key"
    shutil.copy(signed / "key.key", key)
    key.chmod(0o644)
    done = run_cli("--db", f"sqlite:///{signed / 'ledger.db'}", "report", A, "-o",
                   str(tmp_path / "r.json"), "--sign-key", str(key), "--no-record")
    assert done.returncode == 2 and "readable by others" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_public_key_given_to_sign_is_named_a_public_key_whatever_its_mode(
        tmp_path: Path, signed: Path) -> None:
    """--sign-key key.pub (the file keygen writes 0644 beside the private key) used to be told
    'readable by others … chmod 600 it first', and only after the chmod that it was no private
    key: it is now named a public key at once, in either mode."""
    public = tmp_path / "validator.pub"
    shutil.copy(signed / "key.pub", public)
    public.chmod(0o644)
    done = run_cli("--db", f"sqlite:///{signed / 'ledger.db'}", "report", A, "-o",
                   str(tmp_path / "r.json"), "--sign-key", str(public), "--no-record")
    assert done.returncode == 2
    assert f"{public} is a public key, not a private key" in done.stderr
    assert "chmod" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r.json").exists()
    public.chmod(0o600)
    with pytest.raises(BadInputError, match="is a public key, not a private key"):
        load_private_key(public)


def _resign(bundle: Path, signed: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Change the bundle's report with ``change`` and sign it again with the right key (what a
    holder of the key can do): the signature verifies, so only the other checks can fail it.
    SHA256SUMS goes, as the report's bytes changed."""
    path = bundle / "report.json"
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))
    (bundle / "report.json.sig").write_bytes(sign(load_private_key(signed / "key.key"),
                                                  canonical_json(report)))
    (bundle / "SHA256SUMS").unlink()
    return path


def test_a_report_naming_another_key_fails_though_it_verifies(bundle: Path, signed: Path
                                                              ) -> None:
    """R9 names the key that signed the report: a report that verifies with the given key but
    names another one was re-signed by someone else, and must not pass as the named signer's."""
    path = _resign(bundle, signed, lambda report: report["R9"]["signature"].update(
        public_key_sha256="0" * 64))
    outcome = check_report(path, signed / "key.pub")
    assert outcome.signature == "valid" and not outcome.ok
    assert outcome.failures == [f"the report names signing key {'0' * 64}, but it verifies "
                                f"with {fingerprint(load_public_key(signed / 'key.pub'))}"]


def test_a_file_name_in_r0_that_leaves_the_folder_fails(bundle: Path, signed: Path) -> None:
    """R0's file names are checked beside the report: one with a folder in it (``../x``)
    would check a file outside the bundle, so it is a failure, not a file looked at."""
    path = _resign(bundle, signed, lambda report: report["R0"]["files"].append(
        {"name": "../ledger.db", "sha256": "0" * 64}))
    outcome = check_report(path, signed / "key.pub")
    schema, *rest = outcome.failures  # the entry also lacks media_type and role
    assert schema.startswith("the report does not match its schema")
    assert rest == ["R0 lists a file with an unusable name '../ledger.db'"]
    assert "../ledger.db" not in outcome.files


def test_a_signature_file_that_is_not_base64_is_malformed(bundle: Path, signed: Path) -> None:
    """Text that is no base64 Ed25519 signature is a failure saying so (exit 1), never a
    signature handed to the verifier."""
    (bundle / "report.json.sig").write_text("not a signature!\n")
    (bundle / "SHA256SUMS").unlink()
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert outcome.signature == "malformed"
    assert outcome.failures == ["report.json.sig is not a base64 Ed25519 signature"]


@pytest.mark.parametrize("sums", ["rewritten", "removed"])
def test_a_file_altered_with_its_sums_rewritten_or_removed_still_fails(
        bundle: Path, signed: Path, sums: str) -> None:
    """SHA256SUMS is not signed: whoever alters report.html can rewrite its line, or delete
    the file. The SHA-256 that the signed R0 records still fails the altered file."""
    html = bundle / "report.html"
    html.write_text(html.read_text() + "<!-- edited -->")
    listing = bundle / "SHA256SUMS"
    if sums == "removed":
        listing.unlink()
    else:
        digest = file_sha256(html)
        listing.write_text("".join(f"{digest}  report.html\n" if line.endswith("  report.html")
                                   else f"{line}\n"
                                   for line in listing.read_text().splitlines()))
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert outcome.signature == "valid" and outcome.files["report.html"] == "altered"
    assert outcome.failures == ["report.html does not have the SHA-256 the report records"]


@pytest.mark.parametrize("line,failure", [
    (f"{'0' * 64}  gone.html", "gone.html is listed in SHA256SUMS but missing"),
    ("0123abcd  report.html", "SHA256SUMS line {number} is malformed"),
    (f"{'0' * 64}  ../report.json", "SHA256SUMS line {number} is malformed"),
    ("no separator at all", "SHA256SUMS line {number} is malformed")])
def test_a_sha256sums_line_that_checks_nothing_fails(bundle: Path, signed: Path, line: str,
                                                    failure: str) -> None:
    """Every SHA256SUMS line must name a file beside the report and match it: a line naming a
    missing file, a short digest or a path elsewhere is a failure, not skipped in silence."""
    listing = bundle / "SHA256SUMS"
    number = len(listing.read_text().splitlines()) + 1
    with listing.open("a") as handle:
        handle.write(f"{line}\n")
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert outcome.failures == [failure.format(number=number)]


@pytest.mark.parametrize("change", [
    lambda text: text.replace("\n", "\x0b", 1),
    lambda text: text.replace("\n", " \n", 1),
    lambda text: text.replace("  ", "   ", 1),
    lambda text: text.upper().replace("  REPORT", "  report", 1),
    lambda text: text.replace("\n", "\r\n", 1),
    lambda text: text.replace("\n", "\r", 1)],
    ids=["line-ending-x0b", "space-after-name", "three-spaces", "upper-case-digest",
         "line-ending-crlf", "line-ending-cr"])
def test_a_sha256sums_changed_in_a_byte_a_lenient_reading_skips_fails(
        bundle: Path, signed: Path, change: Callable[[str], str]) -> None:
    """SHA256SUMS is read as written: a line ending flipped to \\x0b, a space added beside the
    name or an upper-case digest changes the file, so it fails (found by the report properties:
    ``splitlines`` and ``strip`` read the flipped file as the original; and \r\n or \r line
    endings, read by ``read_text``'s universal newlines as \n, verified)."""
    listing = bundle / "SHA256SUMS"
    original = listing.read_bytes()
    listing.write_bytes(change(original.decode()).encode())
    assert listing.read_bytes() != original
    outcome = check_report(bundle / "report.json", signed / "key.pub")
    assert not outcome.ok and any("SHA256SUMS" in failure for failure in outcome.failures)


@pytest.mark.parametrize("exp", [None, 5])
def test_a_report_naming_no_experiment_fails_against_the_ledger(bundle: Path, signed: Path,
                                                               exp: Any) -> None:
    """--against-ledger looks the report's R1 experiment up: a signed report without one (or
    with one that is not text) fails saying so, rather than pass or stop with a traceback."""
    path = _resign(bundle, signed, lambda report: report["R1"].update(exp=exp))
    with Store.open(f"sqlite:///{signed / 'ledger.db'}") as store:
        outcome = check_report(path, signed / "key.pub", store=store)
    assert outcome.exp is None and outcome.failures == [
        f"the report does not match its schema (schemas/report.v1.json): R1/exp: "
        f"{json.dumps(exp)} is not of type string", "the report names no experiment"]


@pytest.mark.parametrize("ledger", ["without the run", "with the run incomplete"])
def test_a_ledger_that_lost_the_certified_run_fails(signed: Path, tmp_path: Path,
                                                   ledger: str) -> None:
    """The run the report certifies must still be in the ledger, and still complete: a ledger
    without it, or with its run_completed cut off, fails the report's head."""
    report = json.loads((signed / "a" / "report.json").read_text())
    with Store.open(f"sqlite:///{tmp_path / 'other.db'}", create=True) as store:
        record_experiment(store, B if ledger == "without the run" else A, complete=False)
        outcome = check_report(signed / "a" / "report.json", signed / "key.pub", store=store)
        expected = (f"the ledger {store.url} holds no experiment {A}"
                    if ledger == "without the run" else
                    f"the ledger's run head of {A} is missing, the report certifies "
                    f"{report['R9']['run_head']}")
    assert outcome.signature == "valid" and outcome.failures[0] == expected


def test_an_incomplete_run_is_held_to_its_stream_heads(tmp_path: Path) -> None:
    """An incomplete run has no run head, so its stream heads are all the report certifies:
    the unchanged ledger passes (its audit stream grown by this very export: the audit stream
    is not held to its head), and a rewrite with as many events per stream fails each."""
    generate_key_pair(tmp_path / "key")
    bundle = tmp_path / "bundle"
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}", create=True) as store:
        record_experiment(store, A, complete=False)
        record_audit(store, A, REPORT_EXPORTED, {"report_id": "rpt-earlier"})
        export_report(store, A, ReportOptions(), bundle=bundle,
                      key=load_private_key(tmp_path / "key.key"))
        assert store.stream_heads(A)["audit"].count == 2
        kept = check_report(bundle / "report.json", tmp_path / "key.pub", store=store)
    assert kept.ok and kept.notes == [
        "the ledger still holds the heads this report certifies"]
    with Store.open(f"sqlite:///{tmp_path / 'rewritten.db'}", create=True) as store:
        record_experiment(store, A, root=99, complete=False)
        rewritten = check_report(bundle / "report.json", tmp_path / "key.pub", store=store)
    assert [failure.split(" (")[0] for failure in rewritten.failures] == [
        f"stream {stream} of {A} in the ledger differs from the report"
        for stream in ("main", "worker-0", "worker-1")]


def test_a_run_resumed_after_its_report_still_holds_the_certified_heads(tmp_path: Path) -> None:
    """A report of an incomplete run certifies its stream heads; the run resumed and completed
    afterwards still holds each of them, at the same position, with more events after it.
    verify-report --against-ledger said FAILED, "stream main … differs from the report", as
    for a rewritten chain. A grown stream passes, saying it grew; one with an event cut
    before the certified head still fails."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    generate_key_pair(tmp_path / "key")
    features = np.arange(40.0).reshape(20, 2)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("resumed-later", seed=5)
        batches = TrainingDataIterator(exp.register_dataset("rows", features), 5, experiment=exp)
        list(batches)
        state = batches.state_dict()
        exp.suspend()
        with Store.open(url) as store:
            export_report(store, exp.id, ReportOptions(), bundle=tmp_path / "bundle",
                          key=load_private_key(tmp_path / "key.key"))
        with manager.resume_experiment(exp.id) as resumed:
            batches = TrainingDataIterator(resumed.register_dataset("rows", features), 5,
                                           experiment=resumed)
            batches.load_state_dict(state)
            list(batches)
    report = tmp_path / "bundle" / "report.json"
    with Store.open(url) as store:
        grown = check_report(report, tmp_path / "key.pub", store=store)
    assert grown.ok, grown.failures
    assert grown.notes == [
        f"stream main of {exp.id} has {len(stored_main(url, exp.id)) - 3} more event(s) than "
        f"the report certifies: the run went on after the report",
        "the ledger still holds the heads this report certifies"]
    shutil.copy(tmp_path / "ledger.db", tmp_path / "cut.db")
    with Store.open(f"sqlite:///{tmp_path / 'cut.db'}") as store:
        drop_append_only_triggers(store)
        delete_event(store, exp.id, "main", 1)
        cut = check_report(report, tmp_path / "key.pub", store=store)
    assert [failure.split(" (")[0] for failure in cut.failures] == [
        f"the ledger fails verification: {exp.id} stream main seq 1: event missing",
        f"stream main of {exp.id} in the ledger differs from the report"]


def stored_main(url: str, exp: str) -> list[int]:
    """The seqs of the main stream of ``exp``."""
    with Store.open(url) as store:
        return [row[0] for row in store.iter_segment_rows(exp, "main", 0, 2**62, ("seq",))]


@pytest.mark.parametrize("change", ["schema", "summary", "R14"])
def test_json_that_is_not_quite_one_of_our_reports_is_refused(bundle: Path, signed: Path,
                                                              change: str) -> None:
    """A report of another schema id, or one whose summary or any one section is not a map, is
    not checked at all: bad input (exit 2), not a verdict on its signature."""
    path = bundle / "report.json"
    report = json.loads(path.read_text())
    report[change] = "ledger/report/v2" if change == "schema" else []
    path.write_text(json.dumps(report))
    with pytest.raises(BadInputError, match="is not a ledger/report/v1 report"):
        check_report(path, signed / "key.pub")


def test_an_event_cut_from_the_middle_of_a_stream_fails_against_the_ledger(signed: Path,
                                                                          tmp_path: Path) -> None:
    """An event deleted from the middle of a stream leaves its head (and the run head) as they
    were: only the stream's count, which R9 certifies, shows it."""
    shutil.copy(signed / "ledger.db", tmp_path / "ledger.db")
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        drop_append_only_triggers(store)
        delete_event(store, A, "worker-0", 0)
        outcome = check_report(signed / "a" / "report.json", signed / "key.pub", store=store)
    assert [failure.split(" (")[0] for failure in outcome.failures] == [
        f"the ledger fails verification: {A} stream worker-0 seq 0: event missing",
        f"stream worker-0 of {A} in the ledger differs from the report"]


def test_a_ledger_edited_under_the_certified_heads_fails_against_the_ledger(
        signed: Path, tmp_path: Path) -> None:
    """A row edited without touching its hash column keeps every head the report certifies:
    verify-report --against-ledger said OK of a ledger `ledger verify` fails. The run's
    chains are verified too."""
    shutil.copy(signed / "ledger.db", tmp_path / "ledger.db")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url) as store:
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET output = :forged WHERE exp = :exp AND "
                "stream = 'worker-0' AND seq = 0", forged=bytes(32), exp=A)
        heads = {name: head.head for name, head in store.stream_heads(A).items()}
    with Store.open(f"sqlite:///{signed / 'ledger.db'}") as honest:
        assert heads == {name: head.head for name, head in honest.stream_heads(A).items()}
    checked = run_cli("--db", url, "verify-report", str(signed / "a" / "report.json"),
                      "--public-key", str(signed / "key.pub"), "--against-ledger")
    assert checked.returncode == 1
    assert checked.stderr == (f"ledger: check failed: the ledger fails verification: {A} "
                              f"stream worker-0 seq 0: column output differs from the body\n")
    assert run_cli("--db", url, "verify", A).returncode == 1
    with Store.open(url) as store:  # a report that found the edit describes the ledger as is
        export_report(store, A, ReportOptions(), bundle=tmp_path / "b",
                      key=load_private_key(signed / "key.key"))
        found = check_report(tmp_path / "b" / "report.json", signed / "key.pub", store=store)
    assert found.ok, found.failures
    assert found.notes[0] == "the ledger fails verification with the 1 finding(s) the report lists"


def test_keygen_into_a_missing_folder_says_so_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"folder .*missing does not exist"):
        generate_key_pair(tmp_path / "missing" / "k")
    assert list(tmp_path.iterdir()) == []


def test_keygen_that_cannot_write_the_public_key_leaves_no_private_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = signing._write_new

    def write(path: Path, data: bytes, mode: int) -> None:
        if path.suffix == ".pub":
            raise BadInputError(f"cannot write {path}: No space left on device")
        real_write(path, data, mode)

    monkeypatch.setattr(signing, "_write_new", write)
    with pytest.raises(BadInputError, match="No space left"):
        generate_key_pair(tmp_path / "k")
    assert list(tmp_path.iterdir()) == []


def test_keygen_whose_folder_cannot_be_flushed_leaves_no_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def flush_folder(_folder: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(signing, "flush_folder", flush_folder)
    with pytest.raises(BadInputError, match="cannot write .*k.key: Input/output error"):
        generate_key_pair(tmp_path / "k")
    assert list(tmp_path.iterdir()) == []


def test_keygen_never_overwrites_a_key_that_appears_while_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check for existing keys comes before the key is made: a key file written by
    another process in between is refused at creation, not truncated."""
    class Racing:
        @staticmethod
        def generate() -> Ed25519PrivateKey:
            (tmp_path / "k.key").write_text("another key")
            return Ed25519PrivateKey.generate()

    monkeypatch.setattr(signing, "Ed25519PrivateKey", Racing)
    with pytest.raises(BadInputError, match="exists: refusing to overwrite a key"):
        generate_key_pair(tmp_path / "k")
    assert (tmp_path / "k.key").read_text() == "another key"
    assert not (tmp_path / "k.pub").exists()


def test_keygen_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o277)
    try:
        generate_key_pair(tmp_path / "k")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644


def test_keygen_interrupted_while_writing_leaves_no_key(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(_descriptor: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        generate_key_pair(tmp_path / "k")
    assert list(tmp_path.iterdir()) == []


def test_a_small_file_may_hold_its_limit_and_not_one_byte_more(tmp_path: Path) -> None:
    path = tmp_path / "key.pub"
    path.write_bytes(b"x" * signing.SMALL_FILE_BYTES)
    assert len(signing.read_regular_file(path, "public key")) == signing.SMALL_FILE_BYTES
    path.write_bytes(b"x" * (signing.SMALL_FILE_BYTES + 1))
    with pytest.raises(BadInputError, match="larger than 1,048,576 bytes"):
        signing.read_regular_file(path, "public key")


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o610, 0o604, 0o602, 0o601])
def test_a_private_key_any_group_or_other_bit_is_refused(signed: Path, tmp_path: Path,
                                                         mode: int) -> None:
    key = tmp_path / "loose.key"
    shutil.copy(signed / "key.key", key)
    key.chmod(mode)
    with pytest.raises(BadInputError, match=f"readable by others \\(mode {mode:o}\\)"):
        load_private_key(key)


def test_keys_of_another_algorithm_are_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "ec.key").chmod(0o600)
    (tmp_path / "ec.pub").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(BadInputError, match="is not an Ed25519 private key"):
        load_private_key(tmp_path / "ec.key")
    with pytest.raises(BadInputError, match="is not an Ed25519 public key"):
        load_public_key(tmp_path / "ec.pub")


def test_a_signature_file_is_one_line_of_strict_base64_of_64_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    text = sign(key, b"report")
    assert text.endswith(b"\n") and text.count(b"\n") == 1
    assert signing.verify_signature(key.public_key(), signing.signature_bytes(text), b"report")
    assert signing.signature_bytes(text[:10] + b"!" + text[10:]) is None
    assert signing.signature_bytes(base64.b64encode(b"\x00" * 63)) is None
    assert not signing.verify_signature(key.public_key(), signing.signature_bytes(text),
                                        b"report!")


def test_a_signed_export_is_recorded_with_its_digests_and_signer(signed: Path,
                                                                 tmp_path: Path) -> None:
    """The report_exported event names the files written with their SHA-256, the canonical
    report's SHA-256 (also the event's output digest), the format and the signing key."""
    shutil.copy(signed / "ledger.db", tmp_path / "ledger.db")
    key = load_private_key(signed / "key.key")
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        result = export_report(store, A, ReportOptions(), output=tmp_path / "r.json", key=key)
        body = store.first_event_body(A, REPORT_EXPORTED)
    written = json.loads((tmp_path / "r.json").read_text())
    canonical = hashlib.sha256(canonical_json(written)).hexdigest()
    params = body["params"]
    assert result.report_sha256 == params["report_sha256"] == canonical
    assert body["output"] == bytes.fromhex(canonical)
    assert params["files"] == {"r.json": file_sha256(tmp_path / "r.json"),
                               "r.json.sig": file_sha256(tmp_path / "r.json.sig")}
    assert (params["formats"], params["bundle"], params["signed"]) == (["json"], False, True)
    assert params["public_key_sha256"] == fingerprint(key.public_key())


def test_the_expected_experiment_is_checked_against_the_ledger_too(signed: Path) -> None:
    done = run_cli("--db", f"sqlite:///{signed / 'ledger.db'}", "verify-report",
                   str(signed / "b" / "report.json"), "--public-key", str(signed / "key.pub"),
                   "--exp", A, "--against-ledger")
    assert done.returncode == 1 and f"report is of experiment {B}, not {A}" in done.stderr


def test_keygen_names_each_key_file_and_the_fingerprint(tmp_path: Path) -> None:
    info = json.loads(run_cli("keygen", "--out", str(tmp_path / "j"), "--json").stdout)
    assert (info["private_key"], info["public_key"]) == (str(tmp_path / "j.key"),
                                                         str(tmp_path / "j.pub"))
    done = run_cli("keygen", "--out", str(tmp_path / "t"))
    assert done.returncode == 0, done.stderr
    digest = fingerprint(load_public_key(tmp_path / "t.pub"))
    assert done.stdout.splitlines() == [
        f"private key  {tmp_path / 't.key'}  (mode 600: keep it secret)",
        f"public key   {tmp_path / 't.pub'}",
        f"fingerprint  {digest}  (SHA-256 of the raw public key)"]


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsigned bundle (u/) of experiment A, exported without a key, and its ledger."""
    folder = tmp_path_factory.mktemp("unsigned")
    with Store.open(f"sqlite:///{folder / 'ledger.db'}", create=True) as store:
        record_experiment(store, A, root=1)
        export_report(store, A, ReportOptions(record=False), bundle=folder / "u")
    return folder


def test_an_unsigned_bundle_verifies_with_unsigned_and_says_nothing_vouches_for_it(
        unsigned: Path) -> None:
    done = run_cli("--db", f"sqlite:///{unsigned / 'ledger.db'}", "verify-report",
                   str(unsigned / "u" / "report.json"), "--unsigned", "--exp", A,
                   "--against-ledger")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("OK: ") and "signature not checked: --unsigned" in first
    assert "nothing vouches for who wrote this report" in first
    # as README quotes it: the line named --unsigned twice ("--unsigned (--unsigned: …")
    assert first.endswith("; signature not checked: --unsigned (nothing vouches for who wrote "
                          "this report)")
    listed = json.loads((unsigned / "u" / "report.json").read_text())["R0"]["files"]
    assert listed and all(f"  {entry['name']}: ok" in done.stdout for entry in listed)
    as_json = json.loads(run_cli("verify-report", str(unsigned / "u" / "report.json"),
                                 "--unsigned", "--json").stdout)
    assert as_json["ok"] and as_json["signature"] == "not checked: --unsigned"


def test_an_unsigned_bundle_still_fails_on_a_changed_file_experiment_or_ledger(
        unsigned: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(unsigned / "u", tmp_path / "u"))
    report = copy / "report.json"
    assert run_cli("verify-report", str(report), "--unsigned", "--exp", B).returncode == 1
    rewritten = f"sqlite:///{tmp_path / 'rewritten.db'}"
    with Store.open(rewritten, create=True) as store:
        record_experiment(store, A, root=99)  # the same run id, recomputed chains
    forged = run_cli("--db", rewritten, "verify-report", str(report), "--unsigned",
                     "--against-ledger")
    assert forged.returncode == 1 and "run head" in forged.stderr
    markdown = copy / "report.md"
    markdown.write_bytes(markdown.read_bytes() + b" ")
    changed = run_cli("verify-report", str(report), "--unsigned")
    assert changed.returncode == 1 and "report.md" in changed.stderr
    assert len(changed.stderr.splitlines()) == 1


def test_a_signed_report_checked_unsigned_names_the_key_it_skipped(bundle: Path,
                                                                   signed: Path) -> None:
    done = run_cli("verify-report", str(bundle / "report.json"), "--unsigned")
    named = fingerprint(load_public_key(signed / "key.pub"))
    assert done.returncode == 0, done.stderr
    assert f"note: the report names signing key {named}: give --public-key" in done.stdout


@pytest.mark.parametrize("options, message", [
    ((), "give --public-key KEY to check the report's signature, or --unsigned"),
    (("--unsigned", "--public-key", "KEY"), "it cannot go with --public-key"),
    (("--unsigned", "--signature", "SIG"), "it cannot go with --signature"),
])
def test_verify_report_needs_a_key_or_unsigned_and_not_both(unsigned: Path,
                                                            options: tuple[str, ...],
                                                            message: str) -> None:
    done = run_cli("verify-report", str(unsigned / "u" / "report.json"), *options)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_verify_report_refuses_a_db_that_nothing_reads(unsigned: Path, where: str) -> None:
    """Without --against-ledger nothing reads the ledger --db names: an auditor giving it would
    believe the report was checked against that ledger."""
    report, db = str(unsigned / "u" / "report.json"), f"sqlite:///{unsigned / 'ledger.db'}"
    arguments = (["--db", db, "verify-report", report, "--unsigned"] if where == "before"
                 else ["verify-report", report, "--unsigned", "--db", db])
    done = run_cli(*arguments)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "ledger: error: --db names a ledger, but only --against-ledger reads one: add it, or "
        "drop --db"]
    assert run_cli(*arguments, "--against-ledger").returncode == 0
    from_environment = run_cli("verify-report", report, "--unsigned",
                               env={**os.environ, "LEDGER_URL": db})
    assert from_environment.returncode == 0, from_environment.stderr


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_keygen_refuses_a_db_it_does_not_read(tmp_path: Path, json_flag: list[str]) -> None:
    """``ledger --db URL keygen --out k`` took the --db that nothing reads without a word, where
    verify-report refuses one: refused the same way, nothing written. LEDGER_URL, set for
    every command, is not refused."""
    done = run_cli("--db", f"sqlite:///{tmp_path / 'ledger.db'}", "keygen", "--out", "k",
                   *json_flag, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "ledger: error: --db names a ledger, but keygen reads none: drop --db"]
    assert list(tmp_path.iterdir()) == []
    if json_flag:
        assert json.loads(done.stdout)["error"]["exit_code"] == 2
    else:
        assert done.stdout == ""
    environment = run_cli("keygen", "--out", "k", cwd=tmp_path,
                          env={**os.environ, "LEDGER_URL": f"sqlite:///{tmp_path / 'l.db'}"})
    assert environment.returncode == 0, environment.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["k.key", "k.pub"]

