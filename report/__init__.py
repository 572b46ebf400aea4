"""Compliance reports: what was trained, on what, with which randomness, and whether a replay
reproduced it — as schema-validated JSON, self-contained HTML and Markdown, signed (Ed25519),
with in-toto attestations. See ``REPORT.md`` sections R0–R14 and README "Compliance reports".

Dependencies point one way: ``cli → report → replay → ledger``.
"""

from report.check import ReportCheck, check_report
from report.export import ExportResult, export_report
from report.html import render_html
from report.markdown import render_markdown
from report.model import SCHEMA_ID, ReportOptions, build_report
from report.signing import generate_key_pair, load_private_key, load_public_key

__all__ = ["SCHEMA_ID", "ExportResult", "ReportCheck", "ReportOptions", "build_report",
           "check_report", "export_report", "generate_key_pair", "load_private_key",
           "load_public_key", "render_html", "render_markdown"]
