"""The engine's heartbeat is replaced whole: a probe never reads part of one."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.service import HEARTBEAT, read_heartbeat, write_heartbeat


@pytest.fixture
def busy_switching() -> Iterator[None]:
    # Threads switch often, so writers interleave inside a single write.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_each_write_replaces_the_file_and_an_open_reader_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    write_heartbeat(tmp_path)
    with (tmp_path / HEARTBEAT).open() as old:
        inode = os.fstat(old.fileno()).st_ino
        first = read_heartbeat(tmp_path)
        write_heartbeat(tmp_path)
        # Written in place, the open file would be the new one (or half of it).
        assert (tmp_path / HEARTBEAT).stat().st_ino != inode
        assert old.read().startswith('{"at": ') and first is not None
    assert read_heartbeat(tmp_path) is not None
    assert [p.name for p in tmp_path.iterdir()] == [HEARTBEAT]


def test_a_failed_write_leaves_the_last_heartbeat_and_no_litter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_heartbeat(tmp_path)
    before = (tmp_path / HEARTBEAT).read_text()

    def disk_gone(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", disk_gone)
    with pytest.raises(OSError, match="Input/output error"):
        write_heartbeat(tmp_path)
    assert (tmp_path / HEARTBEAT).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [HEARTBEAT]


def test_writers_in_two_threads_never_publish_a_partial_heartbeat(
    tmp_path: Path, busy_switching: None
) -> None:
    # The scheduler runs the leader's tick and the lease renewal in different threads,
    # and both write the heartbeat.
    write_heartbeat(tmp_path)
    errors: list[BaseException] = []
    unreadable = 0
    done = threading.Event()

    def write() -> None:
        try:
            for _ in range(300):
                write_heartbeat(tmp_path)
        except BaseException as exc:  # any failure at all is the finding
            errors.append(exc)

    def read() -> None:
        nonlocal unreadable
        while not done.is_set():
            unreadable += read_heartbeat(tmp_path) is None

    writers = [threading.Thread(target=write) for _ in range(2)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert errors == [] and unreadable == 0
    assert [p.name for p in tmp_path.iterdir()] == [HEARTBEAT]
