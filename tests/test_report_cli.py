"""`ledger report` end to end: stdout and files, bundles, --replay, errors and exit codes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import run_cli
from ledger.store import Store
from replay_helpers import record_run
from report_helpers import schema_errors


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(folder holding ledger.db and ledger-data/, experiment id) of one recorded run."""
    folder = tmp_path_factory.mktemp("cli")
    exp = record_run(f"sqlite:///{folder / 'ledger.db'}", folder / "ledger-data")
    return folder, exp


def _ledger(folder: Path, *args: str):  # noqa: ANN202 - CompletedProcess
    return run_cli("--db", f"sqlite:///{folder / 'ledger.db'}", *args, cwd=folder)


def test_the_report_goes_to_stdout_as_json(run: tuple[Path, str]) -> None:
    folder, exp = run
    done = _ledger(folder, "report", exp, "--no-record")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert schema_errors(report) == [] and report["R1"]["exp"] == exp


def test_the_report_on_stdout_calls_no_deprecated_click_api(run: tuple[Path, str]) -> None:
    """click 8.5 deprecates click.get_binary_stream (gone in click 9): the report went to
    stdout through it, so with DeprecationWarning an error it failed (exit 2) after being
    built, and click 9 would fail it every time."""
    folder, exp = run
    done = run_cli("--db", f"sqlite:///{folder / 'ledger.db'}", "report", exp, "--no-record",
                   cwd=folder, env={"PYTHONWARNINGS": "error::DeprecationWarning"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["R1"]["exp"] == exp


@pytest.mark.parametrize("fmt,start", [("html", "<!DOCTYPE html>"), ("md", "# Compliance")])
def test_html_and_markdown_go_to_a_file(run: tuple[Path, str], tmp_path: Path, fmt: str,
                                        start: str) -> None:
    folder, exp = run
    target = tmp_path / f"report.{fmt}"
    done = _ledger(folder, "report", exp, "--format", fmt, "-o", str(target), "--no-record")
    assert done.returncode == 0, done.stderr
    assert target.read_text().startswith(start) and f"wrote {target}" in done.stdout


@pytest.mark.parametrize("name,start", [("report.html", "<!DOCTYPE html>"),
                                        ("REPORT.HTM", "<!DOCTYPE html>"),
                                        ("report.md", "# Compliance"),
                                        ("report.markdown", "# Compliance"),
                                        ("report.json", "{"), ("report.txt", "{")])
def test_without_format_the_output_file_suffix_chooses_it(run: tuple[Path, str],
                                                          tmp_path: Path, name: str,
                                                          start: str) -> None:
    """`-o report.html` wrote JSON into the .html file: the format now follows the suffix."""
    folder, exp = run
    target = tmp_path / name
    done = _ledger(folder, "report", exp, "-o", str(target), "--no-record")
    assert done.returncode == 0, done.stderr
    assert target.read_text().startswith(start)


def test_an_explicit_format_wins_over_the_output_file_suffix(run: tuple[Path, str],
                                                             tmp_path: Path) -> None:
    folder, exp = run
    target = tmp_path / "report.html"
    done = _ledger(folder, "report", exp, "--format", "md", "-o", str(target), "--no-record")
    assert done.returncode == 0, done.stderr
    assert target.read_text().startswith("# Compliance")


def test_a_replayed_bundle_is_recorded_in_the_history(run: tuple[Path, str],
                                                      tmp_path: Path) -> None:
    folder, exp = run
    done = _ledger(folder, "report", exp, "--replay", "--bundle", str(tmp_path / "b"), "--json",
                   "--responsible", "Ada Lovelace", "--role", "model validator")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["summary"]["replay"] == "PASSED" and len(summary["files"]) == 7
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["R13"]["responsible"] == [{"name": "Ada Lovelace", "role": "model validator"}]
    statement = json.loads((tmp_path / "b" / "replay.intoto.json").read_text())
    assert statement["predicate"]["result"] == "PASSED"
    later = json.loads(_ledger(folder, "report", exp, "--no-record").stdout)
    kinds = [event["kind"] for event in later["R10"]["events"]]
    assert kinds[-2:] == ["replay_recorded", "report_exported"]
    assert later["R10"]["events"][-1]["outcome"] == "PASSED"
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        exported = store.first_event_body(exp, "report_exported")["params"]
    assert exported["report_id"] == report["R0"]["report_id"]
    assert (exported["formats"], exported["bundle"]) == (["json", "html", "md"], True)
    assert exported["files"]["report.json"] == summary["files"][5]["sha256"]


@pytest.mark.parametrize("args,message", [
    (("report", "exp-000000000000"), "unknown experiment"),
    (("report", "not an id!"), "malformed experiment id"),
    (("report", "{exp}", "--sign-key", "{folder}/nothing.key"), "cannot read private key"),
    (("report", "{exp}", "--format", "html", "--json"), "cannot go with --format html"),
    (("report", "{exp}", "--bundle", "{folder}"), "is not empty"),
    (("report", "{exp}", "--bundle", "{folder}/b", "-o", "{folder}/r.json"), "not both"),
    (("report", "{exp}", "--bundle", "{folder}/b", "--appendix", "{folder}/a.ndjson"),
     "drop --appendix"),
    (("report", "{exp}", "-o", "{folder}/missing/r.json"), "does not exist"),
    (("report", "{exp}", "-o", "{folder}/r.json", "--appendix", "{folder}/missing/a.ndjson"),
     "does not exist"),
    (("report", "{exp}", "--bundle", "{folder}/missing/bundle"), "does not exist"),
    (("report", "{exp}", "-o", "{folder}/pipe"), "not a regular file"),
    (("report", "{exp}", "--retain-from", "9990-01-01"),  # + 120 months: add_months looped
     "(120 months from 9990-01-01) ends outside the years a date can hold (1–9999)"),
    (("report", "{exp}", "-o", "{folder}/r.json", "--retain-from", "9999-12-31",
      "--retain-years", "1"), "(12 months from 9999-12-31) ends outside the years"),
    (("report", "{exp}", "-o", "{folder}/r.json", "--appendix", "{folder}/pipe"),
     "not a regular file"),
])
def test_bad_input_exits_2_with_one_line(run: tuple[Path, str], args: tuple[str, ...],
                                         message: str) -> None:
    folder, exp = run
    pipe = folder / "pipe"
    if not pipe.exists():
        os.mkfifo(pipe)
    before = sorted(path.name for path in folder.iterdir())
    done = _ledger(folder, *(arg.format(exp=exp, folder=folder) for arg in args))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stdout == "" if "--json" not in args else (
        json.loads(done.stdout)["error"]["exit_code"] == 2)
    assert sorted(path.name for path in folder.iterdir()) == before  # nothing written
    assert stat.S_ISFIFO(pipe.stat().st_mode)  # a rename over it would have replaced the pipe


@pytest.mark.parametrize("args,message", [
    (("--jobs", "1"), "--jobs is for --replay only"),
    (("-j", "2", "-o", "{folder}/r.json"), "--jobs is for --replay only"),
    (("--trust", "my_ops", "--bundle", "{folder}/b"), "--trust is for --replay only"),
    (("--full-appendix",), "--full-appendix needs an appendix"),
    (("--full-appendix", "-o", "{folder}/r.json"), "--full-appendix needs an appendix"),
    (("--no-record", "--take-over"), "--take-over takes the audit stream over to record"),
    (("--bundle", "{folder}/b", "--format", "md"), "a bundle holds JSON, HTML and Markdown"),
    (("--role", "model validator", "-o", "{folder}/r.json"), "give --responsible too"),
    (("--responsible", "  ", "-o", "{folder}/r.json"), "got a blank --responsible"),
    (("--responsible", "", "--role", "v", "-o", "{folder}/r.json"),
     "got an empty --responsible"),
    (("--generated-by", " ", "-o", "{folder}/r.json"), "got a blank --generated-by"),
])
def test_an_option_that_would_change_nothing_is_refused(run: tuple[Path, str],
                                                        args: tuple[str, ...],
                                                        message: str) -> None:
    """`--jobs` and `--trust` act only with `--replay`, `--full-appendix` only on an appendix
    written, `--format` only on one file or stdout (a bundle wrote all three formats), `--role`
    only with the `--responsible` person it is the role of (R13 left both out), and a blank
    `--responsible` (R13 named "  " as the person signing off): without them
    each was silently ignored (exit 0), so an auditor believed the report was made with them.
    Now exit 2, one line, nothing written or recorded."""
    folder, exp = run
    before = sorted(path.name for path in folder.iterdir())
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        audit_before = store.counts_by_kind(exp).get("report_exported", 0)
    done = _ledger(folder, "report", exp, *(arg.format(folder=folder) for arg in args))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert sorted(path.name for path in folder.iterdir()) == before
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        assert store.counts_by_kind(exp).get("report_exported", 0) == audit_before


def test_replay_refuses_take_over_with_no_record_before_it_replays(run: tuple[Path, str]
                                                                  ) -> None:
    """Nothing is recorded with --no-record, so --take-over would be ignored: refused."""
    folder, exp = run
    done = _ledger(folder, "replay", exp, "--no-record", "--take-over", "--json")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "it cannot go with --no-record" in done.stderr
    assert json.loads(done.stdout)["error"]["exit_code"] == 2


def test_full_appendix_with_an_appendix_or_a_bundle_puts_every_body_in_it(
        run: tuple[Path, str], tmp_path: Path) -> None:
    """The options the refusal above leaves: with an appendix written, `--full-appendix`
    adds each event's body to its lines."""
    folder, exp = run
    appendix = tmp_path / "events.ndjson"
    done = _ledger(folder, "report", exp, "--no-record", "-o", str(tmp_path / "r.json"),
                   "--appendix", str(appendix), "--full-appendix")
    assert done.returncode == 0, done.stderr
    done = _ledger(folder, "report", exp, "--no-record", "--bundle", str(tmp_path / "b"),
                   "--full-appendix")
    assert done.returncode == 0, done.stderr
    for lines in (appendix.read_text(), (tmp_path / "b" / "events.ndjson").read_text()):
        assert all("body" in json.loads(line) for line in lines.splitlines())


def test_a_retention_period_past_9999_is_refused_before_a_replay_runs(run: tuple[Path, str]
                                                                       ) -> None:
    """The retention dates were checked only after ``--replay`` had re-executed the run and
    recorded its certificate: the export failed, but the audit stream had grown."""
    folder, exp = run
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        before = store.counts_by_kind(exp)
    done = _ledger(folder, "report", exp, "--replay", "--retain-from", "9990-01-01")
    assert done.returncode == 2 and "ends outside the years" in done.stderr, done.stderr
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        assert store.counts_by_kind(exp) == before


def test_a_bundle_folder_left_by_a_killed_export_says_what_it_holds(run: tuple[Path, str]
                                                                    ) -> None:
    folder, exp = run
    bundle = folder / "killed"
    bundle.mkdir()
    (bundle / ".events.ndjson.pd7cj1f0.tmp").write_bytes(b"{}")  # what a SIGKILL leaves
    done = _ledger(folder, "report", exp, "--bundle", str(bundle))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "is not empty (it holds '.events.ndjson.pd7cj1f0.tmp')" in done.stderr  # ls hides it


def test_retention_options_set_r11(run: tuple[Path, str]) -> None:
    folder, exp = run
    done = _ledger(folder, "report", exp, "--no-record", "--retention-class", "logs",
                   "--retain-years", "2", "--retain-from", "2027-01-31")
    assert done.returncode == 0, done.stderr
    r11 = json.loads(done.stdout)["R11"]
    assert (r11["class"], r11["retain_months"], r11["retain_from"], r11["earliest_deletion"]) == (
        "logs", 24, "2027-01-31", "2029-01-31")


def test_a_report_on_stdout_that_needs_attention_says_so_on_stderr(tmp_path: Path) -> None:
    exp = record_run(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "ledger-data", epochs=1)
    done = _ledger(tmp_path, "report", exp, "--no-record")
    report = json.loads(done.stdout)
    assert report["summary"]["attention"]  # never replayed
    assert done.stderr == (f"ledger: note: {report['summary']['headline']} (see the report's "
                           f"alerts)\n")
