"""How busy the site is, from the tail of a real access log file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from failover import load
from failover.accesslog import LogFormat
from failover.load import recent_rate

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
VIP = "203.0.113.10"


def line(client: str, at: datetime) -> str:
    stamp = at.strftime("%d/%b/%Y:%H:%M:%S +0000")
    return f'{client} - - [{stamp}] "GET / HTTP/1.1" 200 5 "-" "curl/8"\n'


def test_requests_per_second_over_the_last_seconds_without_the_nodes(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    rows = [line("203.0.113.100", NOW - timedelta(seconds=60))]  # an hour-old log: the window is full
    for tenth in range(50):  # 10 requests a second for 5 s from a client
        rows.append(line("203.0.113.100", NOW - timedelta(seconds=tenth / 10)))
    for second in range(5):  # the peer's monitoring of this node's own address, twice a second
        rows += [line("203.0.113.12", NOW - timedelta(seconds=second))] * 2
    log.write_text("".join(rows))
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, ("203.0.113.11", "203.0.113.12"), NOW)
    assert rate is not None and abs(rate - 10.0) < 2.5, (rate, detail)


def test_a_missing_or_unreadable_log_cannot_tell(tmp_path: Path) -> None:
    rate, detail = recent_rate(tmp_path / "nope.log", LogFormat.COMBINED, VIP, (), NOW)
    assert rate is None and "nope.log" in detail
    log = tmp_path / "access.log"
    log.write_text("not a log line\n" * 3)  # another format than the one configured
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, (), NOW)
    assert rate is None and "no parsable lines" in detail


def test_an_empty_log_is_a_quiet_site_not_an_unknown_one(tmp_path: Path) -> None:
    # Unknown made the new holder wait confirm.within_s for clients that a quiet site may never send;
    # 0 requests a second makes it prove the move with canaries instead.
    log = tmp_path / "access.log"
    log.write_text("")
    assert recent_rate(log, LogFormat.COMBINED, VIP, (), NOW)[0] == 0.0


def test_a_log_begun_under_a_second_ago_counts_over_a_whole_second(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(line("203.0.113.100", NOW) * 4 + line("203.0.113.12", NOW))  # and the peer's monitor
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, ("203.0.113.12",), NOW)
    assert rate == 4.0 and "counted over 1 s" in detail, detail


def test_with_the_server_address_only_requests_to_the_vip_count(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    rows = [line("203.0.113.100", NOW - timedelta(seconds=60)).rstrip("\n") + " 203.0.113.10\n"]
    for tenth in range(50):
        at = NOW - timedelta(seconds=tenth / 10)
        # Each client request to the VIP has a twin to the node's own address (a monitor on the client).
        rows.append(line("203.0.113.100", at).rstrip("\n") + " 203.0.113.10\n")
        rows.append(line("203.0.113.100", at).rstrip("\n") + " 203.0.113.11\n")
    log.write_text("".join(rows))
    rate, detail = recent_rate(log, LogFormat.COMBINED_SERVER, VIP, (), NOW)
    assert rate is not None and abs(rate - 10.0) < 2.5, (rate, detail)


def _busy_log(path: Path, per_second: int, seconds: int, now: datetime) -> None:
    rows = [line("203.0.113.100", now - timedelta(seconds=i / per_second))
            for i in range(per_second * seconds)]  # fmt: skip
    path.write_text("".join(reversed(rows)))


def test_a_busy_log_is_read_only_until_enough_requests_have_counted(tmp_path: Path) -> None:
    # 200 requests a second for 10 s: ~2,000 lines in 200 KiB, read backwards across several chunks; the
    # rate is told by the last few seconds' requests (at least ENOUGH_REQUESTS over ENOUGH_SPAN_S).
    log = tmp_path / "access.log"
    now = NOW + timedelta(seconds=0.5)  # the clock inside the newest second, as it always is
    _busy_log(log, 200, 10, now)
    assert log.stat().st_size > 4 * load.CHUNK
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, (), now)
    assert rate is not None and abs(rate - 200.0) < 20.0, (rate, detail)
    span = float(detail.split("last ")[1].split(" s")[0])
    assert load.ENOUGH_SPAN_S <= span < load.WINDOW_S, detail


def test_a_quiet_log_is_read_over_the_whole_window(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    now = NOW + timedelta(seconds=0.5)
    _busy_log(log, 5, 60, now)  # 5 a second: fewer than ENOUGH_REQUESTS in 5 s
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, (), now)
    assert rate is not None and abs(rate - 5.0) < 1.0, (rate, detail)
    assert f"last {load.WINDOW_S:.1f} s" in detail, detail


def test_a_log_longer_than_the_tail_reads_whole_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    now = NOW + timedelta(seconds=0.5)
    # ~350 KiB, all under ENOUGH_SPAN_S old: read to the tail's cut.
    rows = [line("203.0.113.100", now - timedelta(seconds=1 + i / 5000)) for i in range(4000)]
    log.write_text("".join(reversed(rows)))
    assert log.stat().st_size > load.TAIL_BYTES
    _, detail = recent_rate(log, LogFormat.COMBINED, VIP, (), now)
    whole = load.TAIL_BYTES // len(rows[0])
    counted = int(detail.split(" requests")[0])
    assert whole - 1 <= counted <= whole, (counted, whole, detail)  # the cut first line is left out


def test_a_line_out_of_time_order_neither_stops_the_reading_nor_counts(tmp_path: Path) -> None:
    # Apache's %t is the request's start: a slow request started 30 s ago is logged after newer ones.
    log = tmp_path / "access.log"
    now = NOW + timedelta(seconds=0.5)
    rows = [line("203.0.113.100", now - timedelta(seconds=i / 20)) for i in range(200)]  # 20 a second
    rows.insert(50, line("203.0.113.101", now - timedelta(seconds=30)))
    log.write_text("".join(reversed(rows)))
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, (), now)
    assert rate is not None and abs(rate - 20.0) < 3.0, (rate, detail)


def test_enough_means_enough_requests_that_count_not_lines(tmp_path: Path) -> None:
    # 300 lines a second of which one in ten is a client's: the rest is the peer's monitoring.
    log = tmp_path / "access.log"
    now = NOW + timedelta(seconds=0.5)
    rows = [line("203.0.113.100" if i % 10 == 0 else "203.0.113.12", now - timedelta(seconds=i / 300))
            for i in range(300 * 8)]  # fmt: skip
    log.write_text("".join(reversed(rows)))
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, ("203.0.113.12",), now)
    assert rate is not None and abs(rate - 30.0) < 4.0, (rate, detail)
    assert int(detail.split(" requests")[0]) >= load.ENOUGH_REQUESTS, detail


def test_a_tail_with_no_whole_line_cannot_tell(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"x" * (load.TAIL_BYTES + 1000))  # one line longer than the tail: it is cut
    rate, detail = recent_rate(log, LogFormat.COMBINED, VIP, (), NOW)
    assert rate is None and "no parsable lines" in detail, detail
    log.write_text("\n\n  \n")  # only blank lines: nobody was served
    assert recent_rate(log, LogFormat.COMBINED, VIP, (), NOW)[0] == 0.0
