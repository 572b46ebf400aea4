"""Files the ledger names are on disk before the event that names them: stored datasets and
exported reports are flushed (fsync) before their rename, their folder after it, and a failed
write leaves no file under any name."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ledger import ExperimentManager
from ledger.datasets import load_dataset
from ledger.durable_files import flush_folder, write_file_durably
from ledger.errors import BadInputError
from ledger.events import DATASET_REGISTERED, REPORT_EXPORTED
from ledger.store import Store
from replay_helpers import record_run
from report.export import export_report
from report.model import ReportOptions
from trainer_helpers import bodies, noisy_data


@pytest.fixture
def disk_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync (with the path of what it flushed) and rename, in order."""
    log: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: str, target: str | os.PathLike[str]) -> None:
        log.append(("rename", f"{os.path.basename(source)} -> {os.fspath(target)}"))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, str]:
    """(url, experiment id) of a short run recorded in an SQLite ledger under ``tmp_path``."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return url, record_run(url, tmp_path / "ledger-data", epochs=1)


def _failing_fsync(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def fsync(_descriptor: int) -> None:
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fsync", fsync)


def test_a_stored_dataset_is_flushed_before_its_rename_and_its_folder_after(
        tmp_path: Path, disk_log: list[tuple[str, str]]) -> None:
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("durable", seed=1) as exp:
            del disk_log[:]
            data = exp.register_dataset("d", *noisy_data())
    target = tmp_path / data.loader["path"]
    stored = [entry for entry in disk_log if "datasets" in entry[1]]
    assert [kind for kind, _ in stored] == ["fsync", "rename", "fsync"]
    assert stored[0][1].endswith(".tmp") and stored[0][1].startswith(str(target.parent))
    assert stored[1][1].endswith(f"-> {target}")
    assert stored[2] == ("fsync", str(target.parent))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # an auditor of another user reads it
    assert [path.name for path in target.parent.iterdir()] == [target.name]


def test_a_dataset_that_cannot_reach_the_disk_leaves_no_file_and_no_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("durable", seed=1) as exp:
            (tmp_path / "datasets").mkdir()  # so that the file's own flush is what fails
            with monkeypatch.context() as patched:
                _failing_fsync(patched, errno.ENOSPC)
                with pytest.raises(BadInputError, match="cannot store dataset in .*No space "
                                                        "left on device"):
                    exp.register_dataset("d", *noisy_data())
        kinds = [body["kind"] for body in bodies(manager.store, exp.id)]
    assert DATASET_REGISTERED not in kinds
    assert list((tmp_path / "datasets").iterdir()) == []  # no temporary, no truncated file


def test_a_report_file_is_flushed_before_its_rename_and_its_folder_after(
        tmp_path: Path, recorded: tuple[str, str], disk_log: list[tuple[str, str]]) -> None:
    url, exp = recorded
    target = tmp_path / "report.html"
    del disk_log[:]
    with Store.open(url) as store:
        export_report(store, exp, ReportOptions(record=True), fmt="html", output=target)
        kinds = [body["kind"] for body in bodies(store, exp)]
    report_entries = [entry for entry in disk_log if "report.html" in entry[1]
                      or entry == ("fsync", str(tmp_path))]
    assert [kind for kind, _ in report_entries[:3]] == ["fsync", "rename", "fsync"]
    assert report_entries[0][1].endswith(".tmp")
    assert report_entries[2] == ("fsync", str(tmp_path))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert REPORT_EXPORTED in kinds


def test_a_new_bundle_folder_is_flushed_into_its_parent_before_its_files_are_renamed(
        tmp_path: Path, recorded: tuple[str, str], disk_log: list[tuple[str, str]]) -> None:
    url, exp = recorded
    bundle = tmp_path / "audit"
    del disk_log[:]
    with Store.open(url) as store:
        export_report(store, exp, ReportOptions(record=True), bundle=bundle)
    first_rename = next(index for index, (kind, _) in enumerate(disk_log) if kind == "rename")
    # else a power loss could take back the folder, and every file the export event names
    assert ("fsync", str(tmp_path)) in disk_log[:first_rename]


def test_a_report_that_cannot_reach_the_disk_writes_nothing_and_records_nothing(
        tmp_path: Path, recorded: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, exp = recorded
    before = sorted(path.name for path in tmp_path.iterdir())
    with Store.open(url) as store:
        with monkeypatch.context() as patched:
            _failing_fsync(patched, errno.EIO)
            with pytest.raises(BadInputError, match="cannot write .*report.md: Input/output"):
                export_report(store, exp, ReportOptions(record=True), fmt="md",
                              output=tmp_path / "report.md")
        kinds = [body["kind"] for body in bodies(store, exp)]
    assert REPORT_EXPORTED not in kinds
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP])
def test_a_folder_whose_file_system_cannot_flush_it_is_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    _failing_fsync(monkeypatch, code)
    flush_folder(tmp_path)  # some network file systems refuse fsync on a folder


def test_a_folder_flush_that_fails_for_real_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_fsync(monkeypatch, errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        flush_folder(tmp_path)


def test_a_write_that_fails_part_way_leaves_neither_temporary_nor_target(
        tmp_path: Path) -> None:
    target = tmp_path / "file.bin"

    def fill(handle) -> None:  # noqa: ANN001
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_file_durably(target, fill)
    assert list(tmp_path.iterdir()) == []
    assert write_file_durably(target, lambda handle: handle.write(b"whole")) == 5
    assert target.read_bytes() == b"whole"


def test_a_stored_dataset_cut_or_emptied_is_written_again_and_a_whole_one_is_kept(
        tmp_path: Path) -> None:
    features, labels = noisy_data()
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("first", seed=1) as exp:
            data = exp.register_dataset("d", features, labels)
        target = tmp_path / data.loader["path"]
        whole = target.read_bytes()
        for damage in (whole[: len(whole) // 2], b"", whole[:-1]):
            target.write_bytes(damage)  # cut by a crash of a version that did not flush
            with manager.create_experiment("again", seed=1) as exp:
                exp.register_dataset("d", features, labels)
            assert target.read_bytes() == whole
            loaded_x, loaded_y = load_dataset(data.loader, tmp_path)
            assert (loaded_x == features).all() and (loaded_y == labels).all()
        identity = target.stat().st_ino
        with manager.create_experiment("kept", seed=1) as exp:
            exp.register_dataset("d", features, labels)
        assert target.stat().st_ino == identity  # a whole file is not written again
