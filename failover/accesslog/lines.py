"""One access-log line: its fields (`LogEntry`), its time, and the formats that read it (`LogFormat`).

Addresses are put in one canonical form here (IPv6 compressed, IPv4-mapped IPv6 as plain IPv4), so the
rest of the package and the operator's ignore list compare like with like.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar, Final


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


# A log repeats the same few time fields and client addresses line after line: each is parsed once.
# Both functions are pure (their answer follows from the text alone), so a remembered answer is exact; a
# source reads a few thousand lines before it releases (failover.load), ~17 ms of CPU unremembered.
_PARSED_KEPT: Final = 4096


@functools.lru_cache(maxsize=_PARSED_KEPT)
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


def canonical_client(client: str) -> str:
    # nginx on a dual-stack socket logs `::ffff:192.0.2.1` and may log `2001:DB8::1`; operators write
    # `192.0.2.1` and `2001:db8::1` in the ignore list. Hostnames (Apache HostnameLookups) pass through.
    return canonical_address(client) or client


def canonical_address(text: object) -> str | None:
    """The canonical form of an IP address (see `LogEntry`), or None when `text` is not one."""
    return _canonical_address(str(text))


@functools.lru_cache(maxsize=_PARSED_KEPT)
def _canonical_address(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
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
            client=canonical_client(client),
            time=parse_time(time_text) if time_text else None,
            request=groups.get("request"),
            status=status,
            server=canonical_address(server_text) if server_text else None,
            user_agent=user_agent if user_agent and user_agent != "-" else None,
        )


LogFormat.COMBINED = LogFormat(name="combined", pattern=re.compile(_COMBINED_PATTERN))
LogFormat.COMBINED_SERVER = LogFormat(name="combined_server", pattern=re.compile(_COMBINED_SERVER_PATTERN))
LogFormat.COMMON = LogFormat(name="common", pattern=re.compile(_COMMON_PATTERN))

