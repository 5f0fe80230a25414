"""The journal file: entries appended as lines, read back newest-last, torn lines skipped."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from failover import journal


def test_append_and_read_back_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "journal.jsonl"
    assert journal.read(path) == []
    for epoch in range(1, 6):
        journal.append(path, {"kind": "swap", "epoch": epoch, "ok": True, "holder": "backup"})
    assert [e["epoch"] for e in journal.read(path)] == [1, 2, 3, 4, 5]
    assert [e["epoch"] for e in journal.read(path, last=2)] == [4, 5]
    assert all(isinstance(e["at"], float) for e in journal.read(path))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().count("\n") == 5


def test_a_torn_last_line_is_skipped_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal.append(path, {"epoch": 1})
    with open(path, "ab") as f:
        f.write(b'{"epoch": 2, "ok": tr')  # power loss mid-write
    assert [e["epoch"] for e in journal.read(path)] == [1]


def test_read_from_the_end_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    for epoch in range(2000):
        journal.append(path, {"epoch": epoch, "pad": "x" * 100})
    assert path.stat().st_size > 3 * journal.TAIL_CHUNK
    assert [e["epoch"] for e in journal.read(path, last=3)] == [1997, 1998, 1999]
    assert len(journal.read(path)) == 2000


def test_came_from_is_the_newest_successful_move_to_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal.append(path, {"kind": "swap", "epoch": 1, "ok": True, "holder": "backup", "source": "live"})
    journal.append(path, {"kind": "unswap", "epoch": 2, "ok": True, "holder": "live", "source": "backup"})
    journal.append(path, {"kind": "swap", "epoch": 3, "ok": False, "holder": "live", "source": "live"})
    journal.append(path, {"kind": "takeover", "epoch": 4, "ok": True, "holder": "backup", "source": "live"})
    found = journal.came_from(path, "backup")
    assert found is not None and found["epoch"] == 4
    found = journal.came_from(path, "live")
    assert found is not None and found["epoch"] == 2
    assert journal.came_from(tmp_path / "none.jsonl", "live") is None


def test_a_torn_last_line_does_not_swallow_the_next_entry(tmp_path: Path) -> None:
    """The entry appended after a torn line starts a line of its own: it is on disk and it is read."""
    path = tmp_path / "journal.jsonl"
    journal.append(path, {"epoch": 1})
    with open(path, "ab") as f:
        f.write(b'{"epoch": 2, "ok": tr')  # power loss mid-write
    journal.append(path, {"epoch": 3})
    assert [e["epoch"] for e in journal.read(path)] == [1, 3]
    journal.append(path, {"epoch": 4})
    assert [e["epoch"] for e in journal.read(path)] == [1, 3, 4]
    assert path.read_bytes().count(b"\n") == 4  # one repaired line end, no blank lines made


def test_a_file_written_durably_is_fsynced_then_renamed_then_its_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "state" / "state.json"
    journal.write_file_durably(path, b'{"epoch": 3}')
    assert calls == ["fsync-file", "rename", "fsync-dir"]
    assert path.read_bytes() == b'{"epoch": 3}'
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_the_writer_keeps_the_loop_running_during_a_slow_fsync_and_keeps_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.2)  # a busy disk
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    path = tmp_path / "journal.jsonl"
    errors: list[str] = []

    async def main() -> int:
        writer = journal.Writer(path, on_error=lambda err: errors.append(str(err)))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        for epoch in range(1, 4):
            writer.append({"epoch": epoch})
        await writer.flushed()
        task.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert [e["epoch"] for e in journal.read(path)] == [1, 2, 3]
    assert ticks >= 20  # the loop ran all along the 0.6 s of fsyncs (blocked, it would not tick)
    assert errors == []


def test_the_writer_reports_a_failed_append_and_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    errors: list[str] = []

    async def main() -> None:
        writer = journal.Writer(blocker / "journal.jsonl", on_error=lambda err: errors.append(str(err)))
        writer.append({"epoch": 1})
        await writer.flushed()

    asyncio.run(main())
    assert len(errors) == 1 and "cannot append" in errors[0]


def test_an_entry_that_cannot_be_written_is_reported_and_the_next_one_written(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    errors: list[str] = []
    looped: dict[str, object] = {"epoch": 1}
    looped["self"] = looped  # json.dumps raises ValueError, not OSError

    async def main() -> None:
        writer = journal.Writer(path, on_error=lambda err: errors.append(str(err)))
        writer.append(looped)
        writer.append({"epoch": 2})
        await writer.flushed()

    asyncio.run(main())
    assert len(errors) == 1 and str(path) in errors[0] and "ValueError" in errors[0], errors
    assert [e["epoch"] for e in journal.read(path)] == [2]


def test_came_from_looks_back_as_far_as_the_answer_and_no_further(tmp_path: Path) -> None:
    path, pad = tmp_path / "journal.jsonl", "x" * 800  # entries of a real journal's size
    journal.append(path, {"kind": "swap", "epoch": 1, "ok": True, "holder": "backup", "pad": pad})
    for epoch in range(2, 201):  # 199 entries after it that brought the VIP nowhere new: it is the 200th
        journal.append(path, {"kind": "swap", "epoch": epoch, "ok": False, "holder": "live", "pad": pad})
    with path.open("ab") as f:
        f.write(b'{"torn": \n\n[1, 2]\n')  # a torn line, a blank one, a line that is no entry: not counted
    assert path.stat().st_size > 2 * journal.TAIL_CHUNK  # read back across chunks
    found = journal.came_from(path, "backup")
    assert found is not None and found["epoch"] == 1
    journal.append(path, {"kind": "swap", "epoch": 201, "ok": False, "holder": "live"})
    assert journal.came_from(path, "backup") is None  # now the 201st: past the 200 looked at
    found = journal.came_from(path, "backup", within=201)
    assert found is not None and found["epoch"] == 1
    assert journal.came_from(path, "live") is None  # none of them succeeded
    journal.append(path, {"kind": "unswap", "epoch": 202, "ok": True, "holder": "live"})
    found = journal.came_from(path, "live", within=1)
    assert found is not None and found["epoch"] == 202


def test_came_from_an_unreadable_journal_says_so(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").mkdir()  # a directory where the file should be: open() fails
    with pytest.raises(journal.JournalError, match="cannot read"):
        journal.came_from(tmp_path / "journal.jsonl", "live")
