"""The cluster file's sections read into the schema, and the rules across fields; `load_config`.

Each `_load_<section>` reads one section through `Section` (which owns the error wording); the rules that
span sections (two nodes, one home, distinct addresses, the VIP not a node address) and the digest both
agents compare live here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from failover.accesslog import log_format_problem
from failover.agentsocket import default_control_socket
from failover.config.keys import read_regular
from failover.config.schema import (
    HOOK_EVENTS,
    AnnounceConfig,
    AuthConfig,
    ClusterConfig,
    ConfigError,
    ConfirmConfig,
    HealthConfig,
    HeartbeatConfig,
    HooksConfig,
    IPAddress,
    MetricsConfig,
    NodeConfig,
    SwapConfig,
    TakeoverConfig,
    VipConfig,
)
from failover.config.sections import Section, check_name, parse_ip
from failover.config.yamllines import LineMapping, LineSequence, kind, parse_yaml

# sun_path in struct sockaddr_un is 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX: Final = 107
_CONFIRM_MODES: Final = ("traffic", "canary", "none")


def _load_vip(top: Section) -> VipConfig:
    sec = top.section("vip", required=("address", "interface"))
    raw = sec.data["address"]
    if not isinstance(raw, str):
        raise sec.error("address", f"expected an address with prefix like 203.0.113.10/24, got {kind(raw)}")
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


def _load_auth(top: Section) -> AuthConfig:
    sec = top.section("auth", required=("key_file",), optional=("previous_key_file",))
    previous = None if sec.data.get("previous_key_file") is None else sec.filepath("previous_key_file")
    return AuthConfig(key_file=sec.filepath("key_file"), previous_key_file=previous)


def _load_heartbeat(top: Section) -> HeartbeatConfig:
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


def _load_announce(top: Section) -> AnnounceConfig:
    sec = top.section("announce", optional=("schedule_ms",))
    if "schedule_ms" not in sec.data:
        return AnnounceConfig()
    seq = sec.sequence("schedule_ms")
    if not 1 <= len(seq) <= 20:
        raise sec.error("schedule_ms", f"must have 1 to 20 entries, got {len(seq)}")
    for i, value in enumerate(seq):
        if isinstance(value, bool) or not isinstance(value, int):
            raise sec.item_error("schedule_ms", seq, i, f"expected an integer, got {kind(value)}")
        if not 0 <= value <= 600_000:
            raise sec.item_error("schedule_ms", seq, i, f"must be between 0 and 600000, got {value}")
        if i and value <= seq[i - 1]:
            problem = f"must be greater than the entry before ({seq[i - 1]})"
            raise sec.item_error("schedule_ms", seq, i, problem)
    return AnnounceConfig(schedule_ms=tuple(seq))


def _load_log_format(sec: Section) -> str:
    # One judge of log formats, shared with the reader (accesslog), so what loads is what parses.
    value = sec.string("log_format", "combined")
    problem = log_format_problem(value)
    if problem is not None:
        raise sec.error("log_format", problem)
    return value


def _load_confirm(top: Section) -> ConfirmConfig:
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
            ignore.append(parse_ip(value, partial(sec.item_error, "ignore_clients", seq, i)))
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


def _load_takeover(top: Section) -> TakeoverConfig:
    sec = top.section("failover", optional=("automatic", "fence", "fence_timeout_ms", "on_vip_lost"))
    fence: list[str] = []
    if "fence" in sec.data:
        seq = sec.sequence("fence")
        for i, item in enumerate(seq):
            if not isinstance(item, str) or not item:
                raise sec.item_error("fence", seq, i, f"expected a non-empty string, got {kind(item)}")
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


def _load_argv(sec: Section, key: str, seq: LineSequence, index: int, item: object) -> tuple[str, ...]:
    if not isinstance(item, LineSequence) or not item:
        problem = f"expected an argv list such as [/usr/local/bin/x, arg], got {kind(item)}"
        raise sec.item_error(key, seq, index, problem)
    for arg in item:
        if not isinstance(arg, str) or not arg:
            problem = f"every argument must be a non-empty string, got {kind(arg)}"
            raise sec.item_error(key, seq, index, problem)
    if not item[0].startswith("/"):
        raise sec.item_error(key, seq, index, "the program must be an absolute path (no shell, no PATH)")
    return tuple(item)


def _load_hooks(top: Section) -> HooksConfig:
    sec = top.section("hooks", optional=(*HOOK_EVENTS, "timeout_ms"))
    lists: dict[str, tuple[tuple[str, ...], ...]] = {}
    for event in HOOK_EVENTS:
        if event in sec.data:
            seq = sec.sequence(event)
            lists[event] = tuple(_load_argv(sec, event, seq, i, item) for i, item in enumerate(seq))
    return HooksConfig(**lists, timeout_ms=sec.integer("timeout_ms", HooksConfig.timeout_ms, 100, 600_000))


def _load_metrics(top: Section) -> MetricsConfig:
    sec = top.section("metrics", optional=("listen",))
    if sec.data.get("listen") is None:
        return MetricsConfig()
    raw = sec.data["listen"]
    expected = "expected ADDRESS:PORT such as 127.0.0.1:9405 or [::1]:9405"
    if not isinstance(raw, str):
        raise sec.error("listen", f"{expected} (quoted), got {kind(raw)}")
    text = raw
    problem = f"{expected}, got {text!r}"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise sec.error("listen", problem)
    if not 1 <= int(port) <= 65535:
        raise sec.error("listen", f"port must be between 1 and 65535, got {text!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    address = parse_ip(host[1:-1] if bracketed else host, lambda p: sec.error("listen", f"{problem}: {p}"))
    if address.version == 6 and not bracketed:
        raise sec.error("listen", f"write an IPv6 address in brackets, like [{address}]:{port}, got {text!r}")
    if address.version == 4 and bracketed:
        raise sec.error("listen", f"brackets are for IPv6 addresses only, got {text!r}")
    return MetricsConfig(listen=(address, int(port)))


def _load_nodes(top: Section, cluster: str, vip: VipConfig) -> tuple[NodeConfig, NodeConfig]:
    nodes = top.section("nodes")  # names are free, so no key list; checks duplicates only
    if len(nodes.data) != 2:
        raise top.error("nodes", f"expected exactly 2 nodes, got {len(nodes.data)}")
    built: list[NodeConfig] = []
    sections: list[Section] = []
    for name in nodes.data:

        def bad_name(problem: str, name: str = name) -> ConfigError:
            return nodes.error(name, f"node name {problem}", at_key=True)

        check_name(name, bad_name)
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


def _health_url(sec: Section) -> str:
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


def _control_socket(sec: Section, cluster: str) -> Path:
    path = sec.filepath("control_socket", default_control_socket(cluster))
    if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
        raise sec.error("control_socket", f"longer than {_SOCKET_PATH_MAX} bytes, too long for a Unix socket")
    return path


def _digest(data: LineMapping) -> bytes:
    # Parsed content, canonically serialised: comments, layout and key order do not count, values do.
    # Without `auth`: key paths differ between hosts while keys are rotated one host at a time.
    shared = {key: value for key, value in data.items() if key != "auth"}
    canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).digest()


def load_config(path: Path | str) -> ClusterConfig:
    """Read and validate a cluster file. Raises ConfigError, never anything else, for a bad file."""
    return config_from(path, read_config(path))


def read_config(path: Path | str) -> bytes:
    """A cluster file's bytes (a regular file, at most 4 MiB); ConfigError when it cannot be read."""
    shown = os.fspath(path)
    try:
        found = read_regular(Path(path), 4 * 1024 * 1024)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=shown) from None
    except ValueError as e:
        raise ConfigError(f"cannot read: {e}", file=shown) from None
    if found is None:
        raise ConfigError("not a regular file", file=shown)
    return found[0]


def config_from(path: Path | str, raw: bytes) -> ClusterConfig:
    """The cluster file at `path` whose bytes are `raw`, validated. Its answer follows from these two
    alone (nothing else is read or looked up), so the same bytes at the same path load the same."""
    shown = os.fspath(path)
    source = Path(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"not UTF-8 text: {e.reason}", file=shown, line=line) from None

    data = parse_yaml(text, shown)
    top = Section(
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
    swap = top.section("swap", optional=("step_timeout_ms", "drain_ms", "drain_max_ms"))
    health = top.section("health", optional=("timeout_ms", "self_check"))
    step_timeout = swap.integer("step_timeout_ms", SwapConfig.step_timeout_ms, 50, 60_000)
    drain = swap.integer("drain_ms", SwapConfig.drain_ms, 0, 60_000)
    drain_max = swap.integer("drain_max_ms", max(drain, SwapConfig.drain_max_ms), drain, 3_600_000)
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
        swap=SwapConfig(step_timeout_ms=step_timeout, drain_ms=drain, drain_max_ms=drain_max),
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
