"""Cluster configuration: one YAML file in, frozen and validated dataclasses out.

Owns the schema of the cluster file (every key, its type, range and default), the cross-field rules
(two nodes, one home, distinct addresses, VIP not a node address), the config digest both agents compare,
and reading the shared authentication key(s). Every problem becomes a `ConfigError` whose message is one
line, ``<file>:<line>: <field.path>: <problem>``, so an operator can jump straight to it.

Touches only the files it is asked to read: no sockets, no clock, no interface lookups. Ranges are checked
here, when a file is loaded; dataclasses built in code (tests, the lab) are trusted as given.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address, ip_interface
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError

from failover.accesslog import log_format_problem
from failover.agentsocket import default_control_socket

IPAddress = IPv4Address | IPv6Address

KEY_MIN_BYTES: Final = 32
# sun_path in struct sockaddr_un is 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX: Final = 107
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_CONFIRM_MODES: Final = ("traffic", "canary", "none")


class ConfigError(Exception):
    """A configuration problem. ``str(err)`` is always exactly one line."""

    def __init__(
        self, problem: str, *, file: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.field = field
        parts: list[str] = []
        if file is not None:
            parts.append(file if line is None else f"{file}:{line}")
        if field:
            parts.append(field)
        parts.append(problem)
        # File names, keys and YAML messages come from outside; none of them may split the line.
        super().__init__(" ".join(": ".join(parts).splitlines()))


# --- dataclasses --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VipConfig:
    address: IPv4Interface | IPv6Interface
    interface: str

    @property
    def ip(self) -> IPAddress:
        return self.address.ip

    @property
    def family(self) -> int:
        return self.address.version


@dataclass(frozen=True)
class AuthConfig:
    key_file: Path
    # During key rotation the old key is still accepted, so the two agents can be re-keyed one at a time.
    previous_key_file: Path | None = None


@dataclass(frozen=True)
class HeartbeatConfig:
    port: int = 5405
    interval_ms: int = 50
    dead_after_ms: int = 250


@dataclass(frozen=True)
class AnnounceConfig:
    schedule_ms: tuple[int, ...] = (0, 200, 1100, 2300)


@dataclass(frozen=True)
class SwapConfig:
    step_timeout_ms: int = 1000
    # After releasing, the old holder keeps accepting packets for the VIP (ARP-silent) this long, so
    # connections that left clients before the announcement reached them are still served. 0: off.
    drain_ms: int = 1000


@dataclass(frozen=True)
class HealthConfig:
    timeout_ms: int = 1000
    # The holder checks its own health_url every `self_check_every_ms` (0: never); after
    # `self_check_fails` failures in a row, with a healthy peer, it hands the VIP over.
    self_check_every_ms: int = 0
    self_check_fails: int = 3


@dataclass(frozen=True)
class TakeoverConfig:
    """The unplanned takeover when the holder goes silent."""

    automatic: bool = True  # false: report a silent holder, never take over
    on_vip_lost: str = "report"  # the VIP removed behind the holder's back: "report", or "reclaim" it
    fence: tuple[str, ...] = ()  # argv run (no shell) before claiming; non-zero exit: no takeover
    fence_timeout_ms: int = 5000
    # RFC 5227 probes before claiming: any answer means someone still holds the VIP.
    probe_count: int = 3
    probe_interval_ms: int = 20
    probe_wait_ms: int = 60
    # While both are up, time the peer kernel's answer for its own address this often (0: never); a
    # takeover's probe then listens a few times that long, never longer than the window above.
    probe_measure_every_ms: int = 2000


@dataclass(frozen=True)
class ConfirmConfig:
    mode: str = "traffic"
    requests: int = 3
    within_s: float = 10.0
    ignore_clients: tuple[IPAddress, ...] = ()
    log_format: str = "combined"
    # After a release the old holder watches this long for clients still sending to its MAC; the new
    # holder sends each a targeted ARP request, and the outcome names the ones that never moved. 0: off.
    straggler_window_ms: int = 1000


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: IPAddress
    home: bool
    health_url: str
    access_log: Path
    interface: str
    control_socket: Path
    state_dir: Path
    # Each node its own (two lab agents share a filesystem); the default lives in state_dir.
    journal: Path = Path("/var/lib/failover/journal.jsonl")


HOOK_EVENTS: Final = ("before_release", "after_claim", "confirmed", "rolled_back", "takeover")


@dataclass(frozen=True)
class HooksConfig:
    """Operator programs per event: each a list of argv (absolute path, no shell), run in order."""

    before_release: tuple[tuple[str, ...], ...] = ()  # on the holder, before it releases; failing aborts
    after_claim: tuple[tuple[str, ...], ...] = ()  # on the node that just claimed the VIP
    confirmed: tuple[tuple[str, ...], ...] = ()  # on the new holder, once clients proved the move
    rolled_back: tuple[tuple[str, ...], ...] = ()  # on the node that took the VIP back after a failed move
    takeover: tuple[tuple[str, ...], ...] = ()  # on the node that took over from a silent holder
    timeout_ms: int = 10_000  # each program; a timed-out before_release hook aborts the swap

    def for_event(self, event: str) -> tuple[tuple[str, ...], ...]:
        hooks: tuple[tuple[str, ...], ...] = getattr(self, event)
        return hooks


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus text at http://<listen>/metrics from each agent; off when listen is None."""

    listen: tuple[IPAddress, int] | None = None


@dataclass(frozen=True)
class ClusterConfig:
    cluster: str
    vip: VipConfig
    auth: AuthConfig
    heartbeat: HeartbeatConfig
    announce: AnnounceConfig
    swap: SwapConfig
    health: HealthConfig
    confirm: ConfirmConfig
    nodes: tuple[NodeConfig, NodeConfig]
    source: Path
    digest: bytes
    takeover: TakeoverConfig = TakeoverConfig()
    hooks: HooksConfig = HooksConfig()
    metrics: MetricsConfig = MetricsConfig()

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"no node named {name!r} (known: {known})", file=str(self.source), field="nodes")

    def peer_of(self, name: str) -> NodeConfig:
        me = self.node(name)
        return self.nodes[1] if me is self.nodes[0] else self.nodes[0]

    @property
    def home_node(self) -> NodeConfig:
        return next(n for n in self.nodes if n.home)


# --- keys -----------------------------------------------------------------------------------------------


def _read_regular(path: Path, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The content (at most `limit` bytes) and stat of the regular file at `path`; None when it is not
    one. Never blocks: a FIFO is opened non-blocking and refused by its fstat, never read."""
    import errno  # here, not at the top: the imports there are kept minimal for a fast CLI start

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)  # of the file we read, not of whatever the path names a moment later
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))  # as open() says it
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, min(65536, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def load_key(path: Path, *, field: str = "auth.key_file") -> bytes:
    """Read a shared key: a regular file owned by root or by us, no group/other permission bits, at
    least 32 bytes.

    The content is used as raw bytes; a single trailing newline (as editors add) is not part of the key.
    """
    shown = os.fspath(path)
    try:
        found = _read_regular(path, 64 * 1024)
        if found is None:
            raise ConfigError("not a regular file", file=shown, field=field)
        key, st = found
        if st.st_uid not in (0, os.geteuid()):
            # Whoever owns it can replace it with a key of their choosing.
            raise ConfigError(
                f"owned by uid {st.st_uid}, not root or uid {os.geteuid()}; chown root {shown}",
                file=shown, field=field,
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"mode {mode:04o} is group/other-accessible; chmod 600 {shown}", file=shown, field=field
            )
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=shown, field=field) from None
    except ValueError as e:  # e.g. an embedded NUL in the path
        raise ConfigError(f"cannot read: {e}", file=shown, field=field) from None
    if key.endswith(b"\n"):
        key = key[:-1]
    if len(key) < KEY_MIN_BYTES:
        raise ConfigError(
            f"key is {len(key)} bytes, need at least {KEY_MIN_BYTES}", file=shown, field=field
        )
    return key


def keys_for(auth: AuthConfig) -> tuple[bytes, ...]:
    """The keys to accept: the current one first, then the previous one while a rotation is under way."""
    keys = [load_key(auth.key_file)]
    if auth.previous_key_file is not None:
        keys.append(load_key(auth.previous_key_file, field="auth.previous_key_file"))
    return tuple(keys)


# --- YAML with line numbers -------------------------------------------------------------------------


class _Mapping(dict[str, Any]):
    """A YAML mapping that remembers the 1-based line of each key and value, and any repeated keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}
        self.value_lines: dict[str, int] = {}
        # (key, line of the repeat, line of the first occurrence); reported when the path is known.
        self.duplicates: list[tuple[str, int, int]] = []


class _Sequence(list[Any]):
    """A YAML sequence that remembers the 1-based line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _key(node: yaml.Node) -> str:
    # Keys are taken as written: under YAML 1.1 a node called `on` or `no` would otherwise become a bool.
    if not isinstance(node, yaml.ScalarNode):
        raise ConstructorError(None, None, "mapping keys must be plain strings", node.start_mark)
    return str(node.value)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers, so every error can cite a line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:  # PyYAML's own constructors fail loosely, e.g. `!!int abc`, `!!timestamp x`
            raise ConstructorError(None, None, f"cannot read {node.tag} value: {e}", node.start_mark) from e


def _construct_map(loader: _LineLoader, node: yaml.Node) -> Iterator[_Mapping]:
    if not isinstance(node, yaml.MappingNode):
        raise ConstructorError(None, None, "expected a mapping", node.start_mark)
    data = _Mapping(_line(node))
    yield data
    first: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = _key(key_node)
        if key in first:
            data.duplicates.append((key, _line(key_node), first[key]))
        else:
            first[key] = _line(key_node)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = _key(key_node)
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = _line(key_node)
        data.value_lines[key] = _line(value_node)


def _construct_seq(loader: _LineLoader, node: yaml.Node) -> Iterator[_Sequence]:
    if not isinstance(node, yaml.SequenceNode):
        raise ConstructorError(None, None, "expected a sequence", node.start_mark)
    data = _Sequence(_line(node))
    yield data
    for item in node.value:
        data.append(loader.construct_object(item))
        data.item_lines.append(_line(item))


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _bound_aliases(root: yaml.Node, shown: str, limit: int = 10_000) -> None:
    """Refuse a document whose aliases make it larger than any cluster file (a billion laughs) before a
    single value is built; counted once per node, so the count itself costs no more than the text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to a value that contains it", file=shown, line=_line(node))
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > limit:
            problem = f"YAML aliases expand to more than {limit} values"
            raise ConfigError(problem, file=shown, line=_line(root))
        sizes[key] = total
        return total

    size(root)


def _parse(text: str, shown: str) -> Any:
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)  # checks for unprintable characters up front
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("top level must be a mapping, got an empty document", file=shown, line=1)
        _bound_aliases(node, shown)
        data = loader.construct_document(node)
        if not isinstance(data, _Mapping):
            raise ConfigError(f"top level must be a mapping, got {_kind(data)}", file=shown, line=_line(node))
        return data
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = ": ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        raise ConfigError(problem, file=shown, line=mark.line + 1 if mark else 1) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(e.position, 0)) + 1
        raise ConfigError(f"character {chr(e.character)!r}: {e.reason}", file=shown, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=shown, line=1) from None
    except RecursionError:
        raise ConfigError("nested too deeply", file=shown, line=1) from None
    finally:
        if loader is not None:
            loader.dispose()


# --- validation ---------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        # A long string may be a key pasted in the wrong place: its length says enough.
        return f"string {value!r}" if len(value) <= 24 else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Section:
    """One mapping being validated: knows its field path and lines, so it can blame a field precisely."""

    def __init__(
        self,
        file: str,
        path: str,
        data: _Mapping,
        line: int,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> None:
        self.file = file
        self.path = path
        self.data = data
        self.line = line
        if data.duplicates:
            key, at, first = min(data.duplicates, key=lambda d: d[1])
            problem = f"duplicate key (first at line {first})"
            raise ConfigError(problem, file=file, line=at, field=self.field(key))
        if required or optional:
            allowed = set(required) | set(optional)
            unknown = sorted((k for k in data if k not in allowed), key=lambda k: data.key_lines[k])
            if unknown:
                key = unknown[0]
                raise ConfigError("unknown key", file=file, line=data.key_lines[key], field=self.field(key))
        missing = [k for k in required if k not in data]
        if len(missing) == 1:
            raise ConfigError("missing required key", file=file, line=line, field=self.field(missing[0]))
        if missing:
            raise ConfigError(
                f"missing required keys: {', '.join(missing)}", file=file, line=line, field=path or None
            )

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str, *, at_key: bool = False) -> ConfigError:
        # A problem with a whole list or mapping is blamed on its key, not on its first entry.
        at_key = at_key or isinstance(self.data.get(key), _Mapping | _Sequence)
        lines = self.data.key_lines if at_key else self.data.value_lines
        return ConfigError(problem, file=self.file, line=lines.get(key, self.line), field=self.field(key))

    def section(self, key: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> _Section:
        value = self.data.get(key)
        if key not in self.data:
            value = _Mapping(self.line)
        elif not isinstance(value, _Mapping):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        line = self.data.key_lines.get(key, self.line)
        return _Section(self.file, self.field(key), value, line, required, optional)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, key: str, default: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_kind(value)}")
        if not 0 < value <= high:  # also rejects NaN
            raise self.error(key, f"must be greater than 0 and at most {high:g}, got {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_kind(value)}")
        if not value:
            raise self.error(key, "must not be empty")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def name(self, key: str) -> str:
        value = self.string(key)
        _check_name(value, lambda problem: self.error(key, problem))
        return value

    def filepath(self, key: str, default: Path | None = None) -> Path:
        if default is not None and key not in self.data:
            return default
        value = self.string(key)
        if "\0" in value:
            raise self.error(key, "must not contain a NUL character")
        if not value.startswith("/"):
            # Not shown: what goes where a key's path should may be the key itself.
            raise self.error(key, f"must be an absolute path (starting with /), got {_kind(value)}")
        return Path(value)

    def interface(self, key: str, default: str | None = None) -> str:
        value = self.string(key, default)
        # Linux IFNAMSIZ is 16 including the NUL; '/', ':' and whitespace are never valid in a name.
        if len(value.encode()) > 15 or value in (".", "..") or any(c in value for c in "/:\0") or any(
            c.isspace() for c in value
        ):
            raise self.error(key, f"not a valid interface name: {value!r}")
        return value

    def ip(self, key: str) -> IPAddress:
        return _ip(self.data[key], lambda problem: self.error(key, problem))

    def sequence(self, key: str) -> _Sequence:
        value = self.data[key]
        if not isinstance(value, _Sequence):
            raise self.error(key, f"expected a list, got {_kind(value)}")
        return value

    def item_error(self, key: str, seq: _Sequence, index: int, problem: str) -> ConfigError:
        return ConfigError(
            problem, file=self.file, line=seq.item_lines[index], field=f"{self.field(key)}[{index}]"
        )


def _check_name(value: str, error: Callable[[str], ConfigError]) -> None:
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise error(f"must be 1-32 characters of A-Z a-z 0-9 _ . - (and not . or ..), got {value!r}")


def _ip(value: object, error: Callable[[str], ConfigError]) -> IPAddress:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads e.g. 2001:0:0:0:0:0:0:1 as a base-60 integer.
        raise error(f"expected an IP address, got {_kind(value)} (quote the address)")
    if not isinstance(value, str):
        raise error(f"expected an IP address, got {_kind(value)}")
    try:
        return ip_address(value)
    except ValueError:
        raise error(f"not an IP address: {value!r}") from None


def _load_vip(top: _Section) -> VipConfig:
    sec = top.section("vip", required=("address", "interface"))
    raw = sec.data["address"]
    if not isinstance(raw, str):
        raise sec.error("address", f"expected an address with prefix like 203.0.113.10/24, got {_kind(raw)}")
    if "/" not in raw:
        raise sec.error("address", f"must include a prefix length, like 203.0.113.10/24, got {raw!r}")
    try:
        address: IPv4Interface | IPv6Interface = ip_interface(raw)
    except ValueError:
        raise sec.error("address", f"not an IP address with prefix: {raw!r}") from None
    net = address.network
    edges = (net.network_address, net.broadcast_address)
    if net.version == 4 and net.prefixlen <= 30 and address.ip in edges:
        raise sec.error("address", f"{address.ip} is the network or broadcast address of {net}")
    return VipConfig(address=address, interface=sec.interface("interface"))


def _load_auth(top: _Section) -> AuthConfig:
    sec = top.section("auth", required=("key_file",), optional=("previous_key_file",))
    previous = None if sec.data.get("previous_key_file") is None else sec.filepath("previous_key_file")
    return AuthConfig(key_file=sec.filepath("key_file"), previous_key_file=previous)


def _load_heartbeat(top: _Section) -> HeartbeatConfig:
    d = HeartbeatConfig()
    sec = top.section("heartbeat", optional=("port", "interval_ms", "dead_after_ms"))
    port = sec.integer("port", d.port, 1, 65535)
    interval = sec.integer("interval_ms", d.interval_ms, 10, 10_000)
    dead_after = sec.integer("dead_after_ms", d.dead_after_ms, 0, 600_000)
    if dead_after < 2 * interval:
        blame = "dead_after_ms" if "dead_after_ms" in sec.data else "interval_ms"
        raise sec.error(
            blame, f"dead_after_ms ({dead_after}) must be at least 2 x interval_ms ({2 * interval})"
        )
    return HeartbeatConfig(port=port, interval_ms=interval, dead_after_ms=dead_after)


def _load_announce(top: _Section) -> AnnounceConfig:
    sec = top.section("announce", optional=("schedule_ms",))
    if "schedule_ms" not in sec.data:
        return AnnounceConfig()
    seq = sec.sequence("schedule_ms")
    if not 1 <= len(seq) <= 20:
        raise sec.error("schedule_ms", f"must have 1 to 20 entries, got {len(seq)}")
    for i, value in enumerate(seq):
        if isinstance(value, bool) or not isinstance(value, int):
            raise sec.item_error("schedule_ms", seq, i, f"expected an integer, got {_kind(value)}")
        if not 0 <= value <= 600_000:
            raise sec.item_error("schedule_ms", seq, i, f"must be between 0 and 600000, got {value}")
        if i and value <= seq[i - 1]:
            problem = f"must be greater than the entry before ({seq[i - 1]})"
            raise sec.item_error("schedule_ms", seq, i, problem)
    return AnnounceConfig(schedule_ms=tuple(seq))


def _load_log_format(sec: _Section) -> str:
    # One judge of log formats, shared with the reader (accesslog), so what loads is what parses.
    value = sec.string("log_format", "combined")
    problem = log_format_problem(value)
    if problem is not None:
        raise sec.error("log_format", problem)
    return value


def _load_confirm(top: _Section) -> ConfirmConfig:
    d = ConfirmConfig()
    sec = top.section(
        "confirm",
        optional=("mode", "requests", "within_s", "ignore_clients", "log_format", "straggler_window_ms"),
    )
    mode = sec.choice("mode", d.mode, _CONFIRM_MODES)
    requests = sec.integer("requests", d.requests, 1, 10_000)
    within_s = sec.number("within_s", d.within_s, 3600)
    ignore: list[IPAddress] = []
    if "ignore_clients" in sec.data:
        seq = sec.sequence("ignore_clients")
        for i, value in enumerate(seq):
            ignore.append(_ip(value, partial(sec.item_error, "ignore_clients", seq, i)))
    log_format = _load_log_format(sec)
    window = sec.integer("straggler_window_ms", d.straggler_window_ms, 0, 600_000)
    return ConfirmConfig(
        mode=mode,
        requests=requests,
        within_s=within_s,
        ignore_clients=tuple(ignore),
        log_format=log_format,
        straggler_window_ms=window,
    )


def _load_takeover(top: _Section) -> TakeoverConfig:
    sec = top.section("failover", optional=("automatic", "fence", "fence_timeout_ms", "on_vip_lost"))
    fence: list[str] = []
    if "fence" in sec.data:
        seq = sec.sequence("fence")
        for i, item in enumerate(seq):
            if not isinstance(item, str) or not item:
                raise sec.item_error("fence", seq, i, f"expected a non-empty string, got {_kind(item)}")
            fence.append(item)
        if fence and not fence[0].startswith("/"):
            raise sec.item_error("fence", seq, 0, "the program must be an absolute path (no shell, no PATH)")
    probe = top.section("probe", optional=("count", "interval_ms", "wait_ms", "measure_every_ms"))
    return TakeoverConfig(
        automatic=sec.boolean("automatic", TakeoverConfig.automatic),
        on_vip_lost=sec.choice("on_vip_lost", TakeoverConfig.on_vip_lost, ("report", "reclaim")),
        fence=tuple(fence),
        fence_timeout_ms=sec.integer("fence_timeout_ms", TakeoverConfig.fence_timeout_ms, 100, 600_000),
        probe_count=probe.integer("count", TakeoverConfig.probe_count, 1, 20),
        probe_interval_ms=probe.integer("interval_ms", TakeoverConfig.probe_interval_ms, 1, 5000),
        probe_wait_ms=probe.integer("wait_ms", TakeoverConfig.probe_wait_ms, 1, 10_000),
        probe_measure_every_ms=probe.integer(
            "measure_every_ms", TakeoverConfig.probe_measure_every_ms, 0, 3_600_000
        ),
    )


def _load_argv(sec: _Section, key: str, seq: _Sequence, index: int, item: object) -> tuple[str, ...]:
    if not isinstance(item, _Sequence) or not item:
        problem = f"expected an argv list such as [/usr/local/bin/x, arg], got {_kind(item)}"
        raise sec.item_error(key, seq, index, problem)
    for arg in item:
        if not isinstance(arg, str) or not arg:
            problem = f"every argument must be a non-empty string, got {_kind(arg)}"
            raise sec.item_error(key, seq, index, problem)
    if not item[0].startswith("/"):
        raise sec.item_error(key, seq, index, "the program must be an absolute path (no shell, no PATH)")
    return tuple(item)


def _load_hooks(top: _Section) -> HooksConfig:
    sec = top.section("hooks", optional=(*HOOK_EVENTS, "timeout_ms"))
    lists: dict[str, tuple[tuple[str, ...], ...]] = {}
    for event in HOOK_EVENTS:
        if event in sec.data:
            seq = sec.sequence(event)
            lists[event] = tuple(_load_argv(sec, event, seq, i, item) for i, item in enumerate(seq))
    return HooksConfig(**lists, timeout_ms=sec.integer("timeout_ms", HooksConfig.timeout_ms, 100, 600_000))


def _load_metrics(top: _Section) -> MetricsConfig:
    sec = top.section("metrics", optional=("listen",))
    if sec.data.get("listen") is None:
        return MetricsConfig()
    raw = sec.data["listen"]
    expected = "expected ADDRESS:PORT such as 127.0.0.1:9405 or [::1]:9405"
    if not isinstance(raw, str):
        raise sec.error("listen", f"{expected} (quoted), got {_kind(raw)}")
    text = raw
    problem = f"{expected}, got {text!r}"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise sec.error("listen", problem)
    if not 1 <= int(port) <= 65535:
        raise sec.error("listen", f"port must be between 1 and 65535, got {text!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    address = _ip(host[1:-1] if bracketed else host, lambda p: sec.error("listen", f"{problem}: {p}"))
    if address.version == 6 and not bracketed:
        raise sec.error("listen", f"write an IPv6 address in brackets, like [{address}]:{port}, got {text!r}")
    if address.version == 4 and bracketed:
        raise sec.error("listen", f"brackets are for IPv6 addresses only, got {text!r}")
    return MetricsConfig(listen=(address, int(port)))


def _load_nodes(top: _Section, cluster: str, vip: VipConfig) -> tuple[NodeConfig, NodeConfig]:
    nodes = top.section("nodes")  # names are free, so no key list; checks duplicates only
    if len(nodes.data) != 2:
        raise top.error("nodes", f"expected exactly 2 nodes, got {len(nodes.data)}")
    built: list[NodeConfig] = []
    sections: list[_Section] = []
    for name in nodes.data:

        def bad_name(problem: str, name: str = name) -> ConfigError:
            return nodes.error(name, f"node name {problem}", at_key=True)

        _check_name(name, bad_name)
        sec = nodes.section(
            name,
            required=("address", "health_url", "access_log"),
            optional=("home", "interface", "control_socket", "state_dir", "journal"),
        )
        sections.append(sec)
        state_dir = sec.filepath("state_dir", Path(f"/var/lib/failover/{cluster}"))
        built.append(
            NodeConfig(
                name=name,
                address=sec.ip("address"),
                home=sec.boolean("home", False),
                health_url=_health_url(sec),
                access_log=sec.filepath("access_log"),
                interface=sec.interface("interface", vip.interface),
                control_socket=_control_socket(sec, cluster),
                state_dir=state_dir,
                journal=sec.filepath("journal", state_dir / "journal.jsonl"),
            )
        )
    first, second = built
    if first.address == second.address:
        raise sections[1].error("address", f"same address as nodes.{first.name}")
    homes = [n for n in built if n.home]
    if not homes:
        raise ConfigError(
            "exactly one node must have home: true, none has", file=top.file, line=nodes.line, field="nodes"
        )
    if len(homes) == 2:
        problem = f"nodes.{first.name} is already home; exactly one may be"
        raise sections[1].error("home", problem)
    for node in built:
        if node.address == vip.ip:
            raise top.section("vip").error("address", f"{vip.ip} is also the address of nodes.{node.name}")
    return first, second


def _health_url(sec: _Section) -> str:
    url = sec.string("health_url")
    problem = "must be an http:// or https:// URL with a host"
    if any(c.isspace() or not c.isprintable() for c in url):
        raise sec.error("health_url", f"{problem}, without spaces or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as e:
        raise sec.error("health_url", f"{problem}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise sec.error("health_url", f"{problem}, got {url!r}")
    return url


def _control_socket(sec: _Section, cluster: str) -> Path:
    path = sec.filepath("control_socket", default_control_socket(cluster))
    if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
        raise sec.error("control_socket", f"longer than {_SOCKET_PATH_MAX} bytes, too long for a Unix socket")
    return path


def _digest(data: _Mapping) -> bytes:
    # Parsed content, canonically serialised: comments, layout and key order do not count, values do.
    # Without `auth`: key paths differ between hosts while keys are rotated one host at a time.
    shared = {key: value for key, value in data.items() if key != "auth"}
    canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).digest()


def load_config(path: Path | str) -> ClusterConfig:
    """Read and validate a cluster file. Raises ConfigError, never anything else, for a bad file."""
    shown = os.fspath(path)
    source = Path(path)
    try:
        found = _read_regular(source, 4 * 1024 * 1024)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=shown) from None
    except ValueError as e:
        raise ConfigError(f"cannot read: {e}", file=shown) from None
    if found is None:
        raise ConfigError("not a regular file", file=shown)
    raw = found[0]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"not UTF-8 text: {e.reason}", file=shown, line=line) from None

    data = _parse(text, shown)
    top = _Section(
        shown,
        "",
        data,
        data.line,
        required=("cluster", "vip", "auth", "nodes"),
        optional=(
            "heartbeat", "announce", "swap", "health", "confirm", "failover", "probe", "hooks", "metrics"
        ),
    )
    cluster = top.name("cluster")
    vip = _load_vip(top)
    auth = _load_auth(top)
    heartbeat = _load_heartbeat(top)
    announce = _load_announce(top)
    swap = top.section("swap", optional=("step_timeout_ms", "drain_ms"))
    health = top.section("health", optional=("timeout_ms", "self_check"))
    step_timeout = swap.integer("step_timeout_ms", SwapConfig.step_timeout_ms, 50, 60_000)
    drain = swap.integer("drain_ms", SwapConfig.drain_ms, 0, 60_000)
    health_timeout = health.integer("timeout_ms", HealthConfig.timeout_ms, 50, 60_000)
    self_check = health.section("self_check", optional=("every_ms", "fails"))
    self_check_every = self_check.integer("every_ms", HealthConfig.self_check_every_ms, 0, 3_600_000)
    self_check_fails = self_check.integer("fails", HealthConfig.self_check_fails, 1, 1000)
    takeover = _load_takeover(top)
    confirm = _load_confirm(top)
    nodes = _load_nodes(top, cluster, vip)
    hooks = _load_hooks(top)
    metrics = _load_metrics(top)
    return ClusterConfig(
        cluster=cluster,
        vip=vip,
        auth=auth,
        heartbeat=heartbeat,
        announce=announce,
        swap=SwapConfig(step_timeout_ms=step_timeout, drain_ms=drain),
        health=HealthConfig(
            timeout_ms=health_timeout,
            self_check_every_ms=self_check_every,
            self_check_fails=self_check_fails,
        ),
        takeover=takeover,
        confirm=confirm,
        nodes=nodes,
        source=source,
        digest=_digest(data),
        hooks=hooks,
        metrics=metrics,
    )
