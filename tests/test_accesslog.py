"""Tests for failover.accesslog: line formats, what counts as proof, and following a log across rotation."""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failover.accesslog import (
    APACHE_COMBINED_SERVER,
    DESTINATION_LOG,
    DESTINATION_UNKNOWN,
    DESTINATION_WITNESS,
    NGINX_COMBINED_SERVER,
    REJECT_REASONS,
    LogEntry,
    LogFollower,
    LogFormat,
    Proof,
    parse_time,
    proof,
)
from tests import nsutil

NGINX_LINE = '203.0.113.100 - - [26/Nov/2026:04:30:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/7.88.1"'
COMMON_LINE = '203.0.113.100 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326'


def line(client: str = "203.0.113.100", path: str = "/", status: int = 200) -> bytes:
    return (
        f'{client} - - [26/Nov/2026:04:30:00 +0000] "GET {path} HTTP/1.1" {status} 5 "-" "curl/7.88.1"\n'
    ).encode()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def drain(follower: LogFollower) -> list[LogEntry]:
    """Polls until a poll changes nothing: what the follower can see right now, whatever its budget."""
    entries: list[LogEntry] = []
    while True:
        before = (follower.stats.bytes_read, follower.stats.rotations, follower.stats.truncations)
        entries += follower.poll()
        if (follower.stats.bytes_read, follower.stats.rotations, follower.stats.truncations) == before:
            return entries


def paths(entries: list[LogEntry]) -> list[str]:
    return [(e.request or "").split()[1] for e in entries]


# --- formats ------------------------------------------------------------------------------------------------


def test_combined_reads_an_nginx_line() -> None:
    entry = LogFormat.COMBINED.parse(NGINX_LINE)
    assert entry == LogEntry(
        client="203.0.113.100",
        time=datetime(2026, 11, 26, 4, 30, 0, tzinfo=UTC),
        request="GET / HTTP/1.1",
        status=200,
        user_agent="curl/7.88.1",
    )


def test_common_reads_an_apache_line_with_offset() -> None:
    entry = LogFormat.COMMON.parse(COMMON_LINE)
    assert entry is not None
    assert entry.client == "203.0.113.100"
    assert entry.time == datetime(2000, 10, 10, 13, 55, 36, tzinfo=timezone(timedelta(hours=-7)))
    assert entry.time is not None and entry.time.utcoffset() == timedelta(hours=-7)
    assert entry.request == "GET /apache_pb.gif HTTP/1.0"
    assert entry.status == 200


def test_common_reads_combined_lines_but_not_the_reverse() -> None:
    assert LogFormat.COMMON.parse(NGINX_LINE) is not None
    assert LogFormat.COMBINED.parse(COMMON_LINE) is None


def test_combined_tolerates_escaped_quotes_trailing_fields_and_dashes() -> None:
    apache = r'198.51.100.7 - - [26/Nov/2026:04:30:00 +0000] "GET /\"x\" HTTP/1.1" 404 - "-" "a \"b\"" 0.001'
    entry = LogFormat.COMBINED.parse(apache)
    assert entry is not None and entry.status == 404 and entry.request == r"GET /\"x\" HTTP/1.1"
    no_status = '198.51.100.7 - - [26/Nov/2026:04:30:00 +0000] "-" - 0 "-" "-"'
    entry = LogFormat.COMBINED.parse(no_status)
    assert entry is not None and entry.status is None and entry.request == "-"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("client.example", "client.example"),
    ],
)
def test_client_addresses_are_canonical(raw: str, expected: str) -> None:
    entry = LogFormat.COMBINED.parse(NGINX_LINE.replace("203.0.113.100", raw, 1))
    assert entry is not None and entry.client == expected


def test_unreadable_time_still_gives_an_entry() -> None:
    entry = LogFormat.COMBINED.parse(NGINX_LINE.replace("26/Nov/2026:04:30:00 +0000", "yesterday-ish"))
    assert entry is not None and entry.time is None and entry.client == "203.0.113.100"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/Oct/2000:13:55:36 -0700", datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)),
        ("[26/Nov/2026:04:30:00 +0000]", datetime(2026, 11, 26, 4, 30, tzinfo=UTC)),
        ("2026-11-26T05:30:00+01:00", datetime(2026, 11, 26, 4, 30, tzinfo=UTC)),
        ("1795667400.123", datetime(2026, 11, 26, 4, 30, 0, 123000, tzinfo=UTC)),
        ("2026-11-26T04:30:00", None),  # no offset: cannot be placed
        ("31/Feb/2026:04:30:00 +0000", None),
        ("26/Foo/2026:04:30:00 +0000", None),
        ("26/Nov/2026:04:30:00 +9900", None),
        ("", None),
    ],
)
def test_parse_time(text: str, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_custom_regex() -> None:
    fmt = LogFormat.named(r"^(?P<time>\S+) (?P<client>\S+) (?P<status>\d+) (?P<request>.*)$")
    assert fmt.name == "custom"
    entry = fmt.parse("2026-11-26T04:30:00+00:00 2001:db8::7 503 GET /x HTTP/2.0")
    assert entry == LogEntry(
        client="2001:db8::7",
        time=datetime(2026, 11, 26, 4, 30, tzinfo=UTC),
        request="GET /x HTTP/2.0",
        status=503,
    )
    only_required = LogFormat.named(r"(?P<client>\S+) at (?P<time>\S+)")
    assert only_required.parse("10.0.0.1 at 1795667400") == LogEntry(
        "10.0.0.1", datetime(2026, 11, 26, 4, 30, tzinfo=UTC), None, None
    )


def test_named_builtins() -> None:
    assert LogFormat.named("combined") is LogFormat.COMBINED
    assert LogFormat.named(" Common ") is LogFormat.COMMON


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("(?P<client>\\S+", "not combined, combined_server, common or a valid regex: missing )"),
        ("(?P<client>\\S+) \\S+", "named group(s) (?P<time>...)"),
        ("combind", "or a regex with the named group(s) (?P<client>...) and (?P<time>...)"),
        ("(?P<time>.*)\n", "named group(s) (?P<client>...)"),
    ],
)
def test_bad_format_spec_says_why_in_one_line(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        LogFormat.named(spec)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("garbage", ["", "garbage", "\x00\x01", "- - - [", '1.2.3.4 - - [x] "GET'])
def test_garbage_lines_do_not_parse(garbage: str) -> None:
    assert LogFormat.COMBINED.parse(garbage) is None
    assert LogFormat.COMMON.parse(garbage) is None


@given(st.text(max_size=300))
def test_parse_never_raises(text: str) -> None:
    for fmt in (LogFormat.COMBINED, LogFormat.COMMON):
        fmt.parse(text)
        fmt.parse(NGINX_LINE[: len(text) % len(NGINX_LINE)] + text)


# --- counting -----------------------------------------------------------------------------------------------


# --- the server address ------------------------------------------------------------------------------------

VIP = "203.0.113.10"
VIP6 = "2001:db8::10"


def server_line(client: str = "203.0.113.100", server: str = VIP, agent: str = "curl/7.88.1") -> str:
    return f'{client} - - [26/Nov/2026:04:30:00 +0000] "GET / HTTP/1.1" 200 5 "-" "{agent}" {server}'


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        ("203.0.113.10", "203.0.113.10"),
        ("::ffff:203.0.113.10", "203.0.113.10"),  # nginx on a dual-stack socket
        ("2001:DB8:0:0:0:0:0:10", "2001:db8::10"),
        ("[2001:db8::10]", "2001:db8::10"),
        ("-", None),
        ("www.example", None),
        ("203.0.113.300", None),
    ],
)
def test_combined_server_reads_the_address_asked_in_canonical_form(logged: str, expected: str | None) -> None:
    entry = LogFormat.COMBINED_SERVER.parse(server_line(server=logged))
    assert entry is not None
    assert entry.server == expected
    assert entry.client == "203.0.113.100" and entry.user_agent == "curl/7.88.1" and entry.status == 200


def test_combined_server_needs_the_field_and_combined_ignores_it() -> None:
    assert LogFormat.COMBINED_SERVER.parse(NGINX_LINE) is None  # a plain combined line lacks it
    plain = LogFormat.COMBINED.parse(server_line())
    assert plain is not None and plain.server is None  # combined reads the line, not the address
    assert LogFormat.named("combined_server") is LogFormat.COMBINED_SERVER
    assert LogFormat.COMBINED_SERVER.destination_known
    assert not LogFormat.COMBINED.destination_known and not LogFormat.COMMON.destination_known


def test_user_agent_keeps_apache_escapes_and_dash_is_none() -> None:
    apache = server_line(agent=r"failover/0.1.0 \"probe\"")
    entry = LogFormat.COMBINED_SERVER.parse(apache)
    assert entry is not None and entry.user_agent == r"failover/0.1.0 \"probe\"" and entry.server == VIP
    dash = LogFormat.COMBINED.parse(NGINX_LINE.replace('"curl/7.88.1"', '"-"'))
    assert dash is not None and dash.user_agent is None


def test_custom_regex_with_a_server_group() -> None:
    fmt = LogFormat.named(r"^(?P<server>\S+) (?P<client>\S+) \[(?P<time>[^]]+)\]")
    assert fmt.destination_known
    entry = fmt.parse("2001:db8::10 ::ffff:203.0.113.7 [26/Nov/2026:04:30:00 +0000]")
    assert entry is not None and entry.server == "2001:db8::10" and entry.client == "203.0.113.7"


def test_the_documented_server_lines_are_the_preset() -> None:
    # The nginx and Apache lines failover check prints must write what COMBINED_SERVER reads: same fields,
    # same order, the server address last.
    assert NGINX_COMBINED_SERVER.startswith("log_format combined_server '$remote_addr - $remote_user ")
    assert NGINX_COMBINED_SERVER.endswith('"$http_user_agent" $server_addr\';')
    assert APACHE_COMBINED_SERVER.endswith('\\"%{User-Agent}i\\" %A" combined_server')
    assert "%a " in APACHE_COMBINED_SERVER and "%>s" in APACHE_COMBINED_SERVER


# --- proof --------------------------------------------------------------------------------------------------

NODES = ("203.0.113.1", "203.0.113.2")


def entry(client: str, server: str | None = VIP, agent: str | None = "curl/8") -> LogEntry:
    return LogEntry(client, None, "GET / HTTP/1.1", 200, server=server, user_agent=agent)


def rejected(p: Proof) -> dict[str, int]:
    return dict(p.rejected)


def test_with_the_server_address_only_requests_to_the_vip_count() -> None:
    entries = [
        entry("203.0.113.100"),
        entry("203.0.113.100", server="203.0.113.2"),  # the same client asking the node's own address
        entry("203.0.113.101", server="::ffff:203.0.113.10"),
        entry("203.0.113.102", server="203.0.113.2"),
    ]
    p = proof(entries, vip=VIP, exclude=NODES, destination_known=True)
    assert p.counted == 2
    assert p.clients == ("203.0.113.100", "203.0.113.101")
    assert rejected(p) == {"not-to-vip": 2}
    assert p.destination == DESTINATION_LOG and p.destination_known


def test_ipv6_vip_compares_canonically() -> None:
    entries = [
        entry("2001:db8::100", server="2001:db8::10"),
        entry("2001:db8::101", server="2001:DB8:0::10"),
        entry("2001:db8::102", server="2001:db8::11"),
        entry("2001:db8::103", server="203.0.113.10"),
    ]
    p = proof(entries, vip="2001:DB8:0:0::10", exclude=(), destination_known=True)
    assert p.counted == 2 and p.clients == ("2001:db8::100", "2001:db8::101")
    assert rejected(p) == {"not-to-vip": 2}


def test_own_requests_are_never_proof() -> None:
    entries = [
        entry("203.0.113.100", agent="failover/0.1.0"),
        entry("203.0.113.100", agent="failover/"),
        entry("203.0.113.100", agent="Mozilla/5.0 failover/0.1.0"),  # only a prefix marks ours
        entry("203.0.113.100", agent="Failover/0.1.0"),
        entry("203.0.113.100", agent=None),
    ]
    p = proof(entries, vip=VIP, exclude=(), destination_known=True)
    assert p.counted == 3 and rejected(p) == {"own-request": 2}
    assert proof(entries, vip=VIP, exclude=(), destination_known=True, marker="Failover/").counted == 4


@pytest.mark.parametrize(
    "client",
    ["127.0.0.1", "127.45.6.7", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1", "203.0.113.10"],
)
def test_loopback_and_the_vip_itself_are_never_clients(client: str) -> None:
    parsed = LogFormat.COMBINED_SERVER.parse(server_line(client=client))
    assert parsed is not None
    p = proof([parsed, parsed], vip=VIP, exclude=(), destination_known=True)
    assert p.counted == 0 and rejected(p) == {"loopback": 2}
    assert proof([entry(client, server=None)], vip=VIP, exclude=(), destination_known=False).counted == 0


def test_excluded_clients_match_in_any_form() -> None:
    from ipaddress import ip_address

    entries = [
        entry("::ffff:203.0.113.1"),
        entry("203.0.113.2"),
        entry("2001:db8::1", server=VIP6),
        entry("2001:db8::2", server=VIP6),
    ]
    exclude = [ip_address("203.0.113.1"), "::ffff:203.0.113.2", "2001:DB8:0:0::1", "not-an-address"]
    p = proof(entries, vip=VIP6, exclude=exclude, destination_known=True)
    assert rejected(p) == {"excluded": 3}
    assert p.counted == 1 and p.clients == ("2001:db8::2",)


def test_unparsed_server_or_client_is_never_a_match() -> None:
    entries = [entry("203.0.113.100", server=None), entry("www.example"), entry("203.0.113.101")]
    p = proof(entries, vip=VIP, exclude=(), destination_known=True)
    assert p.counted == 1 and rejected(p) == {"unparsed": 2} and p.unparsed == 2


def test_without_the_server_address_every_other_request_counts_and_the_proof_says_so() -> None:
    entries = [entry("203.0.113.100", server=None), entry("203.0.113.1", server=None)]
    p = proof(entries, vip=VIP, exclude=NODES, destination_known=False)
    assert p.counted == 1 and p.destination == DESTINATION_UNKNOWN and not p.destination_known
    assert rejected(p) == {"excluded": 1}


def test_kernel_witness_decides_when_the_log_cannot() -> None:
    entries = [entry("203.0.113.100", server=None), entry("::ffff:203.0.113.101", server=None)]
    p = proof(entries, vip=VIP, exclude=NODES, destination_known=False, witnessed={"203.0.113.101"})
    assert p.counted == 1 and p.clients == ("203.0.113.101",)
    assert rejected(p) == {"not-witnessed": 1}
    assert p.destination == DESTINATION_WITNESS and p.destination_known
    empty = proof(entries, vip=VIP, exclude=(), destination_known=False, witnessed=())
    assert empty.counted == 0 and rejected(empty) == {"not-witnessed": 2}


def test_each_rejected_entry_is_counted_once_under_the_first_reason() -> None:
    # Ours, from loopback, excluded and not to the VIP all at once: it is our own request.
    p = proof([entry("127.0.0.1", server="203.0.113.1", agent="failover/0.1.0")],
              vip=VIP, exclude=["127.0.0.1"], destination_known=True)
    assert rejected(p) == {"own-request": 1}
    assert [r for r, _ in p.rejected] == [r for r in REJECT_REASONS if r in rejected(p)]


def test_first_ten_distinct_clients_in_order_and_batches_add_up() -> None:
    clients = [f"203.0.113.{100 + i % 12}" for i in range(30)]
    whole = proof([entry(c) for c in clients], vip=VIP, exclude=(), destination_known=True)
    assert whole.counted == 30
    assert whole.clients == tuple(f"203.0.113.{100 + i}" for i in range(10))
    halves = [proof([entry(c) for c in part], vip=VIP, exclude=(), destination_known=True)
              for part in (clients[:7], clients[7:])]
    assert halves[0] + halves[1] == whole
    weak = proof([entry("203.0.113.100", server="203.0.113.1")], vip=VIP, exclude=(), destination_known=False)
    total = whole + weak
    assert total.destination == DESTINATION_UNKNOWN  # a sum is as strong as its weakest part
    assert total.counted == 31
    assert Proof(DESTINATION_LOG) + Proof(DESTINATION_LOG) == Proof(DESTINATION_LOG)
    assert total.to_json()["rejected"] == {}


def test_a_bad_vip_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        proof([], vip="vip.example", exclude=(), destination_known=True)


addresses = st.sampled_from(
    ["203.0.113.10", "::ffff:203.0.113.10", "203.0.113.1", "127.0.0.1", "::1", "2001:db8::10", "2001:db8::5",
     "203.0.113.77", "::ffff:127.0.0.2", "host.example", "-"]
)


@given(
    st.lists(
        st.tuples(addresses, st.one_of(st.none(), addresses), st.sampled_from([None, "curl", "failover/1"]))
    ),
    st.booleans(),
)
def test_proof_accounts_for_every_entry_and_counts_nothing_it_must_not(
    rows: list[tuple[str, str | None, str | None]], destination_known: bool
) -> None:
    entries = [LogEntry(c, None, None, None, server=s, user_agent=a) for c, s, a in rows]
    p = proof(entries, vip=VIP, exclude=["203.0.113.1"], destination_known=destination_known)
    assert p.counted + sum(n for _, n in p.rejected) == len(entries)
    assert set(p.clients) <= {"203.0.113.77", "2001:db8::10", "2001:db8::5"}
    counted = [e for e in entries if proof([e], vip=VIP, exclude=["203.0.113.1"],
                                           destination_known=destination_known).counted]
    assert all(e.user_agent != "failover/1" for e in counted)
    if destination_known:
        assert all(e.server in ("203.0.113.10", "::ffff:203.0.113.10") for e in counted)


# --- following ----------------------------------------------------------------------------------------------


def test_start_at_end_skips_old_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(line(path="/old1") + line(path="/old2"))
    with LogFollower(log, LogFormat.COMBINED) as follower:
        follower.start_at_end()
        assert follower.poll() == []
        append(log, line(path="/new"))
        assert paths(follower.poll()) == ["/new"]
        assert follower.poll() == []
        assert follower.stats.lines == 1


def test_without_start_at_end_reads_from_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(line(path="/old"))
    follower = LogFollower(log, LogFormat.COMBINED)
    assert paths(follower.poll()) == ["/old"]
    follower.close()


def test_start_at_end_in_the_middle_of_a_line_drops_that_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    whole = line(path="/half")
    log.write_bytes(line(path="/old") + whole[:20])
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    append(log, whole[20:] + line(path="/new"))
    assert paths(follower.poll()) == ["/new"]
    assert follower.stats.unparsed == 0 and follower.stats.truncated_lines == 0
    follower.close()


def test_file_created_after_start(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    assert follower.poll() == []
    assert follower.last_error is None
    log.write_bytes(line(path="/first") + line(path="/second"))
    assert paths(follower.poll()) == ["/first", "/second"]
    follower.close()


def test_partial_lines_wait_for_their_newline(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    data = line(path="/a") + line(path="/b")
    cut1, cut2 = 30, len(line(path="/a")) + 10
    append(log, data[:cut1])
    assert follower.poll() == []
    append(log, data[cut1:cut2])
    assert paths(follower.poll()) == ["/a"]
    assert follower.poll() == []
    append(log, data[cut2:])
    assert paths(follower.poll()) == ["/b"]
    assert follower.stats.lines == 2
    follower.close()


def test_garbage_and_non_utf8_bytes_never_raise(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    append(
        log,
        b"garbage\n\xff\xfe\x00\x80\n\r\n"
        + line(path="/caf@").replace(b"@", b"\xc3\xa9\xff")
        + line(path="/ok"),
    )
    entries = follower.poll()
    assert paths(entries) == ["/caf\u00e9\ufffd", "/ok"]
    assert follower.stats.lines == 5
    assert follower.stats.unparsed == 3
    follower.close()


def test_crlf_line_endings(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(line(path="/crlf").replace(b"\n", b"\r\n"))
    follower = LogFollower(log, LogFormat.COMBINED)
    assert paths(follower.poll()) == ["/crlf"]
    follower.close()


def test_one_megabyte_line_is_skipped_with_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    huge = b'203.0.113.100 - - [26/Nov/2026:04:30:00 +0000] "GET /' + b"x" * 1_000_000 + b' HTTP/1.1" 200 5\n'
    append(log, line(path="/before") + huge[:500_000])
    assert paths(follower.poll()) == ["/before"]
    assert follower.stats.truncated_lines == 1
    assert follower._current is not None and len(follower._current.pending) <= follower.max_line_bytes
    append(log, huge[500_000:] + line(path="/after"))
    assert paths(follower.poll()) == ["/after"]
    assert follower.stats.truncated_lines == 1
    assert follower.stats.unparsed == 0
    follower.close()


def test_a_poll_reads_a_bounded_amount(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED, max_bytes_per_poll=1000)
    follower.start_at_end()
    append(log, b"".join(line(path=f"/{i}") for i in range(100)))
    first = follower.poll()
    assert follower.stats.bytes_read <= 1000
    assert 0 < len(first) < 100
    assert paths(first + drain(follower)) == [f"/{i}" for i in range(100)]
    follower.close()


def test_default_poll_reads_at_most_one_mebibyte(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    append(log, line() * 30_000)  # ~2.6 MB
    first = follower.poll()
    assert follower.stats.bytes_read <= 1024 * 1024
    assert len(first) + len(drain(follower)) == 30_000
    follower.close()


def test_rename_and_create_drains_the_old_file_first(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    with log.open("ab", buffering=0) as writer:  # the web server's descriptor
        writer.write(line(path="/1"))
        assert paths(follower.poll()) == ["/1"]
        writer.write(line(path="/2"))
        os.rename(log, tmp_path / "access.log.1")  # logrotate
        assert paths(follower.poll()) == ["/2"]  # nothing at the path yet: keep reading what we hold
        log.touch()  # logrotate's `create`
        writer.write(line(path="/3"))  # the server has not reopened yet
        assert paths(follower.poll()) == ["/3"]
        writer.write(line(path="/4"))
    with log.open("ab", buffering=0) as writer:  # after USR1
        writer.write(line(path="/5"))
        assert paths(follower.poll()) == ["/4", "/5"]
        writer.write(line(path="/6"))
        assert paths(follower.poll()) == ["/6"]
    assert follower.stats.rotations == 1
    assert follower._retired is None  # the old file was let go once the writer had moved
    follower.close()


def test_rename_and_create_between_two_polls(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    append(log, line(path="/1"))
    os.rename(log, tmp_path / "access.log.1")
    append(tmp_path / "access.log.1", line(path="/2"))
    append(log, line(path="/3"))
    assert paths(follower.poll()) == ["/1", "/2", "/3"]
    assert follower.stats.rotations == 1
    follower.close()


def test_copytruncate_restarts_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(line(path="/old"))
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    with log.open("ab", buffering=0) as writer:
        writer.write(line(path="/1") + line(path="/2"))
        assert paths(follower.poll()) == ["/1", "/2"]
        shutil.copyfile(log, tmp_path / "access.log.1")
        os.truncate(log, 0)
        assert follower.poll() == []
        assert follower.stats.truncations == 1
        writer.write(line(path="/3"))
        assert paths(follower.poll()) == ["/3"]
    assert follower.stats.rotations == 0
    follower.close()


def test_copytruncate_refilled_past_our_offset_is_still_noticed(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    with log.open("ab", buffering=0) as writer:
        writer.write(line(path="/1"))
        assert paths(follower.poll()) == ["/1"]
        os.truncate(log, 0)
        writer.write(line(path="/2") + line(path="/3"))
        assert paths(follower.poll()) == ["/2", "/3"]
    assert follower.stats.truncations == 1
    follower.close()


def test_copytruncate_with_a_writer_without_o_append(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    with log.open("r+b", buffering=0) as writer:  # writes at its own offset: leaves a hole after truncation
        writer.write(line(path="/1"))
        assert paths(follower.poll()) == ["/1"]
        os.truncate(log, 0)
        assert follower.poll() == []
        writer.write(line(path="/2"))
        assert paths(follower.poll()) == ["/2"]
    follower.close()


def test_delete_then_recreate(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    with log.open("ab", buffering=0) as writer:
        writer.write(line(path="/1"))
        assert paths(follower.poll()) == ["/1"]
        log.unlink()
        writer.write(line(path="/2"))  # still going to the deleted file
        assert paths(follower.poll()) == ["/2"]
        writer.write(line(path="/3"))
        assert follower.last_error is None
    assert paths(follower.poll()) == ["/3"]
    assert follower.poll() == []
    log.write_bytes(line(path="/4"))
    assert paths(follower.poll()) == ["/4"]
    assert follower.stats.rotations == 1
    follower.close()


def test_io_trouble_is_reported_not_raised(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.mkdir()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    assert follower.poll() == []
    assert follower.last_error is not None and "not a regular file" in follower.last_error
    assert follower.stats.errors >= 1
    log.rmdir()
    log.write_bytes(line(path="/1"))
    assert paths(follower.poll()) == ["/1"]
    assert follower.last_error is None
    follower.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported_and_old_lines_stay_skipped(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(line(path="/old"))
    log.chmod(0)
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    assert follower.poll() == []
    assert follower.last_error is not None and "open" in follower.last_error
    log.chmod(0o644)
    append(log, line(path="/new"))
    assert paths(follower.poll()) == ["/new"]
    follower.close()


def test_close_stops_polling(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    follower = LogFollower(log, LogFormat.COMBINED)
    follower.start_at_end()
    follower.close()
    append(log, line())
    assert follower.poll() == []
    follower.close()  # twice is fine
    follower.start_at_end()
    append(log, line(path="/again"))
    assert paths(follower.poll()) == ["/again"]
    follower.close()


def test_follower_rejects_nonsense_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LogFollower(tmp_path / "x", LogFormat.COMBINED, max_line_bytes=0)


# --- property -----------------------------------------------------------------------------------------------

_CLIENTS = ["203.0.113.100", "198.51.100.7", "2001:db8::1", "2001:db8:0:1::42", "192.0.2.1"]


class _Writer:
    """A web server's access-log descriptor, and the rotations done to its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO = path.open("ab", buffering=0)
        self.rotated = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def reopen(self) -> None:
        self.file.close()
        self.file = self.path.open("ab", buffering=0)

    def close(self) -> None:
        self.file.close()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_follower_returns_exactly_the_written_lines_in_order(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 30), label="lines")
    # Unique lines: copytruncate is recognised by the bytes before our offset changing, and real log lines
    # differ (time, path, client) where identical generated ones would not.
    suffixes = data.draw(st.lists(st.text("abc/-_.~%", max_size=12), min_size=n, max_size=n))
    lines = [line(_CLIENTS[i % len(_CLIENTS)], f"/{i}/{s}") for i, s in enumerate(suffixes)]
    payload = b"".join(lines)
    line_ends = [sum(len(x) for x in lines[: i + 1]) for i in range(n)]
    cuts = set(data.draw(st.lists(st.integers(1, len(payload) - 1), max_size=12), label="cuts"))
    rotations: dict[int, str] = data.draw(
        st.dictionaries(
            st.sampled_from(line_ends[:-1] or [0]),
            st.sampled_from(["rename", "rename-create", "copytruncate", "delete"]),
            max_size=3,
        ),
        label="rotations",
    )
    rotations.pop(0, None)
    budget = data.draw(st.sampled_from([1 << 20, 4096, 150, 7]), label="budget")

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        exists_at_start = data.draw(st.booleans(), label="exists_at_start")
        if exists_at_start:
            log.write_bytes(line(path="/old") * 3)
        follower = LogFollower(log, LogFormat.COMBINED, max_bytes_per_poll=budget)
        follower.start_at_end()
        got = follower.poll()
        writer = _Writer(log)
        reopen_pending = False
        points = sorted(cuts | set(rotations) | {len(payload)})
        start = 0
        for point in points:
            writer.write(payload[start:point])
            start = point
            # A server writes whole lines, so it reopens its log between two of them.
            if reopen_pending and point in line_ends and data.draw(st.booleans()):
                writer.reopen()
                reopen_pending = False
            if data.draw(st.booleans()):
                got += follower.poll()
            kind = rotations.get(point)
            if kind is None:
                continue
            if reopen_pending:
                writer.reopen()
            # A poll between a server's reopen and the next rotation: two rotations inside one poll
            # interval hide the middle file from any path-polling reader.
            got += drain(follower)
            writer.rotated += 1
            if kind == "copytruncate":
                # Lines between the last poll and the truncation live only in the copy; logrotate cannot
                # avoid that either.
                shutil.copyfile(log, Path(tmp) / f"access.log.{writer.rotated}")
                os.truncate(log, 0)
                reopen_pending = False
            else:
                if kind == "delete":
                    log.unlink()
                else:
                    os.rename(log, Path(tmp) / f"access.log.{writer.rotated}")
                if kind == "rename-create":
                    log.touch()
                reopen_pending = True
            if data.draw(st.booleans()):
                got += follower.poll()
        if reopen_pending:
            writer.reopen()
        writer.close()
        got += drain(follower)
        follower.close()

    assert got == [LogFormat.COMBINED.parse(x.decode().rstrip("\n")) for x in lines]
    assert follower.stats.unparsed == 0
    assert follower.stats.truncated_lines == 0
    assert follower.stats.errors == 0


def test_follower_counts_a_server_field_that_is_not_an_address_as_unparsed(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    follower = LogFollower(log, LogFormat.COMBINED_SERVER)
    follower.start_at_end()
    append(log, (server_line() + "\n" + server_line(server="-") + "\n" + "garbage\n").encode())
    entries = drain(follower)
    assert [e.server for e in entries] == [VIP, None]
    assert follower.stats.lines == 3 and follower.stats.unparsed == 2
    p = proof(entries, vip=VIP, exclude=(), destination_known=follower.fmt.destination_known)
    assert p.counted == 1 and p.unparsed == 1


# --- real nginx ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not nsutil.is_root(), reason=nsutil.NEEDS_ROOT_REASON)
@pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("curl") is None, reason="needs nginx and curl"
)
def test_real_nginx_with_the_documented_line_tells_the_vip_from_the_node_address(tmp_path: Path) -> None:
    import subprocess
    import time

    root = tmp_path / "nginx"
    (root / "tmp").mkdir(parents=True)
    log = root / "access.log"
    (root / "nginx.conf").write_text(
        f"""user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 64; }}
http {{
    {NGINX_COMBINED_SERVER}
    access_log {log} combined_server;
    client_body_temp_path {root}/tmp/body; proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fcgi; uwsgi_temp_path {root}/tmp/uwsgi; scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 80 default_server;
        listen [::]:80 ipv6only=on default_server;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    with nsutil.topology(("server", "client")) as topo:
        server, client = topo["server"], topo["client"]
        nsutil.ns(server.netns, "ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
        nsutil.ns(server.netns, "ip", "addr", "add", f"{VIP6}/128", "dev", "eth0", "nodad")
        nsutil.ns(client.netns, "ip", "route", "add", f"{VIP}/32", "dev", "eth0")
        nsutil.ns(client.netns, "ip", "route", "add", f"{VIP6}/128", "dev", "eth0")
        argv = ["ip", "netns", "exec", server.netns, "nginx", "-p", f"{root}/", "-e", f"{root}/error.log",
                "-c", f"{root}/nginx.conf", "-g", "daemon off;"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            follower = LogFollower(log, LogFormat.COMBINED_SERVER)
            follower.start_at_end()
            urls = [f"http://{VIP}/", f"http://{server.ip4}/", f"http://[{VIP6}]/", f"http://[{server.ip6}]/"]
            for url in urls:
                for _ in range(50):  # until nginx answers: bounded, 5 s at most
                    out = nsutil.ns(client.netns, "curl", "-s", "-m", "1", "-o", "/dev/null", "-w",
                                    "%{http_code}", "-A", "curl/8", url, check=False)
                    if out == "200":
                        break
                    time.sleep(0.1)
            nsutil.ns(client.netns, "curl", "-s", "-m", "1", "-o", "/dev/null", "-A", "failover/0.1.0",
                      f"http://{VIP}/", check=False)
            entries: list[LogEntry] = []
            for _ in range(50):
                entries += drain(follower)
                if len(entries) >= 5:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=5)
    ok = [e for e in entries if e.status == 200]
    assert [(e.client, e.server) for e in ok] == [
        (client.ip4, VIP), (client.ip4, server.ip4), (client.ip6, VIP6), (client.ip6, server.ip6),
        (client.ip4, VIP),
    ]
    assert follower.stats.unparsed == 0
    p4 = proof(ok, vip=VIP, exclude=[server.ip4, server.ip6], destination_known=True)
    assert p4.counted == 1 and p4.clients == (client.ip4,)
    assert dict(p4.rejected) == {"own-request": 1, "not-to-vip": 3}
    p6 = proof(ok, vip=VIP6, exclude=[server.ip4, server.ip6], destination_known=True)
    assert p6.counted == 1 and p6.clients == (client.ip6,)
