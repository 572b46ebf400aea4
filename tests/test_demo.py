"""The fraud-detection demo: deterministic data, identical runs, and the injected bug caught."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from examples.fraud.dataset import (DATASET_NAME, FEATURES, TRANSACTIONS, VALIDATION_NAME,
                                    load_fraud_data, make_transactions)
from examples.fraud.demo import run_demo
from examples.fraud.model import roc_auc
from ledger import Store, verify
from ledger.datasets import dataset_digest
from ledger.errors import BadInputError
from ledger_builders import table_names
from report_helpers import report_of


def test_the_dataset_is_deterministic_with_about_thirty_features_and_rare_fraud() -> None:
    features, labels = make_transactions()
    again = make_transactions()
    assert features.shape == (TRANSACTIONS, FEATURES) == (100_000, 30)
    assert features.dtype == np.float32 and labels.dtype == np.int8
    assert dataset_digest(features, labels) == dataset_digest(*again)
    assert 0.01 <= labels.mean() <= 0.02


def test_roc_auc_counts_ties_half_and_orders_correctly() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert roc_auc(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1])) == 1.0


def test_two_runs_with_the_same_seed_are_identical_and_learn(tmp_path: Path) -> None:
    result = run_demo(f"sqlite:///{tmp_path / 'ledger.db'}", transactions=20_000, epochs=2,
                      workers=2)
    first, second = result.runs
    assert result.identical and first.exp != second.exp
    assert first.aucs == second.aucs and len(first.aucs) == 2
    assert first.aucs[1] > first.aucs[0] and first.aucs[1] > 0.75
    assert (tmp_path / "ledger-data" / "datasets").is_dir()
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        assert verify(store).ok
        assert [row.status for row in store.experiments()] == ["ok", "ok"]


def test_the_demo_gives_its_datasets_roles_so_the_report_checks_their_independence(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = run_demo(url, transactions=6_000, epochs=1, workers=0)
    report = report_of(url, result.runs[0].exp, data_dir=str(tmp_path / "ledger-data"))
    assert [(d["name"], d["role"]) for d in report["R5"]["datasets"]] == [
        (DATASET_NAME, "train"), (VALIDATION_NAME, "validation")]
    check = report["R5"]["independence"]
    assert check["status"] == "passed"
    assert [(p["train"], p["test"], p["overlap"]) for p in check["pairs"]] == [
        (DATASET_NAME, VALIDATION_NAME, 0)]


def test_injected_nondeterminism_makes_the_runs_differ_at_the_first_batch(
        tmp_path: Path) -> None:
    result = run_demo(f"sqlite:///{tmp_path / 'ledger.db'}", transactions=6_000, epochs=1,
                      workers=0, inject_nondeterminism=True)
    assert not result.identical
    divergence = result.diff.first_divergence
    assert divergence.kind == "augmentation_batch"
    assert list(divergence.identity[1:]) == ["epoch", 0, "batch", 0, "augment"]
    assert divergence.a.seed == divergence.b.seed and divergence.a.input == divergence.b.input


def test_ledger_demo_prints_both_runs_and_exits_0_when_identical(tmp_path: Path) -> None:
    done = run_cli("demo", "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.splitlines()[0] == "training fraud-detection-v3 twice: seed 42, 2 workers, 1 epoch"
    assert "run 1/2  epoch 1/1" in text and "run 2/2  epoch 1/1" in text
    assert text.count("final val AUC") == 2 and "IDENTICAL" in text
    assert (tmp_path / "ledger.db").is_file() and (tmp_path / "ledger-data").is_dir()
    listed = json.loads(run_cli("list", "--json", cwd=tmp_path).stdout)["experiments"]
    assert [e["name"] for e in listed] == ["fraud-detection-v3"] * 2
    assert all(e["status"] == "ok" for e in listed)


@pytest.mark.parametrize("db_after_demo", [False, True], ids=["db-before", "db-after"])
def test_ledger_demo_suggests_commands_that_open_the_ledger_given_with_db(
        tmp_path: Path, db_after_demo: bool) -> None:
    """``--db`` names the ledger before or after the command name alike (``ledger demo --db``
    too): the commands the demo suggests open that ledger, not ./ledger.db."""
    db, demo = ["--db", "sqlite:///my ledger.db"], ["demo", "--epochs", "1", "--workers", "0"]
    done = run_cli(*(demo + db if db_after_demo else db + demo), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    hint = next(line for line in done.stdout.splitlines() if "check it:" in line)
    for command in hint.split("check it:", 1)[1].split(";"):
        words = shlex.split(command)
        assert words[:3] == ["ledger", "--db", "sqlite:///my ledger.db"], command
        followed = run_cli(*words[1:], cwd=tmp_path)
        assert followed.returncode == 0, (command, followed.stderr)
    assert not (tmp_path / "ledger.db").exists()


def test_ledger_demo_json_with_injected_nondeterminism_exits_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    done = run_cli("--db", url, "demo", "--epochs", "1", "--workers", "1",
                   "--inject-nondeterminism", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["identical"] is False
    assert document["diff"]["first_divergence"]["kind"] == "augmentation_batch"
    assert document["diff"]["first_divergence"]["cause"] == "same seed, different output"
    assert [len(run["val_auc"]) for run in document["runs"]] == [1, 1]
    assert "run 1/2  epoch 1/1" in done.stderr  # progress goes to stderr with --json
    last = done.stderr.splitlines()[-1]  # and, as for diff, one line saying they differ
    assert last.startswith("ledger: runs differ: ") and "same seed, different output" in last


def test_ledger_demo_without_a_data_folder_says_what_to_give(tmp_path: Path) -> None:
    done = run_cli("--db", "sqlite://", "demo", "--epochs", "1", cwd=tmp_path,
                   env={"LEDGER_DATA_DIR": ""})
    assert done.returncode == 2
    assert "give --data-dir or set LEDGER_DATA_DIR" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_ledger_demo_with_an_empty_data_folder_refuses_it(tmp_path: Path) -> None:
    """``--data-dir ""`` (``--data-dir "$DIR"`` with DIR unset) trained into the current folder
    as if it had been given ".", where an empty --db is refused."""
    done = run_cli("--db", "sqlite:///ledger.db", "demo", "--epochs", "1", "--data-dir", "",
                   cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ('ledger: error: got an empty --data-dir: give a folder ("." for the '
                           'current one), or leave it out for the default\n')
    assert list(tmp_path.iterdir()) == []


def test_ledger_demo_on_postgresql_without_a_data_folder_creates_nothing(
        postgres_url: str, tmp_path: Path) -> None:
    """The refusal comes before the ledger is opened: it used to create the empty ledger
    tables first."""
    done = run_cli("--db", postgres_url, "demo", "--epochs", "1", cwd=tmp_path,
                   env={"LEDGER_DATA_DIR": ""})
    assert done.returncode == 2 and "give --data-dir or set LEDGER_DATA_DIR" in done.stderr
    assert done.stderr.count("\n") == 1
    assert table_names(postgres_url) == []


def test_ledger_demo_with_a_data_folder_it_cannot_use_writes_nothing(tmp_path: Path) -> None:
    """A --data-dir under a file stops the demo before the ledger is created, not as a failed
    run recorded in it; so does a default folder that cannot be made."""
    (tmp_path / "a-file").write_text("not a folder")
    done = run_cli("--db", "sqlite:///ledger.db", "demo", "--epochs", "1", "--data-dir",
                   "a-file/data", cwd=tmp_path)
    assert done.returncode == 2 and "cannot store datasets in a-file/data" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "ledger.db").exists()
    (tmp_path / "ledger-data").write_text("in the way of the default data folder")
    done = run_cli("--db", "sqlite:///ledger.db", "demo", "--epochs", "1", cwd=tmp_path,
                   env={"LEDGER_DATA_DIR": ""})
    assert done.returncode == 2 and "cannot store datasets" in done.stderr
    assert done.stdout == "" and not (tmp_path / "ledger.db").exists()  # was an empty ledger


def test_ledger_demo_with_a_data_folder_it_cannot_write_records_no_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data folder that exists but takes no files (read-only, another user's) stops the demo
    before the ledger is created, not as a failed run recorded in it."""
    datasets = tmp_path / "data" / "datasets"
    datasets.mkdir(parents=True)
    datasets.chmod(0o555)
    if os.access(datasets, os.W_OK):  # root writes anyway: deny it as the kernel would a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False
                            if Path(path) == datasets and mode & os.W_OK
                            else real_access(path, mode, **kw))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    try:
        with pytest.raises(BadInputError, match="cannot store datasets in .* is not writable"):
            run_demo(url, data_dir=tmp_path / "data", transactions=2_000, epochs=1, workers=0)
    finally:
        datasets.chmod(0o755)
    assert not (tmp_path / "ledger.db").exists()


def test_the_demo_data_splits_are_standardised_on_the_training_split() -> None:
    data = load_fraud_data(5_000)
    assert data.train_x.shape == (4_000, 30) and data.val_x.shape == (1_000, 30)
    assert np.allclose(data.train_x.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(data.train_x.std(axis=0), 1, atol=1e-3)


def test_recording_does_not_change_what_is_trained(tmp_path: Path) -> None:
    from examples.fraud.train import train
    from ledger import ExperimentManager

    data = load_fraud_data(4_000)
    unrecorded = train(data, None, seed=7, workers=0, epochs=2)
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}",
                           data_dir=tmp_path / "data") as manager:
        recorded = train(data, manager, seed=7, workers=0, epochs=2)
        zero_epochs = train(data, manager, seed=7, workers=0, epochs=0)
    assert recorded.aucs == unrecorded.aucs and len(recorded.aucs) == 2
    assert recorded.losses == unrecorded.losses
    assert zero_epochs.aucs == [] and zero_epochs.exp is not None


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-folder-of-this-test/x.db",
                                 "sqlite:///file:{ledger}?mode=ro&uri=true"],
                         ids=["unopenable", "read-only"])
def test_a_demo_refused_by_its_ledger_leaves_no_data_folder(tmp_path: Path, url: str) -> None:
    """The data folder is made first (a folder that cannot hold the data stops the demo before
    the ledger is written); a ledger that then cannot be opened, or only read, used to leave
    it behind — and a read-only one was found out only when the first run recorded."""
    ledger = tmp_path / "ledger.db"
    Store.open(f"sqlite:///{ledger}", create=True).close()
    done = run_cli("--db", url.format(ledger=ledger), "demo", "--data-dir",
                   str(tmp_path / "new" / "data"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""  # no banner of a demo that never started
    assert not (tmp_path / "new").exists()
    with Store.open(f"sqlite:///{ledger}") as store:
        assert store.experiments() == []


@pytest.mark.parametrize(("query", "says"), [
    ("?mode=ro", "need uri=true"), ("?timeout=abc", "timeout are set by the ledger"),
    ("?check_same_thread=maybe", "check_same_thread are set by the ledger"),
    ("?mode", "URL argument(s) mode have no value"),  # SQLAlchemy dropped it silently
    ("?mode=&uri=true", "URL argument(s) mode have no value")])
def test_sqlite_url_arguments_the_driver_would_ignore_or_fail_on_are_refused(
        tmp_path: Path, query: str, says: str) -> None:
    """``?mode=ro`` without ``uri=true`` was ignored with a two-line driver warning (the file
    opened read-write); ``?timeout=abc`` was an internal error."""
    ledger = tmp_path / "ledger.db"
    Store.open(f"sqlite:///{ledger}", create=True).close()
    done = run_cli("--db", f"sqlite:///{ledger}{query}", "list", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr and "Warning" not in done.stderr


@pytest.mark.parametrize("query", ["?mode=ro&uri=true", "?immutable=1&uri=true",
                                   "?cache=shared&uri=TRUE"])
@pytest.mark.parametrize("command", [["list"], ["verify", "exp-000000000000"],
                                     ["demo", "--epochs", "1", "--workers", "0"]])
def test_uri_true_without_a_file_uri_is_refused_and_creates_nothing(
        tmp_path: Path, query: str, command: list[str]) -> None:
    """SQLite reads a database name as a URI only when it starts with ``file:``: with
    ``sqlite:////path/ledger.db?mode=ro&uri=true`` it opened — and created — a file named
    ``ledger.db?mode=ro``, so a read command called a good ledger "not a ledger" and left an
    empty database behind, and the demo, refusing a read-only ledger, left one of 45 KB."""
    ledger = tmp_path / "ledger.db"
    Store.open(f"sqlite:///{ledger}", create=True).close()
    before = sorted(path.name for path in tmp_path.iterdir())
    done = run_cli("--db", f"sqlite:///{ledger}{query}", *command, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "uri=true needs the database named as a file: URI" in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("postgresql://u:secret@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db")])
def test_a_demo_ledger_with_no_data_folder_is_named_as_given(tmp_path: Path, url: str,
                                                             shown: str) -> None:
    """The refusal named SQLAlchemy's rendering of the URL (``sqlite:///%3Amemory%3A``,
    ``postgresql+psycopg://…``), where every other error shows it as given, password masked."""
    done = run_cli("--db", url, "demo", "--epochs", "1", "--workers", "0", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"ledger: error: got the ledger {shown}, which has no data folder, "
                           f"but the demo stores its dataset: give --data-dir or set "
                           f"LEDGER_DATA_DIR\n")
