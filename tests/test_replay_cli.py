"""`ledger replay` and `ledger diff` end to end, run as an auditor would run them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator, register_draw
from ledger.digests import value_digest
from ledger.store import Store, StreamWriter
from ledger_builders import record_experiment
from replay_helpers import record_run, sample_data

RECORD_WITH_CUSTOM_OP = textwrap.dedent("""
    import sys
    import {module}  # registers the custom op
    from ledger.augment import DataAugmenter
    sys.path.insert(0, {tests!r})
    from replay_helpers import record_run
    print(record_run(sys.argv[1], __import__("pathlib").Path(sys.argv[2]),
                     augmenter=DataAugmenter(ops=[{{"op": "{op}", "prob": 0.2}}])))
""")

CUSTOM_OP_MODULE = textwrap.dedent("""
    import numpy as np
    from ledger.augment import register_op

    @register_op("{op}", version=1)
    def sign_flip(batch, rng, *, prob: float = 0.1):
        flip = rng.random(batch.shape) < prob
        batch[flip] *= -1
""")


def _assert_one_clean_line(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def custom_op_run(tmp_path: Path) -> tuple[str, str, str, dict[str, str]]:
    """A run recorded in another process with an op from a module replay does not know."""
    module = f"ledger_test_ops_{uuid.uuid4().hex[:8]}"
    op = f"sign_flip_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{module}.py").write_text(CUSTOM_OP_MODULE.format(op=op))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = RECORD_WITH_CUSTOM_OP.format(module=module, op=op,
                                          tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script, url, str(tmp_path / "data")],
                          env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return url, done.stdout.strip(), module, env


def test_a_custom_op_replays_only_when_its_module_is_trusted(custom_op_run) -> None:
    url, exp, module, env = custom_op_run
    data = ["--data-dir", str(Path(url.removeprefix("sqlite:///")).parent / "data")]
    refused = run_cli("--db", url, "replay", exp, *data, env=env)
    assert refused.returncode == 3
    _assert_one_clean_line(refused)
    assert "--trust" in refused.stderr
    trusted = run_cli("--db", url, "replay", exp, "--trust", module, *data, env=env)
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.startswith("CERTIFIED")


def test_a_run_whose_op_changed_since_is_diverged_exit_1_with_one_line(custom_op_run) -> None:
    """The trusted module now flips signs differently: every output differs from the record.
    Text and --json both exit 1 with the one stderr line naming the first divergence."""
    url, exp, module, env = custom_op_run
    folder = Path(url.removeprefix("sqlite:///")).parent
    source = folder / f"{module}.py"
    source.write_text(source.read_text().replace("batch[flip] *= -1", "batch[flip] *= -2"))
    command = ["--db", url, "replay", exp, "--trust", module, "--no-record",
               "--data-dir", str(folder / "data")]
    text = run_cli(*command, env=env)
    assert text.returncode == 1, text.stderr
    assert text.stdout.startswith(f"DIVERGED: {exp}\n  first divergence: ")
    _assert_one_clean_line(text)
    assert text.stderr.startswith("ledger: replay diverged: ") and "output" in text.stderr
    as_json = run_cli(*command, "--json", env=env)
    assert as_json.returncode == 1, as_json.stderr
    assert json.loads(as_json.stdout)["verdict"] == "diverged"
    assert as_json.stderr == text.stderr


@pytest.mark.parametrize("name", ["os:system", "../evil", "a b", "os.system()", "a..b", "1a",
                                  ".a", "a.", ""])
@pytest.mark.parametrize("command", ["replay", "report"])
def test_trust_takes_only_dotted_module_names(custom_op_run, name: str, command: str) -> None:
    """A --trust that names no module is a usage error (exit 2) before anything runs: replay
    said exit 3 (a run that cannot be replayed), and report --replay wrote its report with the
    replay INCONCLUSIVE, exit 0."""
    url, exp, _module, env = custom_op_run
    folder = Path(url.removeprefix("sqlite:///")).parent
    extra = ["--replay", "--no-record", "-o", str(folder / "r.json")] if command == "report" else []
    result = run_cli("--db", url, command, exp, *extra, "--trust", name, env=env)
    assert result.returncode == 2
    _assert_one_clean_line(result)
    assert f"got --trust {name!r}, but it takes a dotted module name" in result.stderr
    assert not (folder / "r.json").exists()


def test_trust_takes_a_module_name_not_its_file_name(custom_op_run) -> None:
    """``--trust my_ops.py`` imported my_ops (running its code) and then failed on a module
    ``py`` inside it; the hint for a module in the current folder even suggested it."""
    url, exp, module, env = custom_op_run
    result = run_cli("--db", url, "replay", exp, "--no-record", "--trust", f"{module}.py",
                     env=env)
    assert result.returncode == 2
    _assert_one_clean_line(result)
    assert (f"got --trust '{module}.py', a file name, but it takes the module's name: "
            f"--trust {module}") in result.stderr


def test_trust_takes_a_module_whose_name_is_not_ascii(custom_op_run) -> None:
    """Python module names may be any identifiers (PEP 3131): ``--trust opérations`` was
    refused as not a dotted module name, though ``import opérations`` works."""
    url, exp, module, env = custom_op_run
    folder = Path(url.removeprefix("sqlite:///")).parent
    wrapper = f"opérations_{uuid.uuid4().hex[:6]}"
    (folder / f"{wrapper}.py").write_text(f"import {module}\n", encoding="utf-8")
    result = run_cli("--db", url, "replay", exp, "--trust", wrapper, "--no-record",
                     "--data-dir", str(folder / "data"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CERTIFIED")


@pytest.mark.parametrize("where", ["import", "op"])
@pytest.mark.parametrize("code", ["sys.exit(0)", "sys.exit(7)"])
def test_trusted_code_calling_sys_exit_is_exit_3_not_a_silent_certificate(
        custom_op_run, where: str, code: str) -> None:
    """A trusted module that calls ``sys.exit`` as it is imported, or an op of it that does as
    replay re-executes it: the SystemExit escaped, and replay ended with its code and no
    output — ``sys.exit(0)`` an exit 0, read as CERTIFIED, with ``--json`` an empty stdout.
    Now exit 3 naming the module or event, one line, the error document on stdout."""
    url, exp, module, env = custom_op_run
    folder = Path(url.removeprefix("sqlite:///")).parent
    source = folder / f"{module}.py"
    if where == "import":
        source.write_text(f"import sys\n{code}\n")
    else:
        source.write_text(source.read_text().replace(
            "flip = rng.random(batch.shape) < prob", f"import sys; {code}"))
    for jobs in ("1", "2"):
        result = run_cli("--db", url, "replay", exp, "--trust", module, "--no-record", "--json",
                         "--jobs", jobs, "--data-dir", str(folder / "data"), env=env)
        assert result.returncode == 3, (jobs, result.returncode, result.stderr)
        _assert_one_clean_line(result)
        assert "SystemExit" in result.stderr
        assert (module if where == "import" else "augmentation_batch") in result.stderr
        assert json.loads(result.stdout)["error"]["kind"] == "cannot_replay"


def test_a_trusted_module_raising_a_bare_base_exception_is_one_line_not_a_traceback(
        custom_op_run) -> None:
    """An exception that is no ``Exception`` (a bare ``BaseException`` subclass) printed a
    traceback; now it is the one internal-error line, exit 2."""
    url, exp, module, env = custom_op_run
    folder = Path(url.removeprefix("sqlite:///")).parent
    (folder / f"{module}.py").write_text("raise BaseException('not an Exception')\n")
    result = run_cli("--db", url, "replay", exp, "--trust", module, "--no-record", "--json",
                     "--data-dir", str(folder / "data"), env=env)
    assert result.returncode == 2, result.stderr
    _assert_one_clean_line(result)
    assert json.loads(result.stdout)["error"]["kind"] == "internal"


@pytest.mark.parametrize("stop", [SystemExit(0), ValueError("bad file")])
def test_a_plug_in_loader_that_stops_is_cannot_replay_naming_the_dataset(
        stop: BaseException) -> None:
    """A registered dataset loader's own exception was an internal error (exit 2) and its
    ``sys.exit(0)`` ended replay with exit 0; both are now CannotReplayError (exit 3)."""
    from ledger.errors import CannotReplayError
    from replay.context import ReplayContext
    from replay.datasets import load_registered_dataset, register_loader

    kind = f"test-stopping-{uuid.uuid4().hex[:8]}"

    @register_loader(kind)
    def stopping(_spec: dict, _data_dir: Path | None) -> tuple:
        raise stop

    body = {"exp": "exp-000000000000", "output": b"\0" * 32,
            "params": {"name": "transactions", "loader": {"kind": kind}}}
    with pytest.raises(CannotReplayError, match=f"dataset 'transactions': its loader {kind!r}"):
        load_registered_dataset(ReplayContext(1, None), body)


def test_replay_json_is_one_document_and_records_the_replay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    result = run_cli("--db", url, "replay", exp, "--jobs", "2", "--json",
                     "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    certificate = json.loads(result.stdout)
    assert certificate["verdict"] == "certified"
    assert certificate["compared"]["augmentation_batch"] == 20
    assert certificate["mismatched"] == 0
    shown = json.loads(run_cli("--db", url, "show", exp, "--json").stdout)
    assert {"stream": "audit", "count": 1} .items() <= next(
        s for s in shown["streams"] if s["stream"] == "audit").items()
    assert run_cli("--db", url, "verify", exp).returncode == 0


def test_replay_of_an_incomplete_run_says_it_certifies_only_what_was_recorded(
        tmp_path: Path) -> None:
    """DESIGN §3: an incomplete run says so everywhere it is shown. Its replay certified it with
    the headline of a whole run; only 'run head none' below hinted at it, and --json only by
    a null head."""
    from ledger import ExperimentManager, TrainingDataIterator

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("preempted", seed=42)
        list(TrainingDataIterator(exp.register_dataset("d", *sample_data()), 64, experiment=exp))
        exp.suspend()
    done = record_run(url, tmp_path / "data")

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("--db", url, "replay", *args, "--data-dir", str(tmp_path / "data"))

    text = replay(exp.id, "--no-record")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == (f"CERTIFIED: {exp.id} reproduces draw for draw "
                                           f"(run incomplete: the draws recorded so far)")
    certificate = json.loads(replay(exp.id, "--json").stdout)
    assert (certificate["verdict"], certificate["status"], certificate["complete"],
            certificate["head"]) == ("certified", "incomplete", False, None)
    whole = json.loads(replay(done, "--json").stdout)
    assert (whole["status"], whole["complete"]) == ("ok", True)
    assert "incomplete" not in replay(done).stdout


def test_replay_of_a_failed_run_says_it_failed(tmp_path: Path) -> None:
    """A failed run's certificate read as a whole run's; only --json said "status": "failed"."""
    from ledger import ExperimentManager, TrainingDataIterator

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with pytest.raises(RuntimeError, match="diverged loss"):
            with manager.create_experiment("failed", seed=42) as exp:
                list(TrainingDataIterator(exp.register_dataset("d", *sample_data()), 64,
                                          experiment=exp))
                raise RuntimeError("diverged loss")
    text = run_cli("--db", url, "replay", exp.id, "--no-record", "--data-dir",
                   str(tmp_path / "data"))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == (f"CERTIFIED: {exp.id} reproduces draw for draw "
                                           f"(the run failed: the draws it recorded before "
                                           f"its error)")


def test_a_library_absent_at_replay_is_shown_absent_below_the_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not 'None now': a library loaded on one side only is named as absent on the other."""
    import ledger.experiment
    from ledger.environment import environment_fingerprint

    recorded = environment_fingerprint()
    recorded["blas_threads"] = {"libledger-test-blas.so": 4}
    monkeypatch.setattr(ledger.experiment, "environment_fingerprint", lambda: recorded)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    result = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert "    blas_threads.libledger-test-blas.so: 4 recorded, absent now" in result.stdout
    assert "None" not in result.stdout


def test_replay_calls_no_deprecated_click_api(tmp_path: Path) -> None:
    """click 8.5 deprecates click.get_text_stream (gone in click 9): replay asked it whether
    stderr is a terminal, so with DeprecationWarning an error it failed (exit 2) before
    replaying, and click 9 would fail it every time."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=1)
    result = run_cli("--db", url, "replay", exp, "--no-record", "--data-dir",
                     str(tmp_path / "data"), env={"PYTHONWARNINGS": "error::DeprecationWarning"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CERTIFIED") and result.stderr == ""


def test_replay_of_a_tampered_ledger_exits_1_without_replaying(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    connection = sqlite3.connect(tmp_path / "ledger.db")
    connection.execute("DROP TRIGGER ledger_events_no_update")
    connection.execute("UPDATE ledger_events SET t = t + 1 WHERE kind = 'metric'")
    connection.commit()
    connection.close()
    result = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    _assert_one_clean_line(result)
    assert "fails verification" in result.stderr
    assert "CERTIFIED" not in result.stdout


def test_replay_stopped_at_a_changed_dataset_says_what_it_did_not_re_execute(
        tmp_path: Path) -> None:
    """A changed dataset stops the replay before any draw; its text lacked the 'not draws'
    line every other verdict prints, and neither text nor --json counted the draws skipped."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    (stored,) = (tmp_path / "data").rglob("*.npz")
    with np.load(stored) as archive:
        features, labels = archive["features"] + 1.0, archive["labels"]
    np.savez(stored, features=features, labels=labels)
    data = ["--data-dir", str(tmp_path / "data"), "--no-record"]
    text = run_cli("--db", url, "replay", exp, *data)
    assert text.returncode == 1
    _assert_one_clean_line(text)
    lines = text.stdout.splitlines()
    assert "  re-executed  dataset_registered 1" in lines
    assert ("  skipped      augmentation_batch 20, epoch_reset 2 (not re-executed: replay stops "
            "at a changed dataset)") in lines
    assert ("  not draws    experiment_created 1, metric 2, run_completed 1 (compared by --full)"
            in lines)
    document = json.loads(run_cli("--db", url, "replay", exp, *data, "--json").stdout)
    assert document["skipped"] == {"augmentation_batch": 20, "epoch_reset": 2}
    assert document["not_draws"] == {"experiment_created": 1, "metric": 2, "run_completed": 1}


def test_replay_of_an_unknown_experiment_exits_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    record_run(url, tmp_path / "data")
    result = run_cli("--db", url, "replay", "exp-000000000000")
    assert result.returncode == 2
    _assert_one_clean_line(result)
    assert "unknown experiment" in result.stderr


def test_replay_without_its_data_cannot_replay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    result = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "elsewhere"))
    assert result.returncode == 3
    _assert_one_clean_line(result)
    assert "missing" in result.stderr


def test_diff_of_two_runs_with_the_same_seed_is_identical(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = record_run(url, tmp_path / "data", num_workers=0)
    second = record_run(url, tmp_path / "data", num_workers=2)
    result = run_cli("--db", url, "diff", first, second)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("IDENTICAL")
    assert "metric" not in result.stdout
    document = json.loads(run_cli("--db", url, "diff", first, second, "--json").stdout)
    assert document["differences"]["metrics"] == []


def test_diff_of_another_seed_names_the_first_draw_and_its_cause(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = record_run(url, tmp_path / "data", seed=42)
    second = record_run(url, tmp_path / "data", seed=43)
    result = run_cli("--db", url, "diff", first, second, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["identical"] is False
    divergence = report["first_divergence"]
    assert divergence["kind"] == "epoch_reset"
    assert divergence["identity"] == ["epoch", 0, "shuffle"]
    assert divergence["cause"] == "seed derivation differs"
    assert any(row["key"] == "root_seed" for row in report["differences"]["config"])
    [metric] = report["differences"]["metrics"]  # the last batch_sum of each run
    assert metric["key"] == "batch_sum" and metric["a"] != metric["b"]
    # one line on stderr, as verify and replay give for a failed check
    assert result.stderr.startswith("ledger: runs differ: ")
    assert "seed derivation differs" in result.stderr and result.stderr.count("\n") == 1


@register_draw("test_diff_scaled_normal", version=1)
def _scaled_normal(rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    """A user draw point whose output depends on its params."""
    return rng.standard_normal(4) * scale


def _record_settings(url: str, data_dir: Path, *, lr: float = 0.1, shuffle: bool = True,
                     noise_std: float = 0.1, scale: float = 1.0) -> str:
    """A small run of seed 42 whose draws depend only on the settings given; its metric on lr."""
    features, labels = sample_data()
    with ExperimentManager(url, data_dir=data_dir) as manager:
        with manager.create_experiment("diff-settings", seed=42, hyperparams={"lr": lr}) as exp:
            registered = exp.register_dataset("dataset-small", features, labels)
            exp.draw("test_diff_scaled_normal", ("model", "init"), scale=scale)
            batches = TrainingDataIterator(registered, batch_size=64, shuffle=shuffle,
                                           experiment=exp,
                                           augmenter=DataAugmenter(noise_std=noise_std))
            total = sum(float(x.sum()) for x, _y in batches)
            exp.log_metric("weighted_sum", lr * total, epoch=0)
    return exp.id


@pytest.mark.parametrize("change, kind, identity, key", [
    ({"noise_std": 0.2}, "augmentation_batch", ["epoch", 0, "batch", 0, "augment"], "augmenter"),
    ({"shuffle": False}, "epoch_reset", ["epoch", 0, "shuffle"], "shuffle"),
    ({"scale": 2.0}, "user_draw", ["model", "init"], "params.scale"),
    ({"lr": 0.2}, "metric", ["weighted_sum", 0], "hyperparams.lr"),
], ids=["augmenter", "shuffle", "user-draw-params", "hyperparams"])
def test_a_draw_made_with_other_settings_is_parameters_differ(
        tmp_path: Path, change: dict, kind: str, identity: list, key: str) -> None:
    """Runs of one seed and data whose settings differ — the augmenter, shuffling, a user draw's
    params, a hyperparameter the metric depends on — split where those settings are used, and
    the cause is *parameters differ* naming the setting; it was *same seed, different output —
    nondeterministic code*, sending the engineer hunting for nondeterminism in deterministic
    code."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = _record_settings(url, tmp_path / "data")
    second = _record_settings(url, tmp_path / "data", **change)
    result = run_cli("--db", url, "diff", first, second, "--json")
    assert result.returncode == 1, result.stderr
    divergence = json.loads(result.stdout)["first_divergence"]
    assert (divergence["kind"], divergence["identity"]) == (kind, identity)
    assert divergence["cause"] == "parameters differ", divergence["detail"]
    assert key in divergence["detail"]
    assert "nondeterministic" not in divergence["detail"]
    _assert_one_clean_line(result)
    assert "parameters differ" in result.stderr and key in result.stderr


def test_diff_lists_the_metrics_whose_last_value_differs(tmp_path: Path) -> None:
    """The bug report's AUC 0.923 against 0.891, side by side; a metric one run lacks too,
    shown as absent there (not as a metric logged as null; --json leaves that side out)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    runs = {"exp-a0a0a0a0a0a0": {"loss": 0.2, "val_auc": 0.923},
            "exp-b0b0b0b0b0b0": {"loss": 0.2, "val_auc": 0.891, "only_in_b": 3}}
    _record_metrics(url, runs)
    result = run_cli("--db", url, "diff", *runs, "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["differences"]["metrics"] == [
        {"key": "val_auc", "a": 0.923, "b": 0.891}, {"key": "only_in_b", "b": 3}]
    lines = run_cli("--db", url, "diff", *runs).stdout.splitlines()
    start = lines.index("  last metric values differ:")
    assert lines[start + 1:start + 3] == ["    val_auc: 0.923 vs 0.891", "    only_in_b: absent vs 3"]


def test_a_verdict_that_cannot_be_recorded_is_still_told(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """A replay whose certificate cannot be recorded (its disk filled meanwhile) printed
    nothing but the store error: the verdict is now in that one line (exit 2 still: nothing
    was recorded)."""
    from cli.main import main
    from ledger.errors import StoreError

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")

    def disk_full(_store: Store, _report: object, *, take_over: bool) -> None:
        raise StoreError(f"cannot open stream audit of {exp}: database or disk is full")

    monkeypatch.setattr("cli.commands.replay.record_replay", disk_full)
    with pytest.raises(SystemExit) as exited:
        main(["--db", url, "replay", exp, "--data-dir", str(tmp_path / "data")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ledger: error: the replay of {exp} was CERTIFIED (23 draws compared), but "
                   f"its certificate could not be recorded: cannot open stream audit of {exp}: "
                   f"database or disk is full"]


def test_replay_of_a_run_without_draws_says_none_were_re_executed(tmp_path: Path) -> None:
    """A run that recorded no draw (a run killed before its first flush, or one that only logs
    metrics) printed `re-executed` followed by nothing, a line cut short."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("metrics-only", seed=1) as exp:
            exp.log_metric("loss", 0.5, epoch=0)
    text = run_cli("--db", url, "replay", exp.id, "--no-record")
    assert text.returncode == 0, text.stderr
    assert "  re-executed  none (the run recorded no draw)" in text.stdout.splitlines()
    assert "  not draws    experiment_created 1, metric 1, run_completed 1 (compared by --full)" \
        in text.stdout.splitlines()


def _record_metrics(url: str, runs: dict[str, dict[str, float]]) -> None:
    """Runs of one metric stream each, their metrics logged at epoch 4."""
    with Store.open(url, create=True) as store:
        for exp, metrics in runs.items():
            record_experiment(store, exp, epochs=0, complete=False)
            with StreamWriter(store, exp, "main", flush_interval=None) as writer:
                for name, value in metrics.items():
                    writer.append("metric", params={"name": name, "value": value, "epoch": 4},
                                  output=value_digest(value))


@pytest.mark.parametrize("b_values, line", [
    ({"loss": 0.3, "val_auc": 0.8}, "  1 event differs, 0 missing in exp-b0b0b0b0b0b0, 0 extra, "
                                    "of "),
    ({"loss": 0.2, "val_auc": 0.8}, "  2 events differ, 0 missing in exp-b0b0b0b0b0b0, 0 extra, "
                                    "of "),
], ids=["one", "two"])
def test_diff_counts_agree_with_their_noun(tmp_path: Path, b_values: dict, line: str) -> None:
    """The summary said "1 events differ"; a count now agrees with its noun and verb."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _record_metrics(url, {"exp-a0a0a0a0a0a0": {"loss": 0.3, "val_auc": 0.9}})
    _record_metrics(url, {"exp-b0b0b0b0b0b0": b_values})
    result = run_cli("--db", url, "diff", "exp-a0a0a0a0a0a0", "exp-b0b0b0b0b0b0")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[2].startswith(line), result.stdout
    _record_metrics(url, {"exp-c0c0c0c0c0c0": {"loss": 0.3}, "exp-d0d0d0d0d0d0": {"loss": 0.3}})
    same = run_cli("--db", url, "diff", "exp-c0c0c0c0c0c0", "exp-d0d0d0d0d0d0")
    assert same.stdout.startswith("IDENTICAL: exp-c0c0c0c0c0c0 and exp-d0d0d0d0d0d0 "
                                  "("), same.stdout
    assert " events compared)\n" in same.stdout  # several: the plural stays


def test_replay_counts_agree_with_their_noun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A replay with one mismatch of one re-executed draw said "1 of 1 re-executed events
    differ"."""
    from collections import Counter

    from cli.main import main
    from replay.causes import Cause
    from replay.compare import Divergence
    from replay.engine import ReplayReport

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _record_metrics(url, {"exp-a0a0a0a0a0a0": {"loss": 0.3}})
    divergence = Divergence("exp-a0a0a0a0a0a0", "main", 1, "user_draw", ["model", "init"],
                            "output", b"\x01", b"\x02", Cause.OUTPUT, "nondeterministic code")
    report = ReplayReport("exp-a0a0a0a0a0a0", None, compared=Counter({"user_draw": 1}),
                          mismatched=1, first_divergence=divergence)
    monkeypatch.setattr("cli.commands.replay.replay_run", lambda *_args, **_kwargs: report)
    with pytest.raises(SystemExit) as exited:
        main(["--db", url, "replay", "exp-a0a0a0a0a0a0", "--no-record"])
    assert exited.value.code == 1
    assert "  1 of 1 re-executed event differs" in capsys.readouterr().out.splitlines()
