"""Compliance reports: what was trained, on what, with which randomness, and whether a replay
reproduced it — as schema-validated JSON, self-contained HTML and Markdown, signed (Ed25519),
with in-toto attestations. See ``REPORT.md`` sections R0–R14 and README "Compliance reports".

Dependencies point one way: ``cli → report → replay → ledger``.
"""
