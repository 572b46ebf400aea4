"""The HTML report in a real headless browser (Debian's chromium): it renders its text, runs no
script, and makes no request — checked in the browser's own network log. Skips when chromium is
absent (``.ci/run`` installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ledger.store import Store
from ledger_builders import record_experiment
from report.html import render_html
from report_helpers import report_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get "
                                                         "install chromium; .ci/run does)")
SCRIPT = "<script>document.title='owned'</script>"


def _open(page: Path, profile: Path) -> tuple[str, list[dict[str, Any]]]:
    """Load ``page`` headless: (the DOM after load, the requests the page itself started)."""
    netlog = profile.with_suffix(".netlog.json")
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--log-net-log={netlog}",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads(netlog.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    # The browser's own traffic (component updates and the like) has no page as initiator.
    started = [event["params"] for event in log["events"]
               if names.get(event["type"]) == "URL_REQUEST_START_JOB"
               and event.get("params", {}).get("initiator", "not an origin") != "not an origin"]
    return done.stdout, started


def test_the_report_renders_its_text_and_requests_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, extra_params={"hyperparams": {"note": SCRIPT}})
    page = tmp_path / "report.html"
    page.write_text(render_html(report_of(url, recorded.exp)), encoding="utf-8")
    dom, requests = _open(page, tmp_path / "profile")
    assert requests == []
    assert "<title>Compliance report — " in dom and "owned" not in dom.split("</title>")[0]
    for text in ("R14 Crosswalk", "Replay verdict:", "NOT REPLAYED", "VERIFIED",
                 "R7 Randomness inventory", "Seed derivation tree", "val_auc"):
        assert text in dom, text
    assert "&lt;script&gt;document.title='owned'&lt;/script&gt;" in dom
    assert "<script" not in dom and dom.count("<svg") == 1


def test_the_report_prints(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
    page = tmp_path / "report.html"
    page.write_text(render_html(report_of(url, recorded.exp)), encoding="utf-8")
    pdf = tmp_path / "report.pdf"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--no-pdf-header-footer",
         f"--print-to-pdf={pdf}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 3


def test_the_network_check_sees_a_page_that_loads_something(tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/pixel.png">'
                    "<p>leaky</p></body></html>", encoding="utf-8")
    dom, requests = _open(page, tmp_path / "profile")
    assert "leaky" in dom
    assert [request["url"] for request in requests] == ["http://127.0.0.1:9/pixel.png"]
