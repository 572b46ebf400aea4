"""The tamper-evidence matrix of the README, attack by attack, on one real recorded run.

Each attack is what someone with write access to the database (triggers dropped) can do. Each row
names the mechanism that detects it: ``ledger verify`` (and so ``ledger replay``, which verifies
first), or the signed report (``ledger verify-report --against-ledger``). The one attack that
verification cannot see by design — rewriting history consistently — is caught by the signature.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_cli
from forgery import copy_run
from ledger.store import Store
from ledger_builders import (delete_event, drop_append_only_triggers, execute, flip_byte,
                             forged_row, insert_row, rows)
from replay_helpers import record_run

Attack = Callable[[Store, str, str], None]


def _edit_body(store: Store, exp: str, _other: str) -> None:
    row = rows(store, exp, "main")[4]
    execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND stream = 'main' "
            "AND seq = :seq", body=flip_byte(row["body"], len(row["body"]) // 2), exp=exp,
            seq=row["seq"])


def _edit_column(store: Store, exp: str, _other: str) -> None:
    execute(store, "UPDATE ledger_events SET output = :output WHERE exp = :exp AND "
            "kind = 'epoch_reset'", output=bytes(32), exp=exp)


def _delete_middle(store: Store, exp: str, _other: str) -> None:
    delete_event(store, exp, "main", 5)


def _truncate_tail(store: Store, exp: str, _other: str) -> None:
    last = rows(store, exp, "main")[-2]["seq"]  # the last event before run_completed
    delete_event(store, exp, "main", last)
    delete_event(store, exp, "main", last - 1)


def _insert(store: Store, exp: str, _other: str) -> None:
    chain = rows(store, exp, "main")
    template = chain[6]
    for row in reversed(chain[6:]):
        execute(store, "UPDATE ledger_events SET seq = seq + 1 WHERE exp = :exp AND "
                "stream = 'main' AND seq = :seq", exp=exp, seq=row["seq"])
    insert_row(store, forged_row(template, params={"epoch": 0, "name": "val_auc",
                                                   "value": 0.99}, kind="metric", path=[],
                                 seed=None))


def _swap(store: Store, exp: str, _other: str) -> None:
    chain = rows(store, exp, "main")
    first, second = chain[5], chain[6]
    execute(store, "DELETE FROM ledger_events WHERE exp = :exp AND stream = 'main' AND "
            "seq IN (:a, :b)", exp=exp, a=first["seq"], b=second["seq"])
    insert_row(store, dict(second, seq=first["seq"]))
    insert_row(store, dict(first, seq=second["seq"]))


def _splice(store: Store, exp: str, other: str) -> None:
    foreign = rows(store, other, "main")[5]
    execute(store, "DELETE FROM ledger_events WHERE exp = :exp AND stream = 'main' AND seq = 5",
            exp=exp)
    insert_row(store, dict(foreign, exp=exp))


ATTACKS_VERIFY_CATCHES: dict[str, Attack] = {
    "edit a body": _edit_body,
    "edit an indexed column": _edit_column,
    "delete an event": _delete_middle,
    "truncate a completed run": _truncate_tail,
    "insert an event": _insert,
    "reorder events": _swap,
    "splice in an event of another run": _splice,
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A ledger with two real runs and a signed report bundle of the first."""
    folder = tmp_path_factory.mktemp("matrix")
    url = f"sqlite:///{folder / 'ledger.db'}"
    exp = record_run(url, folder / "data")
    other = record_run(url, folder / "data", seed=7)
    assert run_cli("keygen", "--out", str(folder / "key")).returncode == 0
    made = run_cli("--db", url, "report", exp, "--bundle", str(folder / "bundle"),
                   "--sign-key", str(folder / "key.key"), "--no-record")
    assert made.returncode == 0, made.stderr
    return folder, exp, other


def _attacked_copy(recorded: tuple[Path, str, str], tmp_path: Path) -> str:
    folder, _exp, _other = recorded
    shutil.copyfile(folder / "ledger.db", tmp_path / "ledger.db")
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.mark.parametrize("attack", sorted(ATTACKS_VERIFY_CATCHES))
def test_verify_and_replay_detect(recorded: tuple[Path, str, str], tmp_path: Path,
                                  attack: str) -> None:
    folder, exp, other = recorded
    url = _attacked_copy(recorded, tmp_path)
    with Store.open(url) as store:
        drop_append_only_triggers(store)
        ATTACKS_VERIFY_CATCHES[attack](store, exp, other)
    verified = run_cli("--db", url, "verify", exp)
    assert verified.returncode == 1, f"{attack}: {verified.stdout}"
    assert exp in verified.stdout
    replayed = run_cli("--db", url, "replay", exp, "--data-dir", str(folder / "data"))
    assert replayed.returncode == 1 and "fails verification" in replayed.stderr


def test_recomputing_the_whole_chain_passes_verify_but_not_the_signed_report(
        recorded: tuple[Path, str, str], tmp_path: Path) -> None:
    folder, exp, _other = recorded
    rewritten = f"sqlite:///{tmp_path / 'rewritten.db'}"

    def better_auc(body: dict) -> None:
        if body["kind"] == "metric":
            body["params"]["value"] = 0.999

    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as source, \
            Store.open(rewritten, create=True) as target:
        copy_run(source, exp, target, better_auc)
    assert run_cli("--db", rewritten, "verify", exp).returncode == 0  # consistent: by design
    caught = run_cli("--db", rewritten, "verify-report", str(folder / "bundle" / "report.json"),
                     "--public-key", str(folder / "key.pub"), "--against-ledger")
    assert caught.returncode == 1, caught.stdout + caught.stderr
    honest = run_cli("--db", f"sqlite:///{folder / 'ledger.db'}", "verify-report",
                     str(folder / "bundle" / "report.json"), "--public-key",
                     str(folder / "key.pub"), "--against-ledger")
    assert honest.returncode == 0, honest.stdout + honest.stderr


def test_replacing_a_signed_report_is_caught_by_its_signature(
        recorded: tuple[Path, str, str], tmp_path: Path) -> None:
    folder, _exp, _other = recorded
    bundle = Path(shutil.copytree(folder / "bundle", tmp_path / "bundle"))
    report = bundle / "report.json"
    document = json.loads(report.read_text())
    document["R6"]["hyperparameters"] = {"lr": 0.5}  # a better-looking configuration
    report.write_text(json.dumps(document, sort_keys=True))
    (bundle / "SHA256SUMS").unlink()  # a careful forger drops the sums it cannot recompute
    caught = run_cli("verify-report", str(report), "--public-key", str(folder / "key.pub"))
    assert caught.returncode == 1, caught.stdout
    assert "signature" in caught.stdout + caught.stderr
