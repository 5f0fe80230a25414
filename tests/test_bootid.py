"""The boot id: grows at every start whatever the wall clock does, durably, and the peer accepts it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from failover import bootid, wire

HOUR_NS = 3600 * 10**9
NOW_NS = 1_790_000_000 * 10**9


def test_a_clock_stepped_back_an_hour_still_gives_a_larger_id_that_the_peer_accepts(tmp_path: Path) -> None:
    guard = wire.ReplayGuard()
    first = bootid.next_boot(tmp_path, lambda: NOW_NS)
    second = bootid.next_boot(tmp_path, lambda: NOW_NS - HOUR_NS)  # NTP stepped back between starts
    assert second > first
    for boot, seq in ((first, 1), (first, 2), (second, 1)):
        env = wire.Envelope(cluster="web", sender="live", boot=boot, seq=seq, message=wire.Done(epoch=1))
        assert guard.accept(env)
    old = wire.Envelope(cluster="web", sender="live", boot=first, seq=99, message=wire.Done(epoch=1))
    assert not guard.accept(old)  # the earlier run's datagrams are still replays


def test_the_clock_is_a_floor_so_ids_from_the_time_based_version_are_left_behind(tmp_path: Path) -> None:
    assert bootid.next_boot(tmp_path, lambda: NOW_NS) == NOW_NS
    assert bootid.next_boot(tmp_path, lambda: NOW_NS + 5) == NOW_NS + 5
    assert bootid.next_boot(tmp_path, lambda: 0) == NOW_NS + 6


def test_the_id_is_on_disk_before_it_is_returned(tmp_path: Path) -> None:
    boot = bootid.next_boot(tmp_path / "state", lambda: 42)
    assert (tmp_path / "state" / "boot").read_text() == f"{boot}\n"
    assert not (tmp_path / "state" / "boot.tmp").exists()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_agents_started_at_once_never_share_an_id(tmp_path: Path) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def start() -> None:
        for _ in range(20):
            boot = bootid.next_boot(tmp_path, lambda: 0)
            with lock:
                got.append(boot)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 121))


@pytest.mark.parametrize("content", ["not-a-number\n", "-5\n", f"{2**63}\n", "deadbeef" * 8])
def test_a_damaged_file_is_one_line_error_that_never_shows_its_content(tmp_path: Path, content: str) -> None:
    (tmp_path / "boot").write_text(content)
    with pytest.raises(bootid.BootIdError) as err:
        bootid.next_boot(tmp_path, lambda: 1)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "boot") in message
    # Past the file's name (pytest's own directory names hold digits and dashes, "pytest-54"):
    assert content.strip() not in message.replace(str(tmp_path / "boot"), "")
    assert (tmp_path / "boot").read_text() == content  # nothing changed


def test_an_id_that_cannot_grow_is_refused(tmp_path: Path) -> None:
    (tmp_path / "boot").write_text(f"{bootid.BOOT_MAX}\n")
    with pytest.raises(bootid.BootIdError, match="cannot grow"):
        bootid.next_boot(tmp_path, lambda: 1)
