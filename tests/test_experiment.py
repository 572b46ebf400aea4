"""ExperimentManager and Experiment: what a run records, and how it ends (ok, failed, killed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ledger
from code_repos import code_outside_the_main_script, committed_repo, git, installed_package
from conftest import ROOT, readme_python_block, run_cli
from examples.fraud.blas import limit_blas_threads
from ledger import (BadInputError, DataAugmenter, ExperimentManager, Store, StoreError,
                    TrainingDataIterator, array_digest, load_dataset, value_digest, verify)
from ledger.batches import batch_input_digest
from ledger.datasets import dataset_digest
from ledger.environment import (DIFF_TAG, blas_threads, code_version, environment_fingerprint,
                                installed_code, recorded_distribution)
from ledger.events import (AUGMENTATION_BATCH, CHECKPOINT, DATASET_REGISTERED, EPOCH_RESET,
                           EXPERIMENT_CREATED, METRIC, RUN_COMPLETED, USER_DRAW)
from ledger.experiment import Experiment
from ledger.experiment_info import describe_experiment
from ledger.integrations.runs import AttachedRun
from ledger.sampling import epoch_order
from ledger.seeds import SEED_SCHEME, derive_bytes, root_seed_to_bytes
from ledger.user_draws import register_draw
from replay import replay_run
from report.html import render_html
from report_helpers import report_of
from trainer_helpers import bodies, nested_lists, noisy_data


@pytest.fixture
def manager(tmp_path: Path) -> ExperimentManager:
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def of_kind(all_bodies: list[dict], kind: str) -> list[dict]:
    return [body for body in all_bodies if body["kind"] == kind]


def test_show_and_the_report_say_whether_this_ledger_holds_the_parent(tmp_path: Path) -> None:
    """parent= may name a run of another ledger, so an unknown one is recorded as given; but
    `ledger show` and the report quoted it alone, as if the ledger held it. They now say
    whether it does (and nothing for a run without a parent)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("base", seed=1) as base:
            pass
        with manager.create_experiment("tuned", seed=2, parent=base.id) as tuned:
            pass
        with manager.create_experiment("elsewhere", seed=3, parent="no-such-run") as other:
            pass
    for exp, parent, found, said in ((tuned.id, base.id, True, "(in this ledger)"),
                                     (other.id, "no-such-run", False, "(not in this ledger)"),
                                     (base.id, None, None, None)):
        shown = run_cli("--db", url, "show", exp)
        assert shown.returncode == 0, shown.stderr
        lines = [line for line in shown.stdout.splitlines() if line.startswith("parent ")]
        assert lines == ([] if parent is None else [f"parent      {parent}  {said}"])
        as_json = run_cli("--db", url, "show", exp, "--json")
        assert json.loads(as_json.stdout)["parent_in_ledger"] is found
        report = report_of(url, exp)
        assert (report["R1"]["parent"], report["R1"]["parent_in_ledger"]) == (parent, found)
        page = render_html(report)
        assert (f"{parent} {said}" in page) is (parent is not None)


def test_create_experiment_records_seed_config_code_and_environment(
        manager: ExperimentManager, monkeypatch: pytest.MonkeyPatch) -> None:
    # The code version is the main script's repository: here this one's, wherever pytest's own
    # __main__ (in the virtualenv) lies.
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(ROOT / "examples" / "fraud" /
                                                                 "train.py"))
    with manager.create_experiment("fraud-detection-v3", seed=42, hyperparams={"lr": 0.05},
                                   purpose="test", parent="exp-000000000001") as exp:
        pass
    created = bodies(manager.store, exp.id)[0]
    assert (created["kind"], created["stream"], created["seq"]) == (EXPERIMENT_CREATED, "main", 0)
    params = created["params"]
    assert params["name"] == params["model"] == "fraud-detection-v3"
    assert params["root_seed"] == root_seed_to_bytes(42) and params["root_seed_source"] == "user"
    assert params["seed_scheme"] == SEED_SCHEME
    assert params["hyperparams"] == {"lr": 0.05}
    assert params["purpose"] == "test" and params["parent"] == "exp-000000000001"
    assert params["entrypoint"]["argv"] == sys.argv
    assert params["code"]["vcs"] == "git" and params["code"]["commit"] == git(ROOT, "rev-parse",
                                                                                "HEAD")
    assert isinstance(params["code"]["dirty"], bool)
    environment = params["environment"]
    assert environment["packages"]["numpy"] == np.__version__
    assert environment["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert environment["platform"]["machine"]
    assert environment["blas"]["blas"]["name"]
    assert set(environment["env"]) == {"PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                       "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG"}
    assert environment["blas_threads"] == blas_threads()
    assert created["meta"]["pid"] == os.getpid()


def _code_of(url: str, exp: str) -> dict[str, Any]:
    with Store.open(url) as store:
        return bodies(store, exp)[0]["params"]["code"]


def test_code_dir_names_the_repository_whose_version_is_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started from outside the code's repository (a console script in a virtualenv
    elsewhere) records that repository's version when told where it is."""
    repo = code_outside_the_main_script(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url) as manager:
        with manager.create_experiment("m", seed=1) as without:
            pass
        with manager.create_experiment("m", seed=1, code_dir=repo / "train.py") as with_dir:
            pass
    assert _code_of(url, without.id) == {"vcs": None}
    code = _code_of(url, with_dir.id)
    assert code["vcs"] == "git" and code["commit"] == git(repo, "rev-parse", "HEAD")
    assert code["dirty"] is False


def test_code_version_of_a_repository_in_each_state(tmp_path: Path) -> None:
    """No commit yet, clean, untracked files only, tracked changes (with the digest of
    ``git diff HEAD --binary``), a detached HEAD, and a folder outside any repository."""
    repo = tmp_path / "code"
    repo.mkdir()
    git(repo, "init", "-q")
    assert code_version(repo) == {"vcs": None}  # no commit: no version to name
    (repo / "train.py").write_text("print('train')\n")
    git(repo, "add", "train.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "c")
    head = git(repo, "rev-parse", "HEAD")
    clean = {"vcs": "git", "commit": head, "dirty": False, "diff_digest": None, "untracked": 0}
    assert code_version(repo) == clean
    assert code_version(repo / "train.py") == clean  # a file names its folder
    (repo / "notes.txt").write_text("n")
    (repo / "more notes.txt").write_text("n")
    assert code_version(repo) == {**clean, "dirty": True, "untracked": 2}
    (repo / "train.py").write_text("print('changed')\n")
    diff = subprocess.run(["git", "-C", str(repo), "diff", "HEAD", "--binary"],
                          capture_output=True, check=True).stdout
    assert code_version(repo) == {**clean, "dirty": True, "untracked": 2,
                                  "diff_digest": hashlib.sha256(DIFF_TAG + diff).digest()}
    git(repo, "checkout", "-q", "--detach")
    assert code_version(repo)["commit"] == head
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert code_version(outside) == {"vcs": None}


def test_code_installed_into_a_virtualenv_inside_a_repository_has_no_code_version(
        tmp_path: Path) -> None:
    """A wheel installed into a project's ``.venv`` recorded the project's commit as the version
    of the installed code (``ledger demo`` passes its own folder, under ``site-packages``): no
    commit of that repository describes it. Code in a package folder has no code version; the
    project's own folder keeps its commit."""
    repo = committed_repo(tmp_path / "project")
    for packages in ("site-packages", "dist-packages"):
        installed = repo / ".venv" / "lib" / "python3.11" / packages / "examples" / "fraud"
        installed.mkdir(parents=True)
        (installed / "train.py").write_text("print('installed')\n")
        assert code_version(installed) == {"vcs": None}
        assert code_version(installed / "train.py") == {"vcs": None}
    assert code_version(repo)["commit"] == git(repo, "rev-parse", "HEAD")
    assert installed_code(Path(sysconfig.get_paths()["purelib"]) / "numpy")
    assert not installed_code(repo)


@pytest.mark.parametrize("listed_by", ["RECORD", "top_level.txt"])
def test_installed_code_records_the_distribution_that_installed_it(tmp_path: Path,
                                                                   listed_by: str) -> None:
    """A trainer installed from a wheel has no commit, but a release: its code version names
    the distribution owning its top-level package (by the distribution's ``top_level.txt``, or
    its file list when it has none), so runs of two releases differ in their code version.
    A package folder's code that no distribution owns records no version at all."""
    packages = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    installed_package(packages, "my-trainer", "1.2.0", listed_by=listed_by)
    (packages / "stray").mkdir()
    expected = {"vcs": None, "distribution": {"name": "my-trainer", "version": "1.2.0"}}
    assert code_version(packages / "mytrainer" / "jobs") == expected
    assert code_version(packages / "mytrainer" / "jobs" / "train.py") == expected
    assert code_version(packages / "stray") == {"vcs": None}


@pytest.mark.parametrize("code,expected", [
    ({"vcs": None, "distribution": {"name": "my-trainer", "version": "1.2.0"}},
     ("my-trainer", "1.2.0")),
    ({"vcs": None}, None),
    ({"vcs": "git", "commit": "0" * 40}, None),
    ({"vcs": None, "distribution": {"name": "my-trainer", "version": 3}}, None),
    ({"vcs": None, "distribution": {"name": "my-trainer"}}, None),
    ({"vcs": None, "distribution": ["my-trainer", "1.2.0"]}, None),
    (["distribution"], None),
    (None, None)])
def test_a_recorded_distribution_is_read_only_when_it_names_a_text_release(
        code: object, expected: tuple[str, str] | None) -> None:
    """``show`` and the report name the release a run's code came from only when the recorded
    code version names one by a text name and version; anything else a writer of the ledger
    may have put there reads as no release, not as a crash or a quoted non-text value."""
    assert recorded_distribution(code) == expected


def test_a_code_dir_that_does_not_exist_is_refused_before_anything_is_recorded(
        manager: ExperimentManager, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="code_dir .*no such file or folder"):
        manager.create_experiment("m", seed=1, code_dir=tmp_path / "no-such-repo")
    with pytest.raises(BadInputError, match="must be a path"):
        manager.create_experiment("m", seed=1, code_dir=42)  # type: ignore[arg-type]
    assert manager.store.experiments() == []


def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
        manager: ExperimentManager, tmp_path: Path) -> None:
    """``Path("")`` is the current folder: ``code_dir=""`` (``os.environ.get("CODE_DIR", "")``
    unset, say) recorded the version of whatever repository the process started in, and
    ``data_dir=""`` stored datasets there — where an empty url is refused as naming no ledger."""
    with pytest.raises(BadInputError, match=r"^got an empty code_dir, but it must name a file or "
                                            r"folder \(\"\.\" for the current one\)$"):
        manager.create_experiment("m", seed=1, code_dir="")
    assert manager.store.experiments() == []
    with pytest.raises(BadInputError, match="^got an empty data_dir"):
        ExperimentManager(f"sqlite:///{tmp_path / 'other.db'}", data_dir="")
    assert not (tmp_path / "other.db").exists()  # refused before the ledger is made
    with manager.create_experiment("m", seed=1) as exp:
        with pytest.raises(BadInputError, match="^got an empty dataset path"):
            exp.register_dataset("d", path="")


def test_the_demo_records_its_own_repository_wherever_it_is_launched_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ledger demo` starts from the `ledger` console script, which may sit in a virtualenv
    outside any checkout: the demo's code version is that of examples/fraud, not the script's."""
    from examples.fraud.dataset import load_fraud_data
    from examples.fraud.train import train

    launcher = tmp_path / "elsewhere" / "ledger"
    launcher.parent.mkdir()
    launcher.write_text("")
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(launcher))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        result = train(load_fraud_data(2_000), manager, seed=42, workers=0, epochs=0)
    assert result.exp is not None
    code = _code_of(url, result.exp)
    assert code["vcs"] == "git" and code["commit"] == git(ROOT, "rev-parse", "HEAD")


def test_the_blas_thread_count_in_use_is_recorded_as_it_is_now() -> None:
    if "openblas" not in str(environment_fingerprint()["blas"]).lower():
        pytest.skip("numpy here does not use OpenBLAS, whose thread count this reads")
    before = blas_threads()
    assert before and all(count >= 1 for count in before.values())
    try:
        for threads in (1, 2):
            assert limit_blas_threads(threads)  # every OpenBLAS this process loaded
            assert environment_fingerprint()["blas_threads"] == dict.fromkeys(before, threads)
    finally:
        limit_blas_threads(max(before.values()))


def test_without_a_seed_one_is_drawn_from_the_os_and_recorded(manager: ExperimentManager) -> None:
    with manager.create_experiment("no-seed") as exp:
        pass
    params = bodies(manager.store, exp.id)[0]["params"]
    assert params["root_seed_source"] == "os"
    assert params["root_seed"] == root_seed_to_bytes(exp.root_seed)
    assert describe_experiment(manager.store, exp.id).root_seed == exp.root_seed


def test_leaving_the_with_block_completes_the_run(manager: ExperimentManager) -> None:
    with manager.create_experiment("done", seed=1) as exp:
        exp.log_metric("loss", 0.5, epoch=0)
    events = bodies(manager.store, exp.id)
    last = events[-1]
    assert last["kind"] == RUN_COMPLETED and last["params"]["status"] == "ok"
    assert last["params"]["streams"] == {"main": {"count": last["seq"], "head": last["prev"]}}
    assert exp.status == "ok" and exp.head is not None
    info = describe_experiment(manager.store, exp.id)
    assert info.complete and info.status == "ok" and info.head == exp.head
    assert verify(manager.store, exp.id).ok


def test_an_exception_completes_the_run_as_failed_and_propagates(
        manager: ExperimentManager) -> None:
    with pytest.raises(ZeroDivisionError):
        with manager.create_experiment("boom", seed=1) as exp:
            exp.log_metric("loss", 0.5)
            1 / 0  # noqa: B018
    last = bodies(manager.store, exp.id)[-1]
    assert last["params"]["status"] == "failed"
    assert last["params"]["error"] == "ZeroDivisionError: division by zero"
    assert manager.store.experiment(exp.id).status == "failed"
    assert verify(manager.store, exp.id).ok


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ValueError(), RuntimeError("  \n")],
                         ids=["ctrl-c", "bare", "blank"])
def test_an_exception_without_a_message_is_recorded_by_its_type_alone(
        manager: ExperimentManager, error: BaseException) -> None:
    """A Ctrl-C (or any exception without a message) was recorded, and shown by ``ledger
    show``, as ``KeyboardInterrupt:`` — a colon introducing nothing."""
    with pytest.raises(type(error)):
        with manager.create_experiment("bare", seed=1) as exp:
            raise error
    assert bodies(manager.store, exp.id)[-1]["params"]["error"] == type(error).__name__


def test_an_exception_that_cannot_be_shown_still_fails_the_run_and_propagates(
        manager: ExperimentManager) -> None:
    """An exception whose ``__str__`` raises: the ``with`` block raised that RuntimeError
    instead of the user's exception, and left the run running (incomplete in the ledger)."""
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("this exception cannot be shown")

    with pytest.raises(Unprintable):
        with manager.create_experiment("unprintable", seed=1) as exp:
            raise Unprintable()
    assert exp.status == "failed"
    last = bodies(manager.store, exp.id)[-1]
    assert last["params"]["error"] == "Unprintable: <exception str() failed>"
    assert manager.store.experiment(exp.id).status == "failed"


def test_a_closed_experiment_records_nothing_more(manager: ExperimentManager) -> None:
    with manager.create_experiment("closed", seed=1) as exp:
        pass
    with pytest.raises(StoreError, match="is closed"):
        exp.log_metric("late", 1.0)
    with pytest.raises(StoreError, match="already closed"):
        exp.close()


def test_a_with_block_around_a_closed_or_entered_run_is_refused(
        manager: ExperimentManager) -> None:
    """``with exp:`` on a closed run did nothing, without a word; a second ``with`` inside the
    first completed the run (ok) at its end, under the outer block that went on recording."""
    with manager.create_experiment("closed", seed=1) as exp:
        pass
    with pytest.raises(StoreError, match="is closed"):
        with exp:
            pass
    with manager.create_experiment("nested", seed=1) as outer:
        with pytest.raises(BadInputError, match="already in a with block"):
            with outer:
                pass
        outer.log_metric("after", 1.0)  # the refusal left the run recording
    assert bodies(manager.store, outer.id)[-1]["kind"] == "run_completed"
    assert [body["kind"] for body in bodies(manager.store, outer.id)].count("metric") == 1
    suspended = manager.create_experiment("suspended", seed=1)
    suspended.suspend()
    with pytest.raises(StoreError, match="is closed"):
        with suspended:
            pass
    assert manager.store.experiment(suspended.id).status == "incomplete"


@pytest.mark.parametrize("take_over", ["no", 1, None])
def test_take_over_must_be_a_bool(manager: ExperimentManager, take_over: Any) -> None:
    """``take_over="no"`` took the main stream over from a live holder."""
    exp = manager.create_experiment("held", seed=1)
    exp.suspend()
    with pytest.raises(BadInputError, match=f"got take_over={take_over!r}, but it must be True "
                                            f"or False"):
        manager.resume_experiment(exp.id, take_over=take_over)
    with pytest.raises(BadInputError, match="got take_over="):
        AttachedRun(manager.store, exp.id, "rank-1", take_over=take_over)
    with manager.resume_experiment(exp.id, take_over=False):
        pass


def test_a_closed_experiment_stores_no_dataset_it_refuses(manager: ExperimentManager) -> None:
    """register_dataset on a closed run wrote the arrays' .npz into the data folder, then was
    refused: a file no run refers to. It is refused before anything is stored, as every other
    recording call is."""
    with manager.create_experiment("closed", seed=1) as exp:
        pass
    with pytest.raises(StoreError, match="is closed"):
        exp.register_dataset("late", np.ones((3, 2)))
    assert manager.data_dir is not None
    assert not list(Path(manager.data_dir).rglob("*.npz"))


@pytest.mark.parametrize("kind", ["experiment_created", "run_completed", "run_resumed",
                                  "replay_recorded", "report_exported"])
def test_record_refuses_the_kinds_only_the_library_records(manager: ExperimentManager,
                                                           kind: str) -> None:
    # A run_completed recorded mid-run made 'ledger list' show the run ok while verify failed it.
    with manager.create_experiment("clf", seed=1) as exp:
        with pytest.raises(BadInputError, match="only the library records it"):
            exp.record(kind, params={"status": "ok", "streams": {}})
        exp.record("note", params={"text": "custom kinds are still recorded"})
    assert ledger.verify(manager.store, exp.id).ok


def test_record_refuses_a_draw_the_run_already_holds(manager: ExperimentManager) -> None:
    """exp.record of a draw kind at a (kind, path) the run holds — a user_draw after
    exp.generator at that path, one recorded twice — used to be written: the run verified but
    replay refused it for ever ("recorded more than once"). Refused when recorded, the run
    still certifies; metrics logged again and draws at other paths go on."""
    def user_draw(*path: str) -> Any:
        return exp.record("user_draw", path=path, seed=derive_bytes(5, path),
                          params={"generator": "numpy.PCG64"})

    with manager.create_experiment("twice", seed=5) as exp:
        exp.generator("model", "init")
        with pytest.raises(BadInputError, match=r"second user_draw at path \['model', 'init'\]"):
            user_draw("model", "init")
        user_draw("model", "head")
        with pytest.raises(BadInputError, match="recorded once per run"):
            user_draw("model", "head")
        exp.generator("model", "head")  # record_draw's door: the same draw, skipped
        exp.log_metric("loss", 1.0, epoch=0)
        exp.log_metric("loss", 0.5, epoch=1)
    draws = [b["path"] for b in bodies(manager.store, exp.id) if b["kind"] == "user_draw"]
    assert draws == [["model", "init"], ["model", "head"]]
    assert ledger.verify(manager.store, exp.id).ok
    assert replay_run(manager.store, exp.id).certified


def test_record_refuses_a_user_draw_with_an_output_no_registered_draw_reruns(
        manager: ExperimentManager) -> None:
    """A user_draw recorded with an output digest but no registered draw (``"draw"`` in params)
    would be certified unchecked, or — now that replay refuses it — never certified: refused
    when recorded, nothing written. Without an output (a bare generator) it goes on."""
    path = ("model", "init")
    with manager.create_experiment("unreplayable", seed=5) as exp:
        with pytest.raises(BadInputError, match="output but no registered draw"):
            exp.record("user_draw", path=path, seed=derive_bytes(5, path),
                       params={"generator": "numpy.PCG64"}, output=b"\x01" * 32)
        exp.record("user_draw", path=path, seed=derive_bytes(5, path),
                   params={"generator": "numpy.PCG64"})
    draws = [b for b in bodies(manager.store, exp.id) if b["kind"] == "user_draw"]
    assert [(b["path"], b["output"]) for b in draws] == [(["model", "init"], None)]
    assert replay_run(manager.store, exp.id).certified


def test_record_refuses_a_custom_draw_kind_twice_at_one_path(manager: ExperimentManager) -> None:
    """A custom kind is a user draw point (replayed by its registered replayer): once per
    (kind, path), as replay requires. Other paths are accepted."""
    with manager.create_experiment("custom", seed=5) as exp:
        exp.record("note", path=("step", 0), params={"text": "a"})
        exp.record("note", path=("step", 1), params={"text": "b"})
        with pytest.raises(BadInputError, match=r"second note at path \['step', 1\]"):
            exp.record("note", path=("step", 1), params={"text": "c"})
    notes = [b["params"]["text"] for b in bodies(manager.store, exp.id) if b["kind"] == "note"]
    assert notes == ["a", "b"]


@pytest.mark.parametrize("kind", [["metric"], {"kind": "metric"}, 7])
def test_record_refuses_a_kind_that_is_not_a_str_as_bad_input(manager: ExperimentManager,
                                                              kind: Any) -> None:
    """A kind that is not a str, even an unhashable one, is refused with BadInputError by
    ``record`` (not a TypeError from the library-kinds check), and the run goes on."""
    with manager.create_experiment("clf", seed=1) as exp:
        with pytest.raises(BadInputError, match="kind"):
            exp.record(kind)
        exp.record("note")
    assert ledger.verify(manager.store, exp.id).ok


def test_an_augmenter_spec_too_deep_for_its_batch_events_is_refused_before_any_batch(
        manager: ExperimentManager) -> None:
    """Batch events carry the augmenter spec four levels down in their body (params, the op
    list, the op): an op parameter nested to the canonical limit on its own used to pass, and
    every batch event then failed verification. The iterator refuses it when made; one level
    less records and verifies."""
    import trainer_ops  # noqa: F401 - registers test_table_scale
    from ledger.canonical import MAX_DEPTH

    with manager.create_experiment("deep-op", seed=1) as exp:
        data = exp.register_dataset("d", *noisy_data(rows=20))
        for levels, fits in ((MAX_DEPTH - 4, True), (MAX_DEPTH - 3, False)):
            augmenter = DataAugmenter.from_spec([{"op": "test_table_scale", "version": 1,
                                                  "table": nested_lists(levels)}])
            if fits:
                assert len(list(TrainingDataIterator(data, 10, augmenter=augmenter,
                                                     experiment=exp))) == 2
            else:
                with pytest.raises(BadInputError, match="nested deeper"):
                    TrainingDataIterator(data, 10, augmenter=augmenter, experiment=exp)
    assert ledger.verify(manager.store, exp.id).ok


def test_a_background_thread_logging_while_the_run_completes_leaves_a_run_that_verifies(
        manager: ExperimentManager) -> None:
    exp = manager.create_experiment("evaluating", seed=1)
    refused: list[StoreError] = []
    logging = threading.Event()

    def evaluate() -> None:  # a background evaluation thread that outlives the training loop
        for step in range(10**9):
            try:
                exp.log_metric("eval_loss", float(step))
            except StoreError as error:
                refused.append(error)
                return
            logging.set()

    thread = threading.Thread(target=evaluate)
    thread.start()
    logging.wait()
    exp.close()
    thread.join()
    assert "is closed" in str(refused[0])
    assert bodies(manager.store, exp.id)[-1]["kind"] == RUN_COMPLETED
    assert verify(manager.store, exp.id).ok


def _in_racing_threads(manager: ExperimentManager, call: Callable[[Experiment], Any]
                       ) -> Experiment:
    """Run ``call(exp)`` in 4 threads started together in one experiment, switching between any
    two bytecodes so that an unlocked check-then-record race shows; return the experiment."""
    start = threading.Barrier(4)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with manager.create_experiment("threads", seed=1) as exp:
            def racer() -> None:
                start.wait()
                call(exp)

            threads = [threading.Thread(target=racer) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    return exp


def test_threads_drawing_at_one_path_record_it_once(manager: ExperimentManager) -> None:
    def draw(exp: Experiment) -> None:
        for step in range(50):
            exp.generator("model", step)

    exp = _in_racing_threads(manager, draw)
    paths = [d["path"] for d in of_kind(bodies(manager.store, exp.id), USER_DRAW)]
    assert sorted(paths) == [["model", step] for step in range(50)]


def test_threads_registering_one_dataset_record_it_once(manager: ExperimentManager) -> None:
    features, labels = noisy_data()
    exp = _in_racing_threads(manager, lambda exp: exp.register_dataset("d", features, labels))
    assert len(of_kind(bodies(manager.store, exp.id), DATASET_REGISTERED)) == 1


def test_a_killed_process_leaves_an_incomplete_run_that_verifies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator
        manager = ExperimentManager({url!r})
        exp = manager.create_experiment("killed", seed=3)
        data = exp.register_dataset("d", np.ones((64, 3), np.float32), np.zeros(64, np.int8))
        batches = TrainingDataIterator(data, 8, augmenter=DataAugmenter(noise_std=0.1),
                                       experiment=exp, num_workers=1)
        for x, y in batches:
            pass
        exp.log_metric("loss", 1.0, epoch=0)
        exp.flush()
        print(exp.id, flush=True)
        for x, y in batches:
            exp.log_metric("never-flushed", 1.0)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9, done.stderr
    exp = done.stdout.strip()
    with Store.open(url) as store:
        info = describe_experiment(store, exp)
        assert not info.complete and info.status == "incomplete"
        assert info.counts[AUGMENTATION_BATCH] == 8 and info.counts[METRIC] == 1
        assert verify(store, exp).ok
    checked = run_cli("--db", url, "verify", exp)
    assert checked.returncode == 0, checked.stderr
    shown = run_cli("--db", url, "show", exp)
    assert shown.returncode == 0 and "INCOMPLETE" in shown.stdout


def test_a_script_that_never_closes_its_experiment_keeps_every_event_at_exit(
        tmp_path: Path) -> None:
    """Without ``with`` or ``close()``, the events of the last flush interval were lost when
    the script ended (50 metrics logged, only experiment_created stored). Now open writers
    are closed at exit: every event is kept, the stream released, the run incomplete."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = textwrap.dedent(f"""
        from ledger import ExperimentManager
        manager = ExperimentManager({url!r})
        exp = manager.create_experiment("never-closed", seed=3)
        for step in range(50):
            exp.log_metric("loss", 1.0 / (step + 1), epoch=step)
        print(exp.id, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    exp = done.stdout.strip()
    with Store.open(url) as store:
        info = describe_experiment(store, exp)
        assert info.counts[METRIC] == 50 and info.status == "incomplete"
        assert verify(store, exp).ok
    with ExperimentManager(url) as manager:  # released: resumed without take_over
        with manager.resume_experiment(exp) as resumed:
            resumed.log_metric("loss", 0.01, epoch=50)
    with Store.open(url) as store:
        assert describe_experiment(store, exp).status == "ok"


def test_a_forked_child_records_nothing_and_leaves_the_run_to_its_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = textwrap.dedent(f"""
        import multiprocessing, os, signal, sys
        from ledger import ExperimentManager, StoreError

        def log_in_pool_worker(value):
            exp.log_metric("in a pool worker", value)

        with ExperimentManager({url!r}) as manager:
            with manager.create_experiment("forking", seed=1) as exp:
                exp.log_metric("before", 1.0)
                try:
                    with multiprocessing.get_context("fork").Pool(1) as pool:
                        pool.map(log_in_pool_worker, [2.0])
                except StoreError as error:
                    print("pool:", error, flush=True)
                child = os.fork()
                if child == 0:
                    signal.alarm(20)  # a child that hangs (flushing) must not outlive the test
                    for call in (lambda: exp.log_metric("in a child", 3.0), exp.flush):
                        try:
                            call()
                        except StoreError as error:
                            print("child:", error, flush=True)
                    sys.exit(0)  # leaves the with block, in the child
                os.waitpid(child, 0)
                exp.log_metric("after", 4.0)
            print(exp.id, exp.status, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    *refusals, last = done.stdout.splitlines()
    assert [line.split(":")[0] for line in refusals] == ["pool", "child", "child"]
    assert all("forked from it" in line for line in refusals), refusals
    exp, status = last.split()
    assert status == "ok"
    with Store.open(url) as store:
        events = bodies(store, exp)
        assert [e["params"]["name"] for e in of_kind(events, METRIC)] == ["before", "after"]
        assert events[-1]["kind"] == RUN_COMPLETED and events[-1]["params"]["status"] == "ok"
        assert verify(store, exp).ok

# -- datasets -------------------------------------------------------------------------------------


def test_in_memory_arrays_are_stored_content_addressed_beside_the_ledger(
        manager: ExperimentManager, tmp_path: Path) -> None:
    features, labels = noisy_data()
    with manager.create_experiment("data", seed=1) as exp:
        data = exp.register_dataset("dataset-small", features, labels)
        again = exp.register_dataset("dataset-small", features.copy(), labels.copy())
    assert again is data and len(data) == 300
    digest = dataset_digest(features, labels)
    assert data.digest == digest
    assert data.loader == {"kind": "npz", "base": "data_dir",
                           "path": f"datasets/{digest.hex()}.npz", "digest": digest.hex(),
                           "features": "features", "labels": "labels"}
    assert manager.data_dir == tmp_path / "ledger-data"
    assert (tmp_path / "ledger-data" / data.loader["path"]).is_file()
    [event] = of_kind(bodies(manager.store, exp.id), DATASET_REGISTERED)
    assert event["output"] == digest
    assert event["params"]["name"] == "dataset-small" and event["params"]["length"] == 300
    assert event["params"]["loader"] == data.loader
    loaded_x, loaded_y = load_dataset(event["params"]["loader"], manager.data_dir)
    assert np.array_equal(loaded_x, features) and np.array_equal(loaded_y, labels)


def test_registering_other_content_under_a_taken_name_is_refused(
        manager: ExperimentManager) -> None:
    features, labels = noisy_data()
    with manager.create_experiment("data", seed=1) as exp:
        exp.register_dataset("d", features, labels)
        with pytest.raises(BadInputError, match="got other content for dataset 'd'"):
            exp.register_dataset("d", features + 1, labels)


def test_a_role_is_recorded_when_given_and_a_second_registration_must_repeat_it(
        manager: ExperimentManager) -> None:
    features, labels = noisy_data()
    with manager.create_experiment("data", seed=1) as exp:
        train = exp.register_dataset("train-set", features, labels, role="train")
        exp.register_dataset("plain", features, labels)
        assert exp.register_dataset("train-set", features, labels, role="train") is train
        with pytest.raises(BadInputError, match="got role 'test' for dataset 'train-set', but "
                                                "it is already registered .* with role 'train'"):
            exp.register_dataset("train-set", features, labels, role="test")
        with pytest.raises(BadInputError, match="got role None for dataset 'train-set'"):
            exp.register_dataset("train-set", features, labels)
        for bad in ("", "  ", "x" * 65, 3, b"train"):
            with pytest.raises(BadInputError, match="a dataset role must be None or a non-empty"):
                exp.register_dataset("other", features, labels, role=bad)
    events = of_kind(bodies(manager.store, exp.id), DATASET_REGISTERED)
    assert [(e["params"]["name"], e["params"].get("role", "absent")) for e in events] == [
        ("train-set", "train"), ("plain", "absent")]


def test_a_resumed_run_must_register_its_datasets_with_their_recorded_roles(
        manager: ExperimentManager) -> None:
    features, labels = noisy_data()
    exp = manager.create_experiment("data", seed=1)
    exp.register_dataset("val", features, labels, role="validation")
    exp.suspend()
    resumed = manager.resume_experiment(exp.id)
    with pytest.raises(BadInputError, match="got role 'test' for dataset 'val', but the run "
                                            "registered it with role 'validation' before it"):
        resumed.register_dataset("val", features, labels, role="test")
    assert resumed.register_dataset("val", features, labels, role="validation").digest
    resumed.close()
    events = of_kind(bodies(manager.store, exp.id), DATASET_REGISTERED)
    assert len(events) == 1


def test_a_user_file_is_referenced_where_it_is(manager: ExperimentManager,
                                               tmp_path: Path) -> None:
    features, labels = noisy_data()
    path = tmp_path / "mine.npz"
    np.savez(path, x=features, y=labels)
    with manager.create_experiment("data", seed=1) as exp:
        data = exp.register_dataset("mine", path=path, features_key="x", labels_key="y")
        with pytest.raises(BadInputError, match="got both arrays and path="):
            exp.register_dataset("both", features, path=path)
    assert data.loader["base"] == "absolute" and data.loader["path"] == str(path.resolve())
    assert np.array_equal(data.features, features)
    assert np.array_equal(load_dataset(data.loader, None)[1], labels)


def test_a_ledger_without_a_data_folder_refuses_in_memory_arrays(tmp_path: Path,
                                                                 monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    with ExperimentManager("sqlite://") as manager:
        assert manager.data_dir is None
        with manager.create_experiment("data", seed=1) as exp:
            with pytest.raises(BadInputError, match="has no data folder"):
                exp.register_dataset("d", *noisy_data())
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "elsewhere"))
    with ExperimentManager("sqlite://") as manager:
        with manager.create_experiment("data", seed=1) as exp:
            data = exp.register_dataset("d", *noisy_data())
    assert (tmp_path / "elsewhere" / data.loader["path"]).is_file()


def test_load_dataset_refuses_a_changed_or_missing_file(manager: ExperimentManager) -> None:
    with manager.create_experiment("data", seed=1) as exp:
        data = exp.register_dataset("d", *noisy_data())
    path = manager.data_dir / data.loader["path"]
    features, labels = noisy_data()
    np.savez(path, features=features * 2, labels=labels)
    with pytest.raises(ledger.CannotReplayError, match="but the ledger recorded"):
        load_dataset(data.loader, manager.data_dir)
    path.unlink()
    with pytest.raises(ledger.CannotReplayError, match="is missing"):
        load_dataset(data.loader, manager.data_dir)


# -- metrics, checkpoints, user draws -------------------------------------------------------------


def test_metrics_and_checkpoints_record_their_digests(manager: ExperimentManager) -> None:
    weights = {"w1": np.ones((3, 2), np.float32), "b1": np.zeros(2, np.float32)}
    with manager.create_experiment("m", seed=1) as exp:
        exp.log_metric("val_auc", np.float64(0.91), epoch=2)
        exp.log_checkpoint("final", weights, epoch=4)
        exp.log_checkpoint("single", weights["w1"])
        with pytest.raises(BadInputError, match="at least one array"):
            exp.log_checkpoint("empty", {})
    all_bodies = bodies(manager.store, exp.id)
    [metric] = of_kind(all_bodies, METRIC)
    assert metric["params"] == {"epoch": 2, "name": "val_auc", "value": 0.91}
    assert metric["output"] == value_digest(0.91)
    final, single = of_kind(all_bodies, CHECKPOINT)
    assert final["params"]["epoch"] == 4 and final["params"]["arrays"]["w1"] == {
        "dtype": "<f4", "shape": [3, 2]}
    assert final["output"] == value_digest(["ledger/state/v1", {
        "w1": array_digest(weights["w1"]), "b1": array_digest(weights["b1"])}])
    assert single["output"] == array_digest(weights["w1"])


@register_draw("test_dropout_mask", version=1)
def dropout_mask(rng: np.random.Generator, *, shape: list, rate: float) -> np.ndarray:
    return rng.random(shape) >= rate


def test_user_draws_derive_from_their_path_and_are_recorded_once(
        manager: ExperimentManager) -> None:
    with manager.create_experiment("u", seed=5) as exp:
        first = exp.generator("model", "init").random(3)
        again = exp.generator("model", "init").random(3)
        mask = exp.draw("test_dropout_mask", ("dropout", "layer3", 0), shape=[4, 5], rate=0.5)
        with pytest.raises(BadInputError, match="must be non-empty and not start with"):
            exp.generator("epoch", 0, "shuffle")
    assert np.array_equal(first, again)
    assert np.array_equal(first, ledger.generator(5, ("model", "init")).random(3))
    draws = of_kind(bodies(manager.store, exp.id), USER_DRAW)
    assert [d["path"] for d in draws] == [["model", "init"], ["dropout", "layer3", 0]]
    assert draws[0]["seed"] == derive_bytes(5, ("model", "init"))
    assert draws[1]["params"] == {"draw": "test_dropout_mask", "version": 1,
                                  "params": {"shape": [4, 5], "rate": 0.5}}
    assert draws[1]["output"] == array_digest(mask)


def test_a_draw_of_a_version_not_registered_is_refused_before_anything_is_recorded(
        manager: ExperimentManager) -> None:
    """``exp.draw(name, path, version=5)`` of an unregistered version raised replay's
    CannotReplayError, whose advice (entry points, --trust) is for making a ledger
    replayable: a trainer's bad call is a BadInputError naming what is registered."""
    with manager.create_experiment("v", seed=5) as exp:
        with pytest.raises(BadInputError, match=r"^draw 'test_dropout_mask' version 5 is not "
                                                r"registered \(registered: "
                                                r"\['test_dropout_mask@1'\]\)$"):
            exp.draw("test_dropout_mask", ("dropout", 0), version=5, shape=[4], rate=0.5)
    assert of_kind(bodies(manager.store, exp.id), USER_DRAW) == []


def test_a_second_user_draw_at_a_path_is_told_to_take_its_own_path(
        manager: ExperimentManager) -> None:
    """The refusal of a second user draw at a path used to tell the trainer to use one
    iterator per experiment, which has nothing to do with it."""
    with manager.create_experiment("d", seed=5) as exp:
        exp.draw("test_dropout_mask", ("dropout", 0), shape=[4], rate=0.5)
        with pytest.raises(BadInputError, match="recorded once per run: give each draw its "
                                                "own path") as refused:
            exp.draw("test_dropout_mask", ("dropout", 0), shape=[5], rate=0.5)
        assert "iterator" not in str(refused.value)


def test_a_draw_identity_is_recorded_once_and_never_with_two_outputs(
        manager: ExperimentManager) -> None:
    path = ("custom", 1)
    with manager.create_experiment("d", seed=5) as exp:
        assert exp.record_draw("custom_kind", path, seed=None, params={}, output=bytes(32))
        assert exp.record_draw("custom_kind", path, seed=None, params={}, output=bytes(32)) is None
        with pytest.raises(BadInputError, match="recorded once per run"):
            exp.record_draw("custom_kind", path, seed=None, params={}, output=b"\x01" * 32)


# -- the iterator inside an experiment ------------------------------------------------------------


def test_an_iterator_records_epoch_resets_and_augmentation_batches(
        manager: ExperimentManager) -> None:
    features, labels = noisy_data(rows=50)
    augmenter = DataAugmenter(noise_std=0.1, mask_prob=0.1)
    with manager.create_experiment("it", seed=9) as exp:
        data = exp.register_dataset("small", features, labels)
        batches = TrainingDataIterator(data, 16, augmenter=augmenter, experiment=exp)
        handed_out = [[x.copy() for x, _y in batches] for _epoch in range(2)]
    all_bodies = bodies(manager.store, exp.id)
    resets = of_kind(all_bodies, EPOCH_RESET)
    assert [r["path"] for r in resets] == [["epoch", 0, "shuffle"], ["epoch", 1, "shuffle"]]
    for epoch, reset in enumerate(resets):
        assert reset["seed"] == derive_bytes(9, ("epoch", epoch, "shuffle"))
        assert reset["output"] == array_digest(epoch_order(9, epoch, 50, True))
        assert {k: reset["params"][k] for k in ("epoch", "length", "shuffle")} == {
            "epoch": epoch, "length": 50, "shuffle": True}
    augmented = of_kind(all_bodies, AUGMENTATION_BATCH)
    assert [a["path"] for a in augmented] == [["epoch", e, "batch", b, "augment"]
                                              for e in range(2) for b in range(4)]
    for event in augmented:
        epoch, batch = event["params"]["epoch"], event["params"]["batch"]
        indices = epoch_order(9, epoch, 50, True)[batch * 16:(batch + 1) * 16]
        params = event["params"]
        assert params["augmenter"] == augmenter.spec
        assert (params["batch_size"], params["drop_last"], params["shuffle"]) == (16, False, True)
        assert params["dataset"] == "small" and params["dataset_digest"] == data.digest
        assert params["indices_digest"] == array_digest(indices)
        assert event["seed"] == derive_bytes(9, ("epoch", epoch, "batch", batch, "augment"))
        assert event["input"] == batch_input_digest(data.digest, array_digest(indices))
        assert event["input"] == value_digest([data.digest, array_digest(indices)])
        assert event["output"] == array_digest(handed_out[epoch][batch])
    kinds = [b["kind"] for b in all_bodies]
    assert kinds.index(EPOCH_RESET) < kinds.index(AUGMENTATION_BATCH)


def test_events_follow_the_order_of_the_calls(manager: ExperimentManager) -> None:
    with manager.create_experiment("order", seed=9) as exp:
        data = exp.register_dataset("small", *noisy_data(rows=40))
        batches = TrainingDataIterator(data, 10, augmenter=DataAugmenter(noise_std=0.1),
                                       experiment=exp)
        for epoch in range(2):
            for index, _batch in enumerate(batches):
                exp.log_metric("step", index, epoch=epoch)
    kinds = [(b["kind"], b["params"].get("batch", b["params"].get("value")))
             for b in bodies(manager.store, exp.id)[2:-1]]
    expected = []
    for _epoch in range(2):
        expected.append((EPOCH_RESET, None))
        for index in range(4):
            expected += [(AUGMENTATION_BATCH, index), (METRIC, index)]
    assert kinds == expected


def test_an_iterator_in_an_experiment_needs_the_dataset_registered_there(
        manager: ExperimentManager) -> None:
    with manager.create_experiment("x", seed=1) as exp:
        with pytest.raises(BadInputError, match="is not registered in"):
            TrainingDataIterator(noisy_data(), 8, experiment=exp)
        data = exp.register_dataset("d", *noisy_data())
        with pytest.raises(BadInputError, match="got seed 2, but within experiment"):
            TrainingDataIterator(data, 8, experiment=exp, seed=2)
        with pytest.raises(BadInputError, match="got augmenter seed 7, but within experiment"):
            TrainingDataIterator(data, 8, experiment=exp,
                                 augmenter=DataAugmenter(noise_std=0.1, seed=7))
        TrainingDataIterator(data, 8, experiment=exp, seed=1,
                             augmenter=DataAugmenter(noise_std=0.1, seed=1)).close()


def test_a_second_iterator_over_other_data_is_refused_unless_it_records_nothing(
        manager: ExperimentManager) -> None:
    with manager.create_experiment("x", seed=1) as exp:
        train = exp.register_dataset("train", *noisy_data(rows=60))
        val = exp.register_dataset("val", *noisy_data(rows=30, seed=4))
        list(TrainingDataIterator(train, 10, experiment=exp))
        with pytest.raises(BadInputError, match="recorded once per run"):
            list(TrainingDataIterator(val, 10, experiment=exp, shuffle=False))
        assert len(list(TrainingDataIterator(val, 10, experiment=exp, shuffle=False,
                                             record=False))) == 3


def test_an_iterator_made_afresh_each_epoch_is_refused_instead_of_repeating_epoch_0(
        manager: ExperimentManager) -> None:
    """The bug report's 'every epoch sees the same order', reached through the library: a new
    iterator per epoch starts at epoch 0 again. The ledger records a draw once, so it would
    have stayed silent; the second iterator is refused, by a pass and by reset(), and the run
    ends failed with the reason."""
    with pytest.raises(BadInputError, match="already drew epoch 0: it would repeat") as caught:
        with manager.create_experiment("x", seed=1) as exp:
            data = exp.register_dataset("d", *noisy_data(rows=40))
            first = list(TrainingDataIterator(data, 10, experiment=exp))
            assert len(first) == 4
            with pytest.raises(BadInputError, match="Keep one TrainingDataIterator"):
                TrainingDataIterator(data, 10, experiment=exp).reset()
            for _epoch in range(2):
                list(TrainingDataIterator(data, 10, experiment=exp))
    assert "load_state_dict" in str(caught.value)
    assert exp.status == "failed"


def test_one_iterator_for_the_run_and_a_restored_one_both_go_on(
        manager: ExperimentManager) -> None:
    """What the refusal of a repeated epoch leaves allowed: one iterator looped once per epoch,
    and a second iterator restored to the first one's position (it continues, not repeats)."""
    with manager.create_experiment("x", seed=1) as exp:
        data = exp.register_dataset("d", *noisy_data(rows=40))
        batches = TrainingDataIterator(data, 10, experiment=exp)
        for _epoch in range(2):
            assert len(list(batches)) == 4
        iterator = iter(batches)
        next(iterator)
        state = batches.state_dict()
        restored = TrainingDataIterator(data, 10, experiment=exp)
        restored.load_state_dict(state)
        assert (restored.epoch, len(list(restored))) == (2, 3)
        assert len(list(restored)) == 4  # and on to epoch 3, which nothing drew yet
    assert exp.status == "ok"


def test_a_recorded_run_verifies_on_every_backend(store_url: str, tmp_path: Path) -> None:
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        with manager.create_experiment("backend", seed=3) as exp:
            data = exp.register_dataset("d", *noisy_data(rows=40))
            for _x, _y in TrainingDataIterator(data, 16, experiment=exp,
                                               augmenter=DataAugmenter(noise_std=0.1)):
                pass
        report = verify(manager.store, exp.id)
        assert report.ok and report.events == 7
        assert manager.store.experiment(exp.id).status == "ok"


def test_the_readme_trainer_api_example_runs(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    code = readme_python_block("## Trainer API")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        [row] = store.experiments()
        assert row.status == "ok" and verify(store).ok
