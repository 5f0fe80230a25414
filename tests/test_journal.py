"""The journal file: entries appended as lines, read back newest-last, torn lines skipped."""

from __future__ import annotations

from pathlib import Path

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
