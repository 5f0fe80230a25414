"""Access-log lines and the file they live in: parse them, and follow the log across rotation.

After the VIP moves, the agent proves that traffic moved by counting requests from real clients in the web
server's access log on the new holder. `LogFollower` starts at the end of the log at a chosen moment and hands
back every complete line appended since, parsed by a `LogFormat`; `proof` decides which of those entries are
evidence that clients reach the VIP here. Nothing here makes a protocol decision: `proof` is a pure judgement
of entries, the caller decides what the counts mean for the move.

Reader: our own stat()+pread() poll rather than watchdog, pygtail or inotify_simple. The agent already wakes
on a timer, so one poll is two or three syscalls on a regular file, which never blocks; a library would add a
dependency, a thread (watchdog) or an offset file meant for resuming across runs (pygtail), and inotify needs
its watch re-armed across rotation and does not see writes made on NFS. Polling the path's inode also gives
rotation detection for free: rename+create and delete+recreate drain the old descriptor before switching,
copytruncate shows as a size below our offset or as changed bytes just before it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final

__all__ = [
    "OWN_USER_AGENT_PREFIX",
    "REJECT_REASONS",
    "FollowerStats",
    "LogEntry",
    "LogFollower",
    "LogFormat",
    "Proof",
    "parse_time",
    "proof",
]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request read from the access log.

    `client` is in canonical form when it is an IP address (IPv6 compressed, IPv4-mapped IPv6 as plain IPv4);
    `time` is aware, or None when the log's time field could not be read. `server` is the address the request
    arrived at, canonical like `client`, when the format carries it (nginx `$server_addr`, Apache `%A`), and
    None when it does not or when the field is not an address. `user_agent` is the User-Agent header as
    logged (escapes left as the server wrote them), None when the format lacks it or logged `-`.
    """

    client: str
    time: datetime | None
    request: str | None
    status: int | None
    server: str | None = None
    user_agent: str | None = None


# --- time ---------------------------------------------------------------------------------------------------

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
# Parsed by hand: strptime's %b follows the process locale, the log's month names do not.
_CLF_TIME: Final = re.compile(
    r"(\d{1,2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ?([+-])(\d{2}):?(\d{2})", re.ASCII
)
_EPOCH: Final = re.compile(r"\d{1,12}(?:\.\d{1,9})?", re.ASCII)


def parse_time(text: str) -> datetime | None:
    """An aware datetime from a log time field, or None.

    Accepts the common-log form `10/Oct/2000:13:55:36 -0700` (nginx `$time_local`, Apache `%t`), ISO 8601
    with an offset (nginx `$time_iso8601`) and epoch seconds (nginx `$msec`). A time without an offset is
    None: it cannot be placed against the agent's clock.
    """
    text = text.strip().strip("[]")
    try:
        if (m := _CLF_TIME.fullmatch(text)) is not None:
            day, month_name, year, hour, minute, second, sign, off_h, off_m = m.groups()
            month = _MONTHS.get(month_name.title())
            if month is None:
                return None
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            tz = timezone(-offset if sign == "-" else offset)
            return datetime(int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=tz)
        if _EPOCH.fullmatch(text):
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo is not None else None


def _canonical_client(client: str) -> str:
    # nginx on a dual-stack socket logs `::ffff:192.0.2.1` and may log `2001:DB8::1`; operators write
    # `192.0.2.1` and `2001:db8::1` in the ignore list. Hostnames (Apache HostnameLookups) pass through.
    return _canonical_address(client) or client


def _canonical_address(text: object) -> str | None:
    """The canonical form of an IP address (see `LogEntry`), or None when `text` is not one."""
    try:
        address = ipaddress.ip_address(str(text).strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# --- formats ------------------------------------------------------------------------------------------------

# Quoted fields may hold \" (Apache escapes it so); nginx writes \x22 instead, which needs nothing special.
_QUOTED_BODY: Final = r'(?:[^"\\]|\\.)*'
_COMMON_PATTERN: Final = (
    r"^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "
    rf'"(?P<request>{_QUOTED_BODY})" (?P<status>\d{{3}}|-) (?:\d+|-)'
)
_COMBINED_PATTERN: Final = _COMMON_PATTERN + rf' "{_QUOTED_BODY}" "(?P<user_agent>{_QUOTED_BODY})"'
_COMBINED_SERVER_PATTERN: Final = _COMBINED_PATTERN + r" (?P<server>\S+)"

# The lines that make nginx and Apache write the `combined_server` preset: `combined` plus the address the
# request arrived at. `failover check` prints them; the README quotes them.
NGINX_COMBINED_SERVER: Final = (
    "log_format combined_server '$remote_addr - $remote_user [$time_local] \"$request\" $status "
    "$body_bytes_sent \"$http_referer\" \"$http_user_agent\" $server_addr';"
)
APACHE_COMBINED_SERVER: Final = (
    'LogFormat "%a %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" %A" combined_server'
)
PRESETS: Final = ("combined", "combined_server", "common")


def log_format_problem(spec: str) -> str | None:
    """Why `spec` cannot be a log format (one line), or None when it is a preset or a usable regex."""
    if spec.strip().lower() in PRESETS:
        return None
    try:
        groups = re.compile(spec).groupindex
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        return f"not {', '.join(PRESETS[:-1])}, {PRESETS[-1]} or a valid regex: {exc}"
    missing = [group for group in ("client", "time") if group not in groups]
    if missing:
        names = " and ".join(f"(?P<{group}>...)" for group in missing)
        return f"not {', '.join(PRESETS[:-1])}, {PRESETS[-1]} or a regex with the named group(s) {names}"
    return None


@dataclass(frozen=True, slots=True)
class LogFormat:
    """How to read one access-log line: a regex with named groups `client` and `time`.

    Optional groups `request`, `status`, `user_agent` and `server` (the address the request arrived at) fill
    the matching `LogEntry` fields. The regex is searched, not fully matched, so fields a server appends after
    the standard ones (`$request_time`, ...) do no harm.

    Presets: `common`; `combined`; `combined_server`, which is `combined` followed by the server address.
    For `combined_server`, nginx::

        log_format combined_server '$remote_addr - $remote_user [$time_local] "$request" $status '
                                   '$body_bytes_sent "$http_referer" "$http_user_agent" $server_addr';
        access_log /var/log/nginx/access.log combined_server;

    and Apache::

        LogFormat "%a %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" %A" combined_server
        CustomLog ${APACHE_LOG_DIR}/access.log combined_server

    nginx needs one getsockname() per connection for `$server_addr` unless the `listen` directive names the
    address with `bind`; that is the price of a log that says which address was asked.
    """

    name: str
    pattern: re.Pattern[str]

    COMBINED: ClassVar[LogFormat]
    COMBINED_SERVER: ClassVar[LogFormat]
    COMMON: ClassVar[LogFormat]

    @classmethod
    def named(cls, spec: str) -> LogFormat:
        """A preset by name, or else a regex; ValueError with a one-line reason if it cannot be used."""
        builtin = {
            "combined": cls.COMBINED, "combined_server": cls.COMBINED_SERVER, "common": cls.COMMON
        }.get(spec.strip().lower())
        if builtin is not None:
            return builtin
        problem = log_format_problem(spec)
        if problem is not None:
            raise ValueError(f"log format {spec!r}: {problem}")
        return cls(name="custom", pattern=re.compile(spec))

    @property
    def destination_known(self) -> bool:
        """Whether each line says which address the request arrived at (a `server` group)."""
        return "server" in self.pattern.groupindex

    def parse(self, line: str) -> LogEntry | None:
        """The entry on `line`, or None when the line does not match (garbage, a different format)."""
        m = self.pattern.search(line)
        if m is None:
            return None
        groups = m.groupdict()
        client = groups.get("client")
        if not client:
            return None
        time_text = groups.get("time")
        status_text = groups.get("status")
        status = (
            int(status_text)
            if status_text and status_text.isascii() and status_text.isdigit() and len(status_text) <= 3
            else None
        )
        server_text = groups.get("server")
        user_agent = groups.get("user_agent")
        return LogEntry(
            client=_canonical_client(client),
            time=parse_time(time_text) if time_text else None,
            request=groups.get("request"),
            status=status,
            server=_canonical_address(server_text) if server_text else None,
            user_agent=user_agent if user_agent and user_agent != "-" else None,
        )


LogFormat.COMBINED = LogFormat(name="combined", pattern=re.compile(_COMBINED_PATTERN))
LogFormat.COMBINED_SERVER = LogFormat(name="combined_server", pattern=re.compile(_COMBINED_SERVER_PATTERN))
LogFormat.COMMON = LogFormat(name="common", pattern=re.compile(_COMMON_PATTERN))


# --- proof --------------------------------------------------------------------------------------------------

# What the agents put in the User-Agent of their own requests (health checks, canaries): never proof.
OWN_USER_AGENT_PREFIX: Final = "failover/"
# Why an entry did not count, in the order they are tried: each rejected entry is counted under the first.
REJECT_REASONS: Final = ("unparsed", "own-request", "loopback", "excluded", "not-to-vip", "not-witnessed")
DESTINATION_LOG: Final = "log field"
DESTINATION_WITNESS: Final = "kernel witness"
DESTINATION_UNKNOWN: Final = "client address only"
_MAX_CLIENTS: Final = 10


@dataclass(frozen=True, slots=True)
class Proof:
    """What a batch of log entries proves about clients reaching the VIP on this host.

    `counted` entries are evidence; `clients` are the first (at most 10) distinct clients among them, in
    order; `rejected` maps each reason of `REJECT_REASONS` that occurred to how many entries it rejected.
    `destination` says how the address a request arrived at was known: `DESTINATION_LOG` (the format has
    the server address), `DESTINATION_WITNESS` (the client was seen by the kernel witness) or
    `DESTINATION_UNKNOWN` (only the client address: a request to this node's own address from the same
    client cannot be told from one to the VIP). Proofs of successive batches add up with `+`.
    """

    destination: str
    counted: int = 0
    clients: tuple[str, ...] = ()
    rejected: tuple[tuple[str, int], ...] = ()  # (reason, entries), in REJECT_REASONS order, none zero

    @property
    def destination_known(self) -> bool:
        return self.destination != DESTINATION_UNKNOWN

    @property
    def unparsed(self) -> int:
        """Entries whose client or server field is not an address: a log that stopped parsing shows here."""
        return dict(self.rejected).get("unparsed", 0)

    def __add__(self, other: Proof) -> Proof:
        if not isinstance(other, Proof):
            return NotImplemented
        clients = list(self.clients)
        clients += [c for c in other.clients if c not in clients]
        totals = dict(self.rejected)
        for reason, n in other.rejected:
            totals[reason] = totals.get(reason, 0) + n
        # A sum is only as strong as its weakest part.
        strength = (DESTINATION_UNKNOWN, DESTINATION_WITNESS, DESTINATION_LOG)
        weakest = min(self.destination, other.destination, key=strength.index)
        return Proof(
            destination=weakest,
            counted=self.counted + other.counted,
            clients=tuple(clients[:_MAX_CLIENTS]),
            rejected=tuple((r, totals[r]) for r in REJECT_REASONS if totals.get(r)),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "destination_known": self.destination_known,
            "counted": self.counted,
            "clients": list(self.clients),
            "rejected": dict(self.rejected),
        }


def proof(
    entries: Iterable[LogEntry],
    *,
    vip: object,
    exclude: Collection[object],
    destination_known: bool,
    witnessed: Collection[object] | None = None,
    marker: str = OWN_USER_AGENT_PREFIX,
) -> Proof:
    """Which of `entries` prove that clients reach `vip` here; pure, so the caller may feed batch by batch.

    `destination_known` is the format's (`LogFormat.destination_known`): then an entry counts only if its
    server address is the VIP, and an entry without one is `unparsed`. `witnessed`, for a format without the
    server address, is the kernel witness's set of clients the VIP answered since the claim: an entry counts
    only if its client is in it. Never counted, whatever the format: a User-Agent starting with `marker`
    (the agents' own health checks and canaries), a client in `exclude` (the nodes' own addresses and
    `confirm.ignore_clients`), loopback (127.0.0.0/8, ::1, IPv4-mapped loopback) or the VIP itself as client
    (the host asking itself), and a client that is not an address (nothing above could be checked).
    Addresses compare in canonical form: IPv6 compressed, IPv4-mapped as IPv4.
    """
    vip_text = _canonical_address(vip)
    if vip_text is None:
        raise ValueError(f"the VIP {vip!r} is not an IP address")
    excluded = {a for a in map(_canonical_address, exclude) if a is not None}
    seen = None if witnessed is None else {a for a in map(_canonical_address, witnessed) if a is not None}
    if destination_known:
        destination = DESTINATION_LOG
    else:
        destination = DESTINATION_UNKNOWN if seen is None else DESTINATION_WITNESS
    counted = 0
    clients: list[str] = []
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    for entry in entries:
        reason = _rejection(entry, vip_text, excluded, seen, destination_known, marker)
        if reason is not None:
            rejected[reason] += 1
            continue
        counted += 1
        client = _canonical_client(entry.client)
        if len(clients) < _MAX_CLIENTS and client not in clients:
            clients.append(client)
    return Proof(
        destination=destination,
        counted=counted,
        clients=tuple(clients),
        rejected=tuple((r, n) for r, n in rejected.items() if n),
    )


def _rejection(
    entry: LogEntry,
    vip: str,
    excluded: set[str],
    witnessed: set[str] | None,
    destination_known: bool,
    marker: str,
) -> str | None:
    client = _canonical_address(entry.client)
    if client is None or (destination_known and entry.server is None):
        return "unparsed"
    if marker and entry.user_agent is not None and entry.user_agent.startswith(marker):
        return "own-request"
    if ipaddress.ip_address(client).is_loopback or client == vip:
        return "loopback"
    if client in excluded:
        return "excluded"
    if destination_known and _canonical_address(entry.server) != vip:
        return "not-to-vip"
    if not destination_known and witnessed is not None and client not in witnessed:
        return "not-witnessed"
    return None


# --- following a file ---------------------------------------------------------------------------------------

_READ_CHUNK: Final = 64 * 1024
_DEFAULT_POLL_BYTES: Final = 1024 * 1024
# Enough to cover the whole last line of a typical log, so a copytruncated log refilled past our offset
# between two polls still shows as changed bytes.
_TAIL_BYTES: Final = 256


@dataclass(slots=True)
class FollowerStats:
    """What a `LogFollower` has seen since it was made."""

    lines: int = 0  # complete lines handed to the format (parsed or not)
    unparsed: int = 0  # of those, lines the format did not match (or whose server field is not an address)
    truncated_lines: int = 0  # lines longer than max_line_bytes, skipped whole
    rotations: int = 0  # switches to a different file at the path (rename+create, delete+recreate)
    truncations: int = 0  # restarts from offset 0 of the same file (copytruncate)
    bytes_read: int = 0
    errors: int = 0  # I/O errors; the latest poll's is in LogFollower.last_error


@dataclass(slots=True)
class _Source:
    """One open log file and where we are in it."""

    fd: int
    ident: tuple[int, int]  # (st_dev, st_ino)
    offset: int = 0
    pending: bytearray = field(default_factory=bytearray)  # the incomplete last line, at most max_line_bytes
    skipping: bool = False  # inside a line we drop: too long, or begun before start_at_end()
    tail: bytes = b""  # the bytes just before offset


class LogFollower:
    """Follows one access-log path across rotation; `poll()` returns the entries appended since last time.

    Without `start_at_end()`, the first `poll()` reads the file from its beginning. Not thread-safe: one
    caller at a time (the agent's loop, or one `asyncio.to_thread` call at a time). I/O trouble never raises:
    it is counted in `stats.errors` and described in `last_error` (None when the latest poll had none).

    Known limits, shared by every path-polling reader: lines written between the last poll and a copytruncate
    live only in the copy; if the log is rotated twice between two polls, the middle file is never seen.
    """

    def __init__(
        self,
        path: Path,
        fmt: LogFormat,
        *,
        max_line_bytes: int = 16384,
        max_bytes_per_poll: int = _DEFAULT_POLL_BYTES,
    ) -> None:
        if max_line_bytes < 1 or max_bytes_per_poll < 1:
            raise ValueError("max_line_bytes and max_bytes_per_poll must be positive")
        self.path = path
        self.fmt = fmt
        self.max_line_bytes = max_line_bytes
        self.max_bytes_per_poll = max_bytes_per_poll
        self.stats = FollowerStats()
        self.last_error: str | None = None
        self._current: _Source | None = None
        # The file the path named before a rotation: read until the writer has moved to the new one.
        self._retired: _Source | None = None
        # Where start_at_end() put the start, for a file it could stat but not yet open: (dev, ino, size).
        self._start_mark: tuple[int, int, int] | None = None
        # start_at_end() could not even stat the path: start the first file we open at its end.
        self._start_blind = False
        self._closed = False

    # -- public --

    def start_at_end(self) -> None:
        """Count only what is appended from now on; a missing file is fine (all of it will count)."""
        self._drop_sources()
        self._closed = False
        self.last_error = None
        self._start_mark = None
        self._start_blind = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._error("stat", exc)
            self._start_blind = True
            return
        self._start_mark = (st.st_dev, st.st_ino, st.st_size)
        self._current = self._open()

    def poll(self) -> list[LogEntry]:
        """Entries for the complete lines appended since the last call; reads at most max_bytes_per_poll."""
        if self._closed:
            return []
        self.last_error = None
        lines: list[bytes] = []
        budget = self.max_bytes_per_poll
        if self._retired is not None:
            budget = self._read_retired(budget, lines)
        if budget > 0 and self._current is None:
            self._current = self._open()
        current = self._current
        if budget > 0 and current is not None:
            self._notice_truncation(current)
            budget, at_eof = self._read(current, budget, lines)
            if at_eof and self._path_replaced(current):
                self.stats.rotations += 1
                if self._retired is not None:
                    self._finish(self._retired, lines)
                self._retired = current
                self._current = self._open()
                # Whatever the writer appended to the old file between our last read and the stat above.
                budget = self._read_retired(budget, lines)
                if budget > 0 and self._current is not None:
                    self._read(self._current, budget, lines)
        return self._parse(lines)

    def close(self) -> None:
        """Release the open files; `poll()` returns nothing until `start_at_end()` is called again."""
        self._drop_sources()
        self._closed = True

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- files --

    def _open(self) -> _Source | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._error("open", exc)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                self.stats.errors += 1
                self.last_error = f"open {self.path}: not a regular file"
                return None
            offset = 0
            mark = self._start_mark
            if mark is not None and (st.st_dev, st.st_ino) == mark[:2]:
                offset = mark[2]
            elif self._start_blind:
                offset = st.st_size
            if offset > st.st_size:  # truncated since start_at_end(): all there is now is new
                offset = 0
            source = _Source(fd=fd, ident=(st.st_dev, st.st_ino), offset=offset)
            if offset:
                size = min(offset, _TAIL_BYTES)
                source.tail = os.pread(fd, size, offset - size)
                source.skipping = not source.tail.endswith(b"\n")
        except OSError as exc:
            os.close(fd)
            self._error("open", exc)
            return None
        self._start_mark = None
        self._start_blind = False
        return source

    def _path_replaced(self, current: _Source) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed or deleted, nothing new yet: keep draining the descriptor we hold
        except OSError as exc:
            self._error("stat", exc)
            return False
        return (st.st_dev, st.st_ino) != current.ident

    def _notice_truncation(self, source: _Source) -> None:
        if source.offset == 0:
            return
        try:
            if os.fstat(source.fd).st_size >= source.offset:
                size = len(source.tail)
                if not size or os.pread(source.fd, size, source.offset - size) == source.tail:
                    return
        except OSError as exc:
            self._error("stat", exc)
            return
        self.stats.truncations += 1
        source.offset = 0
        source.pending.clear()
        source.skipping = False
        source.tail = b""

    def _read_retired(self, budget: int, lines: list[bytes]) -> int:
        retired = self._retired
        assert retired is not None
        # Checked before draining: once the writer has put anything in the new file it never writes the old
        # one again, so a drain that reaches the end after this point has everything.
        writer_moved = self._current is not None and self._current.offset > 0
        budget, at_eof = self._read(retired, budget, lines)
        if at_eof and writer_moved:
            self._finish(retired, lines)
            self._retired = None
        return budget

    def _read(self, source: _Source, budget: int, lines: list[bytes]) -> tuple[int, bool]:
        """Reads from `source` until end of file or budget; returns (budget left, reached end of file)."""
        while budget > 0:
            try:
                data = os.pread(source.fd, min(_READ_CHUNK, budget), source.offset)
            except OSError as exc:
                self._error("read", exc)
                return budget, False
            if not data:
                return budget, True
            source.offset += len(data)
            budget -= len(data)
            self.stats.bytes_read += len(data)
            source.tail = (source.tail + data[-_TAIL_BYTES:])[-_TAIL_BYTES:]
            self._split(source, data, lines)
        return budget, False

    def _split(self, source: _Source, data: bytes, lines: list[bytes]) -> None:
        # NUL runs are what a copytruncate leaves when the writer lacks O_APPEND; they are never log text.
        if b"\0" in data:
            data = data.replace(b"\0", b"")
        *complete, rest = data.split(b"\n")
        for piece in complete:
            if source.skipping:
                source.skipping = False
            elif len(source.pending) + len(piece) > self.max_line_bytes:
                self.stats.truncated_lines += 1
            else:
                lines.append(bytes(source.pending) + piece if source.pending else piece)
            source.pending.clear()
        if source.skipping:
            return
        if len(source.pending) + len(rest) > self.max_line_bytes:
            self.stats.truncated_lines += 1
            source.pending.clear()
            source.skipping = True
        else:
            source.pending += rest

    def _finish(self, source: _Source, lines: list[bytes]) -> None:
        # The writer is done with this file: an unterminated last line is all of that line there will be.
        if source.pending and not source.skipping:
            lines.append(bytes(source.pending))
        self._close_fd(source)

    def _drop_sources(self) -> None:
        for source in (self._retired, self._current):
            if source is not None:
                self._close_fd(source)
        self._retired = None
        self._current = None

    def _close_fd(self, source: _Source) -> None:
        try:
            os.close(source.fd)
        except OSError as exc:
            self._error("close", exc)

    def _error(self, action: str, exc: OSError) -> None:
        self.stats.errors += 1
        self.last_error = f"{action} {self.path}: {exc.strerror or exc}"

    def _parse(self, lines: list[bytes]) -> list[LogEntry]:
        entries: list[LogEntry] = []
        for raw in lines:
            self.stats.lines += 1
            entry = self.fmt.parse(raw.decode("utf-8", errors="replace").rstrip("\r"))
            # A server field that is not an address is a log that stopped parsing too; `proof` rejects it.
            if entry is None or (self.fmt.destination_known and entry.server is None):
                self.stats.unparsed += 1
            if entry is not None:
                entries.append(entry)
        return entries
