"""The benchmarks' BENCH_* settings: a bad value stops with one line before anything is timed.

No benchmark runs here: every case is refused (or answers --help) before the first one starts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.settings import SETTINGS, check_settings, setting
from conftest import ROOT


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2.5", "1e3"])
def test_a_bad_round_count_is_one_line_naming_the_variable(value: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_PIPELINE_ROUNDS", value)
    with pytest.raises(SystemExit) as stopped:
        setting("BENCH_PIPELINE_ROUNDS")
    message = str(stopped.value.code)
    assert "\n" not in message
    assert message.startswith("bench: error: BENCH_PIPELINE_ROUNDS=")
    assert repr(value) in message and ">= 1" in message


def test_unset_or_blank_gives_the_default_and_a_good_value_is_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_REPLAY_ROUNDS", raising=False)
    assert setting("BENCH_REPLAY_ROUNDS") == SETTINGS["BENCH_REPLAY_ROUNDS"].default
    monkeypatch.setenv("BENCH_REPLAY_ROUNDS", " ")
    assert setting("BENCH_REPLAY_ROUNDS") == SETTINGS["BENCH_REPLAY_ROUNDS"].default
    monkeypatch.setenv("BENCH_REPLAY_ROUNDS", "15")
    assert setting("BENCH_REPLAY_ROUNDS") == 15


def test_zero_demo_rounds_is_allowed_it_skips_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DEMO_ROUNDS", "0")
    assert setting("BENCH_DEMO_ROUNDS") == 0
    monkeypatch.setenv("BENCH_DEMO_ROUNDS", "-1")
    with pytest.raises(SystemExit):
        setting("BENCH_DEMO_ROUNDS")


def test_check_settings_refuses_any_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_TORCH_ROUNDS", "many")
    with pytest.raises(SystemExit, match="BENCH_TORCH_ROUNDS"):
        check_settings()


def _bench(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def _one_line_refusal(finished: subprocess.CompletedProcess[str], name: str) -> None:
    assert finished.returncode == 1
    assert finished.stdout == ""
    assert finished.stderr.count("\n") == 1 and "Traceback" not in finished.stderr
    assert finished.stderr.startswith(f"bench: error: {name}=")


def test_python_m_bench_checks_every_setting_before_the_first_benchmark() -> None:
    # BENCH_REPLAY_ROUNDS is read by a later benchmark than the one named: it is still refused
    # up front, not after minutes of timing.
    _one_line_refusal(_bench("-m", "bench", "pipeline", BENCH_REPLAY_ROUNDS="abc"),
                      "BENCH_REPLAY_ROUNDS")


def test_one_benchmark_alone_checks_its_settings_before_starting() -> None:
    _one_line_refusal(_bench("-m", "bench.bench_pipeline", BENCH_PIPELINE_ROUNDS="-1"),
                      "BENCH_PIPELINE_ROUNDS")


@pytest.mark.parametrize("module", ["bench", "bench.bench_verify"])
def test_help_lists_the_settings_and_runs_nothing(module: str) -> None:
    finished = _bench("-m", module, "--help")
    assert finished.returncode == 0, finished.stderr
    for name in SETTINGS:
        assert name in finished.stdout
    assert "results written" not in finished.stdout


def test_an_unknown_argument_is_refused_not_ignored() -> None:
    finished = _bench("-m", "bench.bench_verify", "--rounds", "1")
    assert finished.returncode == 1
    assert finished.stderr.startswith("bench: error: unexpected argument(s) --rounds 1")
