"""Standard attestations of a report, as plain (unsigned) in-toto Statements v1.

- **Provenance** (``predicateType`` SLSA Provenance v1): subject = the final checkpoint digests
  (the run head when the run recorded no checkpoint; the main stream's head when it is also
  incomplete); external parameters = the configuration and the root seed; resolved dependencies
  = the code commit (or, for code installed from a wheel, its release as a ``pkg:pypi`` package
  URL, which no digest backs) and the dataset digests; byproducts = the run head and every
  stream head.
- **Test result** (``predicateType`` in-toto test-result v0.1) of the replay: subject = the run
  head; ``result`` is ``PASSED`` or ``FAILED`` as the replay verdict, and ``WARNED`` when the
  replay was INCONCLUSIVE or not run (the test-result predicate has no such value), with the
  verdict itself in ``warnedTests`` and in ``ledgerVerdict``.

Digests that are not plain SHA-256 of a file carry their domain-tagged algorithm as the
DigestSet key: ``ledger-state-v1`` (checkpoints), ``ledger-dataset-v1`` (datasets) and
``ledger-event-v1`` (event hashes), each a SHA-256 under the tag ``REPORT.md``/README names.
"""

from __future__ import annotations

from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
TEST_RESULT_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
BUILD_TYPE = "urn:reproducibility-ledger:training-run:v1"
BUILDER_ID = "urn:reproducibility-ledger:trainer"
REPLAY_CONFIGURATION = "urn:reproducibility-ledger:replay:v1"


def _head_subject(report: dict[str, Any]) -> list[dict[str, Any]]:
    exp = report["R1"]["exp"]
    if report["R9"]["run_head"]:
        return [{"name": f"{exp}/run-head",
                 "digest": {"ledger-event-v1": report["R9"]["run_head"]}}]
    main = [s for s in report["R9"]["streams"] if s["stream"] == "main"]
    return [{"name": f"{exp}/main-stream-head (incomplete run)",
             "digest": {"ledger-event-v1": main[0]["head"]}}] if main else []


def provenance_statement(report: dict[str, Any]) -> dict[str, Any]:
    """The SLSA Provenance v1 statement of the run."""
    r1, r3, r5, r7 = report["R1"], report["R3"], report["R5"], report["R7"]
    subject = [{"name": f"{r1['exp']}/checkpoint/{c['name']}",
                "digest": {"ledger-state-v1": c["digest"]},
                "annotations": {"epoch": c["epoch"]}}
               for c in r1["checkpoints"]["final"] if c["digest"]] or _head_subject(report)
    dependencies: list[dict[str, Any]] = []
    if r3["commit"]:
        dependencies.append({"name": "code", "digest": {"gitCommit": r3["commit"]},
                             "annotations": {"dirty": r3["dirty"],
                                             "diff_digest": r3["diff_digest"],
                                             "untracked": r3["untracked"]}})
    elif r3.get("distribution"):  # absent from reports made before it was added
        name, version = r3["distribution"]["name"], r3["distribution"]["version"]
        dependencies.append({"name": "code", "uri": f"pkg:pypi/{name}@{version}",
                             "annotations": {"distribution": name, "version": version}})
    for dataset in r5["datasets"]:
        if dataset["digest"]:
            dependencies.append({"name": f"dataset/{dataset['name']}",
                                 "digest": {"ledger-dataset-v1": dataset["digest"]},
                                 "annotations": {"records": dataset["records"],
                                                 "role": dataset["role"],
                                                 "source": dataset["source"]}})
    byproducts = [{"name": f"stream/{s['stream']}", "digest": {"ledger-event-v1": s["head"]},
                   "annotations": {"events": s["count"]}} for s in report["R9"]["streams"]]
    return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PROVENANCE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": {
                        "configuration": report["R6"]["hyperparameters"],
                        "configuration_digest": report["R6"]["digest"],
                        "root_seed": r7["root_seed"], "root_seed_source": r7["root_seed_source"],
                        "seed_scheme": r7["scheme"], "entrypoint": r3["entrypoint"]},
                    "internalParameters": {"python": report["R4"]["python"].get("version"),
                                           "packages": report["R4"]["packages"]},
                    "resolvedDependencies": dependencies},
                "runDetails": {
                    "builder": {"id": BUILDER_ID,
                                "version": {report["R0"]["generator"]["name"]:
                                            report["R0"]["generator"]["version"]}},
                    "metadata": {"invocationId": r1["exp"],
                                 "startedOn": report["R2"]["started_at"],
                                 "finishedOn": report["R2"]["ended_at"]},
                    "byproducts": _head_subject(report) + byproducts}}}


def replay_statement(report: dict[str, Any]) -> dict[str, Any]:
    """The in-toto test-result statement of the replay verdict (subject: the run head).

    A PASSED of another state of the run than the subject (R8 ``head_is_current`` false: a
    recorded replay of another head, or of an incomplete run that went on) is WARNED: no
    replay read the events the subject stands for. So is a PASSED quoted from a ledger that
    fails verification now (a body edited under its stored hash keeps every head): the report
    says so in an alert, and the attestation, read alone, must not certify it."""
    r8 = report["R8"]
    verdict = r8["verdict"]
    name = f"replay {report['R1']['exp']}"
    result = {"PASSED": "PASSED", "FAILED": "FAILED"}.get(verdict, "WARNED")
    why = f" ({r8['reason']})" if r8["reason"] else ""
    if result == "PASSED" and r8["head_is_current"] is False:
        result, why = "WARNED", (" (of another state of the run than the subject: the recorded "
                                 "replay did not read the events stored now)")
    elif result == "PASSED" and report["summary"]["integrity"] != "VERIFIED":
        result, why = "WARNED", (" (quoted from a ledger that fails verification: the recorded "
                                 "replay read the rows as they were, not those stored now)")
    predicate: dict[str, Any] = {
        "result": result,
        "configuration": [{"name": "replay policy", "uri": REPLAY_CONFIGURATION,
                           "annotations": {"rule": r8["policy"]["rule"]}}],
        "passedTests": [name] if result == "PASSED" else [],
        "warnedTests": [f"{name}: {verdict}{why}"] if result == "WARNED" else [],
        "failedTests": [f"{name}: {r8['reason']}" if r8["reason"] else name]
        if result == "FAILED" else [],
        "ledgerVerdict": verdict,
        "replayedBy": r8["replayed_by"], "finishedOn": r8["finished_at"],
        "counts": r8["counts"]}
    return {"_type": STATEMENT_TYPE, "subject": _head_subject(report),
            "predicateType": TEST_RESULT_TYPE, "predicate": predicate}
