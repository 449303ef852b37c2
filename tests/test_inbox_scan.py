"""Which files of the watched inbox are written completely (gateway/services/inbox_scan.py), on
real files; the clock is the test's so that "unchanged for the settle time" is exact."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.services.inbox_scan import InboxScanner, is_temporary


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _touch(path: Path, data: bytes, mtime: float) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def test_a_file_being_written_waits_until_unchanged_for_the_settle_time(tmp_path: Path) -> None:
    clock = Clock()
    scanner = InboxScanner(tmp_path, settle_s=10, clock=clock)
    growing = tmp_path / "lab.hl7"
    _touch(growing, b"MSH|^~\\&|A", clock.now)
    assert scanner.scan() == []  # first seen
    for _ in range(3):  # still written: every scan finds it larger and newer
        clock.now += 6
        _touch(growing, growing.read_bytes() + b"|more", clock.now)
        assert scanner.scan() == []
    clock.now += 6
    assert scanner.scan() == []  # unchanged, but for 6 s only
    clock.now += 5
    assert scanner.scan() == [growing]  # unchanged for 11 s


def test_a_file_moved_in_with_an_old_time_is_taken_at_the_second_scan(tmp_path: Path) -> None:
    clock = Clock()
    scanner = InboxScanner(tmp_path, settle_s=10, clock=clock)
    _touch(tmp_path / "old.hl7", b"MSH|", clock.now - 3600)
    assert scanner.scan() == []  # a size seen once says nothing yet
    clock.now += 1
    assert scanner.scan() == [tmp_path / "old.hl7"]


def test_a_file_renamed_in_from_a_temporary_name_is_whole_at_once(tmp_path: Path) -> None:
    clock = Clock()
    scanner = InboxScanner(tmp_path, settle_s=3600, clock=clock)
    for temporary in ("batch.hl7.part", ".batch.hl7"):
        _touch(tmp_path / temporary, b"MSH|", clock.now)
        assert scanner.scan() == []  # a temporary name is never taken
        clock.now += 1
        os.rename(tmp_path / temporary, tmp_path / "batch.hl7")
        assert scanner.scan() == [tmp_path / "batch.hl7"]
        (tmp_path / "batch.hl7").unlink()
        scanner.scan()


def test_temporary_names_directories_and_reports_are_never_taken(tmp_path: Path) -> None:
    clock = Clock()
    scanner = InboxScanner(tmp_path, settle_s=0, clock=clock)
    for name in (".hidden", "a.part", "a.tmp", "a.hl7~", "a.report.json"):
        _touch(tmp_path / name, b"MSH|", 0)
        assert is_temporary(name)
    (tmp_path / "done").mkdir()
    _touch(tmp_path / "done" / "x.hl7", b"MSH|", 0)
    (tmp_path / "link.hl7").symlink_to(tmp_path / "done" / "x.hl7")
    _touch(tmp_path / "b.hl7", b"MSH|", 0)
    scanner.scan()
    clock.now += 1
    assert scanner.scan() == [tmp_path / "b.hl7"]


def test_ready_files_come_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    scanner = InboxScanner(tmp_path, settle_s=1, clock=clock)
    for name, age in (("b.hl7", 30), ("a.hl7", 10), ("c.hl7", 20)):
        _touch(tmp_path / name, b"MSH|", clock.now - age)
    scanner.scan()
    clock.now += 1
    assert [p.name for p in scanner.scan()] == ["b.hl7", "c.hl7", "a.hl7"]
