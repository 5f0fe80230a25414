"""Tests for failover.config: loading, defaults, digest, errors that cite file/line/field, keys."""

from __future__ import annotations

import copy
import os
import re
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.config import (
    AnnounceConfig,
    AuthConfig,
    ClusterConfig,
    ConfigError,
    ConfirmConfig,
    HealthConfig,
    HeartbeatConfig,
    SwapConfig,
    TakeoverConfig,
    keys_for,
    load_config,
    load_key,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "cluster.example.yaml"

# Block style, one key per line, so every error has an unambiguous line.
BASE = """\
cluster: web
vip:
  address: 203.0.113.10/24
  interface: eth0
auth:
  key_file: /etc/failover/web.key
heartbeat:
  port: 5405
  interval_ms: 50
  dead_after_ms: 250
announce:
  schedule_ms: [0, 200, 1100, 2300]
swap:
  step_timeout_ms: 1000
  drain_ms: 1000
  drain_max_ms: 60000
health:
  timeout_ms: 1000
  self_check:
    every_ms: 500
    fails: 3
failover:
  automatic: true
  fence_timeout_ms: 5000
  on_vip_lost: report
probe:
  count: 3
  interval_ms: 20
  wait_ms: 60
confirm:
  mode: traffic
  requests: 3
  within_s: 10
  ignore_clients: [127.0.0.1, 203.0.113.11, 203.0.113.12]
  log_format: combined
  straggler_window_ms: 1000
hooks:
  drain:
    - [/usr/sbin/nginx, -s, reload]
nodes:
  live:
    address: 203.0.113.11
    home: true
    health_url: http://203.0.113.11/
    access_log: /var/log/nginx/access.log
  backup:
    address: 203.0.113.12
    health_url: http://203.0.113.12/
    access_log: /var/log/nginx/access.log
"""

MINIMAL = """\
cluster: db
vip: {address: 203.0.113.20/24, interface: bond0}
auth: {key_file: /etc/failover/db.key}
nodes:
  a: {address: 203.0.113.21, home: true, health_url: https://a.example/health, access_log: /var/log/a.log}
  b: {address: 203.0.113.22, health_url: http://b.example:8080/, access_log: /var/log/b.log}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def marked_line(text: str) -> int:
    """1-based line of the line carrying the `#<` marker."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "#<" in line]
    assert len(lines) == 1
    return lines[0]


def error_of(path: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "\n" not in message
    return message


# --- loading --------------------------------------------------------------------------------------------


def test_example_loads_with_exact_values() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.cluster == "web"
    assert cfg.vip.address == IPv4Interface("203.0.113.10/24")
    assert cfg.vip.ip == IPv4Address("203.0.113.10")
    assert cfg.vip.family == 4
    assert cfg.vip.interface == "eth0"
    assert cfg.auth == AuthConfig(key_file=Path("/etc/failover/web.key"), previous_key_file=None)
    assert cfg.heartbeat == HeartbeatConfig(port=5405, interval_ms=50, dead_after_ms=250)
    assert cfg.announce == AnnounceConfig(schedule_ms=(0, 200, 1100, 2300))
    assert cfg.swap == SwapConfig(step_timeout_ms=1000, drain_ms=1000)
    assert cfg.health == HealthConfig(timeout_ms=1000, self_check_every_ms=500, self_check_fails=3)
    assert cfg.takeover == TakeoverConfig(automatic=True, fence=(), fence_timeout_ms=5000)
    assert cfg.confirm == ConfirmConfig(
        mode="traffic",
        requests=3,
        within_s=10.0,
        ignore_clients=(IPv4Address("127.0.0.1"), IPv4Address("203.0.113.11"), IPv4Address("203.0.113.12")),
        log_format="combined",
    )
    assert isinstance(cfg.confirm.within_s, float)
    live, backup = cfg.nodes
    assert (live.name, backup.name) == ("live", "backup")
    assert live.address == IPv4Address("203.0.113.11") and live.home is True
    assert backup.address == IPv4Address("203.0.113.12") and backup.home is False
    assert live.health_url == "http://203.0.113.11/"
    assert backup.health_url == "http://203.0.113.12/"
    for node in cfg.nodes:
        assert node.access_log == Path("/var/log/nginx/access.log")
        assert node.interface == "eth0"
        assert node.control_socket == Path("/run/failover/web.sock")
        assert node.state_dir == Path("/var/lib/failover/web")
    assert cfg.source == EXAMPLE
    assert len(cfg.digest) == 32


def test_example_and_block_style_base_are_the_same_config() -> None:
    # BASE is the example without comments, in block style: same content, so same digest.
    assert yaml.safe_load(EXAMPLE.read_text()) == yaml.safe_load(BASE)


def test_node_lookup_peer_and_home(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.node("backup") is cfg.nodes[1]
    assert cfg.peer_of("live") is cfg.nodes[1]
    assert cfg.peer_of("backup") is cfg.nodes[0]
    assert cfg.home_node is cfg.nodes[0]
    with pytest.raises(ConfigError, match="'ghost'") as info:
        cfg.node("ghost")
    assert "live, backup" in str(info.value)
    with pytest.raises(ConfigError, match="'ghost'"):
        cfg.peer_of("ghost")


def test_ipv6_vip(tmp_path: Path) -> None:
    text = edit(BASE, "address: 203.0.113.10/24", 'address: "2001:db8::10/64"')
    text = edit(text, "address: 203.0.113.11", "address: 2001:db8::11")
    text = edit(text, "address: 203.0.113.12", "address: '2001:db8::12'")
    text = edit(text, "ignore_clients: [127.0.0.1, 203.0.113.11, 203.0.113.12]", "ignore_clients: ['::1']")
    cfg = load_config(write(tmp_path, text))
    assert cfg.vip.address == IPv6Interface("2001:db8::10/64")
    assert cfg.vip.ip == IPv6Address("2001:db8::10")
    assert cfg.vip.family == 6
    assert cfg.vip.address.network.prefixlen == 64
    assert [n.address for n in cfg.nodes] == [IPv6Address("2001:db8::11"), IPv6Address("2001:db8::12")]
    assert cfg.confirm.ignore_clients == (IPv6Address("::1"),)


def test_defaults_applied(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.heartbeat == HeartbeatConfig(port=5405, interval_ms=50, dead_after_ms=250)
    assert cfg.announce.schedule_ms == (0, 200, 1100, 2300)
    assert cfg.swap.step_timeout_ms == 1000
    assert cfg.health.timeout_ms == 1000
    assert cfg.confirm == ConfirmConfig(
        mode="traffic", requests=3, within_s=10.0, ignore_clients=(), log_format="combined"
    )
    assert cfg.auth.previous_key_file is None
    a, b = cfg.nodes
    assert a.home and not b.home
    for node in cfg.nodes:
        assert node.interface == "bond0"
        assert node.control_socket == Path("/run/failover/db.sock")
        assert node.state_dir == Path("/var/lib/failover/db")


def test_per_node_overrides_and_optional_keys(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "access_log: /var/log/b.log}",
        "access_log: /var/log/b.log, interface: veth-b,\n      control_socket: /tmp/lab/b.sock,"
        " state_dir: /tmp/lab/b}",
    )
    text = edit(
        text,
        "auth: {key_file: /etc/failover/db.key}",
        "auth: {key_file: /etc/failover/db.key, previous_key_file: /etc/failover/db.old}",
    )
    text += (
        "confirm: {mode: canary, requests: 1, within_s: 0.5, "
        "log_format: '^(?P<client>\\S+) \\[(?P<time>[^]]+)\\]'}\n"
        "heartbeat: {interval_ms: 100, dead_after_ms: 200, port: 6000}\n"
        "announce: {schedule_ms: [5]}\n"
    )
    cfg = load_config(write(tmp_path, text))
    a, b = cfg.nodes
    assert (a.interface, a.control_socket, a.state_dir) == (
        "bond0",
        Path("/run/failover/db.sock"),
        Path("/var/lib/failover/db"),
    )
    assert (b.interface, b.control_socket, b.state_dir) == (
        "veth-b",
        Path("/tmp/lab/b.sock"),
        Path("/tmp/lab/b"),
    )
    assert cfg.auth.previous_key_file == Path("/etc/failover/db.old")
    assert cfg.confirm.mode == "canary" and cfg.confirm.within_s == 0.5 and cfg.confirm.requests == 1
    assert re.compile(cfg.confirm.log_format).groupindex.keys() == {"client", "time"}
    assert cfg.heartbeat == HeartbeatConfig(port=6000, interval_ms=100, dead_after_ms=200)
    assert cfg.announce.schedule_ms == (5,)


def test_null_previous_key_file_means_none(tmp_path: Path) -> None:
    text = edit(
        BASE,
        "  key_file: /etc/failover/web.key\n",
        "  key_file: /etc/failover/web.key\n  previous_key_file: null\n",
    )
    assert load_config(write(tmp_path, text)).auth.previous_key_file is None


def test_yaml_1_1_words_are_fine_as_node_names(tmp_path: Path) -> None:
    text = edit(edit(BASE, "  live:\n", "  on:\n"), "  backup:\n", "  no:\n")
    cfg = load_config(write(tmp_path, text))
    assert [n.name for n in cfg.nodes] == ["on", "no"]


def test_merge_keys_are_understood(tmp_path: Path) -> None:
    text = edit(
        BASE,
        "  live:\n    address: 203.0.113.11\n",
        "  live:\n    <<: {access_log: /x, home: false}\n    address: 203.0.113.11\n",
    )
    assert load_config(write(tmp_path, text)).nodes[0].home is True


# --- digest ---------------------------------------------------------------------------------------------


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


def test_digest_ignores_comments_layout_and_key_order(tmp_path: Path) -> None:
    reference = load_config(EXAMPLE).digest
    no_comments = re.sub(r"\s*#.*", "", EXAMPLE.read_text())
    reordered = yaml.safe_dump(_reverse_keys(yaml.safe_load(BASE)), sort_keys=False, default_flow_style=True)
    spaced = BASE.replace(": ", ":    ").replace("\n", "\n\n")
    for i, text in enumerate([BASE, no_comments, reordered, spaced]):
        assert load_config(write(tmp_path, text, f"c{i}.yaml")).digest == reference, text


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("cluster: web", "cluster: web2"),
        ("address: 203.0.113.10/24", "address: 203.0.113.10/25"),
        ("interface: eth0", "interface: eth1"),
        ("port: 5405", "port: 5406"),
        ("dead_after_ms: 250", "dead_after_ms: 251"),
        ("1100, 2300]", "1100, 2301]"),
        ("step_timeout_ms: 1000", "step_timeout_ms: 999"),
        ("timeout_ms: 1000\n  self_check", "timeout_ms: 1001\n  self_check"),
        ("fails: 3\nfailover", "fails: 4\nfailover"),
        ("automatic: true", "automatic: false"),
        ("  count: 3", "  count: 4"),
        ("mode: traffic", "mode: none"),
        ("within_s: 10", "within_s: 11"),
        (", 203.0.113.12]", "]"),
        ("address: 203.0.113.12", "address: 203.0.113.13"),
        ("http://203.0.113.12/", "http://203.0.113.12/health"),
        ("    home: true\n", ""),  # the home moves to backup, below
    ],
)
def test_digest_changes_with_any_value(tmp_path: Path, old: str, new: str) -> None:
    text = edit(BASE, old, new)
    if "home" not in text:
        text = edit(text, "  backup:\n", "  backup:\n    home: true\n")
    assert load_config(write(tmp_path, text)).digest != load_config(write(tmp_path, BASE, "ref.yaml")).digest


# --- errors: one line, right file, right line, right field ----------------------------------------------

# (old text, new text carrying the `#<` marker on the line the error must cite, field, problem fragment)
ERRORS = [
    # unknown keys
    ("    address: 203.0.113.11\n", "    adress: 203.0.113.11  #<\n", "nodes.live.adress", "unknown key"),
    ("cluster: web\n", "cluster: web\nclutser: x  #<\n", "clutser", "unknown key"),
    ("  port: 5405\n", "  port: 5405\n  prot: 1  #<\n", "heartbeat.prot", "unknown key"),
    # missing required keys cite the parent
    ("vip:\n  address: 203.0.113.10/24\n", "vip:  #<\n", "vip.address", "missing required key"),
    (
        "  live:\n    address: 203.0.113.11\n    home: true\n    health_url: http://203.0.113.11/\n"
        "    access_log: /var/log/nginx/access.log\n",
        "  live:  #<\n    address: 203.0.113.11\n    home: true\n    health_url: http://203.0.113.11/\n",
        "nodes.live.access_log",
        "missing required key",
    ),
    # wrong types
    ("  port: 5405\n", "  port: '5405'  #<\n", "heartbeat.port", "expected an integer, got string '5405'"),
    ("  port: 5405\n", "  port: true  #<\n", "heartbeat.port", "expected an integer, got boolean True"),
    ("  requests: 3\n", "  requests: 2.5  #<\n", "confirm.requests", "expected an integer"),
    ("  within_s: 10\n", "  within_s: ten  #<\n", "confirm.within_s", "expected a number"),
    ("  within_s: 10\n", "  within_s: false  #<\n", "confirm.within_s", "expected a number"),
    ("    home: true\n", "    home: 'yes'  #<\n", "nodes.live.home", "expected true or false"),
    ("  interface: eth0\n", "  interface: [eth0]  #<\n", "vip.interface", "expected a string"),
    (
        "swap:\n  step_timeout_ms: 1000\n  drain_ms: 1000\n  drain_max_ms: 60000\n",
        "swap: 1000  #<\n",
        "swap",
        "expected a mapping",
    ),
    (
        "  schedule_ms: [0, 200, 1100, 2300]\n",
        "  schedule_ms: 0  #<\n",
        "announce.schedule_ms",
        "expected a list",
    ),
    ("cluster: web\n", "cluster: 42  #<\n", "cluster", "expected a string"),
    # duplicate keys: line of the second occurrence
    ("  interface: eth0\n", "  interface: eth0\n  interface: eth1  #<\n", "vip.interface", "duplicate key"),
    ("nodes:\n", "cluster: db  #<\nnodes:\n", "cluster", "duplicate key (first at line 1)"),
    # addresses
    ("    address: 203.0.113.12\n", "    address: 203.0.113.300  #<\n", "nodes.backup.address", "not an IP"),
    (
        "    address: 203.0.113.12\n",
        "    address: 2001:0:0:0:0:0:0:1  #<\n",
        "nodes.backup.address",
        "quote the address",
    ),
    ("  address: 203.0.113.10/24\n", "  address: 203.0.113.10  #<\n", "vip.address", "prefix length"),
    ("  address: 203.0.113.10/24\n", "  address: 203.0.113.10/33  #<\n", "vip.address", "not an IP address"),
    (
        "  address: 203.0.113.10/24\n",
        "  address: 203.0.113.0/24  #<\n",
        "vip.address",
        "network or broadcast",
    ),
    (
        "  address: 203.0.113.10/24\n",
        "  address: 203.0.113.12/24  #<\n",
        "vip.address",
        "also the address of nodes.backup",
    ),
    (
        "    address: 203.0.113.12\n",
        "    address: 203.0.113.11  #<\n",
        "nodes.backup.address",
        "same address as nodes.live",
    ),
    (
        "203.0.113.11, 203.0.113.12]\n",
        "banana, 203.0.113.12]  #<\n",
        "confirm.ignore_clients[1]",
        "not an IP address: 'banana'",
    ),
    # ranges
    ("  port: 5405\n", "  port: 0  #<\n", "heartbeat.port", "between 1 and 65535"),
    ("  port: 5405\n", "  port: 65536  #<\n", "heartbeat.port", "between 1 and 65535"),
    ("  interval_ms: 50\n", "  interval_ms: 9  #<\n", "heartbeat.interval_ms", "between 10 and 10000"),
    ("  dead_after_ms: 250\n", "  dead_after_ms: 99  #<\n", "heartbeat.dead_after_ms", "at least 2 x"),
    ("  dead_after_ms: 250\n", "  dead_after_ms: 600001  #<\n", "heartbeat.dead_after_ms", "600000"),
    (
        "  step_timeout_ms: 1000\n",
        "  step_timeout_ms: 49  #<\n",
        "swap.step_timeout_ms",
        "between 50 and 60000",
    ),
    ("  timeout_ms: 1000\n", "  timeout_ms: 60001  #<\n", "health.timeout_ms", "between 50 and 60000"),
    ("  requests: 3\n", "  requests: 0  #<\n", "confirm.requests", "between 1 and 10000"),
    ("  within_s: 10\n", "  within_s: 0  #<\n", "confirm.within_s", "greater than 0"),
    ("  within_s: 10\n", "  within_s: 3600.5  #<\n", "confirm.within_s", "at most 3600"),
    ("  within_s: 10\n", "  within_s: .nan  #<\n", "confirm.within_s", "greater than 0"),
    ("  mode: traffic\n", "  mode: sometimes  #<\n", "confirm.mode", "one of traffic, canary, none"),
    (
        "  log_format: combined\n",
        "  log_format: '(?P<client>'  #<\n",
        "confirm.log_format",
        "valid regex",
    ),
    (
        "  log_format: combined\n",
        "  log_format: '(?P<client>\\S+)'  #<\n",
        "confirm.log_format",
        "(?P<time>...)",
    ),
    (
        "  schedule_ms: [0, 200, 1100, 2300]\n",
        "  schedule_ms:\n    - 0\n    - 300\n    - 200  #<\n",
        "announce.schedule_ms[2]",
        "greater than the entry before (300)",
    ),
    (
        "  schedule_ms: [0, 200, 1100, 2300]\n",
        "  schedule_ms:\n    - -1  #<\n",
        "announce.schedule_ms[0]",
        "between 0 and 600000",
    ),
    (
        "  schedule_ms: [0, 200, 1100, 2300]\n",
        "  schedule_ms:\n    - 0\n    - '5'  #<\n",
        "announce.schedule_ms[1]",
        "expected an integer",
    ),
    ("  schedule_ms: [0, 200, 1100, 2300]\n", "  schedule_ms: []  #<\n", "announce.schedule_ms", "1 to 20"),
    (
        "  schedule_ms: [0, 200, 1100, 2300]\n",
        f"  schedule_ms: {list(range(21))}  #<\n",
        "announce.schedule_ms",
        "1 to 20 entries, got 21",
    ),
    # names, URLs, paths, interfaces
    ("cluster: web\n", "cluster: web cluster  #<\n", "cluster", "1-32 characters"),
    ("cluster: web\n", f"cluster: {'w' * 33}  #<\n", "cluster", "1-32 characters"),
    ("cluster: web\n", "cluster: ..  #<\n", "cluster", "1-32 characters"),
    ("  backup:\n", "  back up:  #<\n", "nodes.back up", "node name must be 1-32"),
    (
        "    health_url: http://203.0.113.12/\n",
        "    health_url: ftp://203.0.113.12/  #<\n",
        "nodes.backup.health_url",
        "http:// or https://",
    ),
    (
        "    health_url: http://203.0.113.12/\n",
        "    health_url: http:///x  #<\n",
        "nodes.backup.health_url",
        "with a host",
    ),
    (
        "    health_url: http://203.0.113.12/\n",
        "    health_url: 'http://[::1/'  #<\n",
        "nodes.backup.health_url",
        "http:// or https://",
    ),
    (
        "    health_url: http://203.0.113.12/\n",
        "    health_url: http://h:99999/  #<\n",
        "nodes.backup.health_url",
        "http:// or https://",
    ),
    ("  key_file: /etc/failover/web.key\n", "  key_file: web.key  #<\n", "auth.key_file", "absolute path"),
    ("  key_file: /etc/failover/web.key\n", "  key_file: ''  #<\n", "auth.key_file", "must not be empty"),
    (
        "    access_log: /var/log/nginx/access.log\n  backup:\n",
        f"    access_log: /var/log/nginx/access.log\n    control_socket: /{'s' * 120}  #<\n  backup:\n",
        "nodes.live.control_socket",
        "too long for a Unix socket",
    ),
    ("  interface: eth0\n", "  interface: eth0/1  #<\n", "vip.interface", "not a valid interface name"),
    (
        "  interface: eth0\n",
        "  interface: averyveryverylongname  #<\n",
        "vip.interface",
        "not a valid interface",
    ),
    # node set
    (
        "nodes:\n  live:\n    address: 203.0.113.11\n    home: true\n",
        "nodes:  #<\n  live:\n    address: 203.0.113.11\n",
        "nodes",
        "exactly one node must have home: true, none has",
    ),
    (
        "    address: 203.0.113.12\n",
        "    address: 203.0.113.12\n    home: true  #<\n",
        "nodes.backup.home",
        "exactly one may be",
    ),
    (
        "nodes:\n",
        "nodes:  #<\n  spare: {address: 203.0.113.13, health_url: http://x/, access_log: /l}\n",
        "nodes",
        "exactly 2 nodes, got 3",
    ),
]


@pytest.mark.parametrize("case", ERRORS, ids=[f"{i}-{c[2]}" for i, c in enumerate(ERRORS)])
def test_error_cites_file_line_and_field(tmp_path: Path, case: tuple[str, str, str, str]) -> None:
    old, new, field, problem = case
    text = edit(BASE, old, new)
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{marked_line(text)}: {field}: "), message
    assert problem in message, message


def test_several_missing_keys_are_all_named(tmp_path: Path) -> None:
    text = edit(
        BASE,
        "  live:\n    address: 203.0.113.11\n    home: true\n    health_url: http://203.0.113.11/\n",
        "  live:  #<\n    home: true\n",
    )
    path = write(tmp_path, text)
    expected = f"{path}:{marked_line(text)}: nodes.live: missing required keys: address, health_url"
    assert error_of(path) == expected


def test_missing_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "# just a comment\ncluster: web\n")
    assert error_of(path) == f"{path}:2: missing required keys: vip, auth, nodes"


def test_error_shows_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, edit(BASE, "  port: 5405\n", "  port: -1\n"))
    monkeypatch.chdir(tmp_path)
    assert error_of("./cluster.yaml").startswith("./cluster.yaml:8: heartbeat.port: ")
    assert error_of(Path("cluster.yaml")).startswith("cluster.yaml:8: heartbeat.port: ")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("cluster: web\nvip: {address: 203.0.113.10/24\nauth: {}\n", 3, "expected ',' or '}'"),
        ("cluster: web\nheartbeat:\n  port: 1\n interval_ms: 2\n", 4, "expected <block end>"),
        ("cluster: web\nheartbeat:\n\tport: 1\n", 3, "found character '\\t'"),
        ("cluster: web\nswap: a: b\n", 2, "mapping values are not allowed here"),
        ("cluster: web\n---\ncluster: db\n", 2, "expected a single document"),
        ("cluster: web\nswap: !!python/object:os.system x\n", 2, "could not determine a constructor"),
        ("cluster: web\nswap: !!int abc\n", 2, "cannot read tag:yaml.org,2002:int value"),
        ("cluster: web\nswap: \x07\n", 2, "special characters are not allowed"),
        ("cluster: web\n\nswap: !!timestamp x\n", 3, "cannot read tag:yaml.org,2002:timestamp value"),
        ("cluster: web\nswap: {[a]: 1}\n", 2, "mapping keys must be plain strings"),
        ("[" * 5000 + "]" * 5000 + "\n", 1, "nested too deeply"),
    ],
)
def test_bad_yaml_is_one_line_with_line_number(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message, message


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"cluster: web\n\nvip: \xff\n")
    assert error_of(path).startswith(f"{path}:3: not UTF-8 text")


@pytest.mark.parametrize(
    ("text", "line", "got"),
    [
        ("", 1, "an empty document"),
        ("# nothing\n\n- a\n- b\n", 3, "a list"),
        ("\n\nhello\n", 3, "string 'hello'"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, line: int, got: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{line}: top level must be a mapping, got {got}"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error_of(missing) == f"{missing}: cannot read: No such file or directory"
    assert error_of(tmp_path) == f"{tmp_path}: cannot read: Is a directory"


def test_newlines_in_keys_do_not_break_the_one_line_rule(tmp_path: Path) -> None:
    path = write(tmp_path, edit(BASE, "cluster: web\n", 'cluster: web\n"bad\\nkey\\u2028x": 1\n'))
    message = error_of(path)
    assert message.startswith(f"{path}:2: bad key") and message.endswith("unknown key")


# --- property: mutated files give a config or a one-line ConfigError, nothing else --------------------

EXAMPLE_DATA = yaml.safe_load(EXAMPLE.read_text())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


PATHS = _paths(EXAMPLE_DATA)


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


MAPPINGS = [()] + [p for p in PATHS if isinstance(_get(EXAMPLE_DATA, p), dict)]

wrong_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["203.0.113.11", "2001:db8::1/64", "http://x/", "/abs/path", "eth0", "traffic", "1e9"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _assert_config_or_one_line_error(path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        message = str(e)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{path}:"), message
    else:
        assert isinstance(cfg, ClusterConfig)
        assert len(cfg.digest) == 32


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    op=st.sampled_from(["delete", "replace", "add"]),
    data=st.data(),
)
def test_mutated_example_never_escapes_configerror(fuzz_dir: Path, op: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(EXAMPLE_DATA)
    if op == "add":
        where = _get(doc, data.draw(st.sampled_from(MAPPINGS)))
        where[data.draw(st.text(min_size=1, max_size=10))] = data.draw(wrong_values)
    else:
        target = data.draw(st.sampled_from(PATHS))
        parent = _get(doc, target[:-1])
        if op == "delete":
            del parent[target[-1]]
        else:
            parent[target[-1]] = data.draw(wrong_values)
    path = fuzz_dir / "mutated.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=data.draw(st.booleans())))
    _assert_config_or_one_line_error(path)


YAML_NOISE = ":{}[]-#'\"&*!|>%@` \t\n,?0aZ\x00\x85"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_text_mutations_never_escape_configerror(fuzz_dir: Path, data: st.DataObject) -> None:
    text = EXAMPLE.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        insert = data.draw(st.text(alphabet=st.sampled_from(list(YAML_NOISE)), max_size=3))
        text = text[:at] + insert + text[at + cut :]
    path = fuzz_dir / "text.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _assert_config_or_one_line_error(path)


def test_mutation_removing_a_key_is_reported(tmp_path: Path) -> None:
    # Sanity check that the property above is not vacuous: the mutations do produce errors.
    doc = copy.deepcopy(EXAMPLE_DATA)
    del doc["nodes"]["backup"]["access_log"]
    path = write(tmp_path, yaml.safe_dump(doc))
    assert ": nodes.backup.access_log: missing required key" in error_of(path)


# --- keys -----------------------------------------------------------------------------------------------

KEY = bytes(range(32))


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600, name: str = "k") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def test_load_key_reads_raw_bytes_and_strips_one_newline(tmp_path: Path) -> None:
    assert load_key(_key_file(tmp_path, KEY)) == KEY
    assert load_key(_key_file(tmp_path, KEY + b"\n")) == KEY
    assert load_key(_key_file(tmp_path, KEY + b"\n\n")) == KEY + b"\n"
    assert load_key(_key_file(tmp_path, KEY, 0o400)) == KEY


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610, 0o601])
def test_load_key_rejects_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, KEY, mode)
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert str(info.value) == (
        f"{path}: auth.key_file: mode {mode:04o} is group/other-accessible; chmod 600 {path}"
    )


def test_load_key_rejects_short_key(tmp_path: Path) -> None:
    path = _key_file(tmp_path, KEY[:31] + b"\n")
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert str(info.value) == f"{path}: auth.key_file: key is 31 bytes, need at least 32"


def test_load_key_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_key(tmp_path / "absent")
    assert str(info.value) == f"{tmp_path / 'absent'}: auth.key_file: cannot read: No such file or directory"
    os.chmod(tmp_path, 0o700)
    with pytest.raises(ConfigError, match=r"auth\.key_file: "):
        load_key(tmp_path)


def test_keys_for_current_then_previous(tmp_path: Path) -> None:
    old = bytes(reversed(KEY))
    current = _key_file(tmp_path, KEY, name="current")
    previous = _key_file(tmp_path, old, name="previous")
    assert keys_for(AuthConfig(key_file=current)) == (KEY,)
    assert keys_for(AuthConfig(key_file=current, previous_key_file=previous)) == (KEY, old)
    os.chmod(previous, 0o644)
    with pytest.raises(ConfigError, match=r"auth\.previous_key_file: mode 0644"):
        keys_for(AuthConfig(key_file=current, previous_key_file=previous))


@pytest.mark.parametrize(
    ("old", "new", "line_of", "field", "problem"),
    [
        ("  automatic: true\n", "  automatic: true\n  fence: [fence-live]\n", "fence:", "failover.fence[0]",
         "absolute path"),
        ("  automatic: true\n", "  automatic: true\n  fence: [/bin/true, 3]\n", "fence:", "failover.fence[1]",
         "non-empty string"),
        ("  automatic: true\n", "  automatic: yes please\n", "automatic:", "failover.automatic",
         "true or false"),
        ("  count: 3\n", "  count: 0\n", "count:", "probe.count", "between"),
        ("    fails: 3\n", "    fails: 0\n", "fails:", "health.self_check.fails", "between"),
    ],
)
def test_takeover_and_self_check_errors(
    tmp_path: Path, old: str, new: str, line_of: str, field: str, problem: str
) -> None:
    text = edit(BASE, old, new)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if line_of in row and row.strip() in new)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'cluster.yaml'}:{line}: {field}: "), message
    assert problem in message and "\n" not in message


def test_fence_argv_loaded(tmp_path: Path) -> None:
    text = edit(BASE, "  automatic: true\n", "  automatic: false\n  fence: [/usr/sbin/fence, --node, live]\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.takeover.fence == ("/usr/sbin/fence", "--node", "live")
    assert cfg.takeover.automatic is False


# --- metrics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9405", (IPv4Address("127.0.0.1"), 9405)),
        ("'[::1]:9405'", (IPv6Address("::1"), 9405)),
        ("'[2001:db8::5]:1'", (IPv6Address("2001:db8::5"), 1)),
        ("0.0.0.0:65535", (IPv4Address("0.0.0.0"), 65535)),
    ],
)
def test_metrics_listen_loaded(tmp_path: Path, listen: str, expected: tuple[object, int]) -> None:
    cfg = load_config(write(tmp_path, BASE + f"metrics: {{listen: {listen}}}\n"))
    assert cfg.metrics.listen == expected


def test_metrics_off_by_default_and_with_an_empty_section(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).metrics.listen is None
    assert load_config(write(tmp_path, BASE + "metrics: {}\n")).metrics.listen is None


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("9405", "expected ADDRESS:PORT such as 127.0.0.1:9405 or [::1]:9405 (quoted), got number 9405"),
        ("'9405'", "expected ADDRESS:PORT such as 127.0.0.1:9405 or [::1]:9405, got '9405'"),
        ("':9405'", "expected ADDRESS:PORT"),
        ("'127.0.0.1:'", "expected ADDRESS:PORT"),
        ("'127.0.0.1:http'", "expected ADDRESS:PORT"),
        ("'127.0.0.1:0'", "port must be between 1 and 65535, got '127.0.0.1:0'"),
        ("'127.0.0.1:65536'", "port must be between 1 and 65535"),
        ("'localhost:9405'", "not an IP address: 'localhost'"),
        ("'::1:9405'", "write an IPv6 address in brackets, like [::1]:9405"),
        ("'[127.0.0.1]:9405'", "brackets are for IPv6 addresses only"),
        ("9405.5", "got number 9405.5"),
        ("[127.0.0.1, 9405]", "got a list"),
        ("'127.0.0.1:9405\\n'", "expected ADDRESS:PORT"),
    ],
)
def test_metrics_listen_errors_are_one_line_with_the_field(tmp_path: Path, listen: str, problem: str) -> None:
    text = BASE + f"metrics:\n  listen: {listen}  #<\n"
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{marked_line(text)}: metrics.listen: "), message
    assert problem in message, message


def test_metrics_unknown_key(tmp_path: Path) -> None:
    text = BASE + "metrics:\n  port: 9405  #<\n"
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{marked_line(text)}: metrics.port: unknown key"


def test_digest_ignores_key_paths_so_keys_rotate_host_by_host(tmp_path: Path) -> None:
    before = load_config(write(tmp_path, BASE, "a.yaml")).digest
    rotated = edit(BASE, "key_file: /etc/failover/web.key",
                   "key_file: /etc/failover/web2.key\n  previous_key_file: /etc/failover/web.key")
    assert load_config(write(tmp_path, rotated, "b.yaml")).digest == before


# --- hostile files: owners, FIFOs, secrets in errors, alias bombs -----------------------------------------


def test_load_key_rejects_a_key_owned_by_another_user(tmp_path: Path) -> None:
    path = _key_file(tmp_path, KEY)
    os.chown(path, 65534, 65534)  # nobody: could have written a key of its own choosing
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert str(info.value) == f"{path}: auth.key_file: owned by uid 65534, not root or uid {os.geteuid()}; " \
        f"chown root {path}"


def _in_time(call: Any, seconds: float = 5.0) -> BaseException | None:
    """Run call in a thread; the exception it raised. A call still blocked after `seconds` fails the test."""
    import threading

    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked on the file"
    return raised[0] if raised else None


def test_a_fifo_as_key_or_cluster_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    err = _in_time(lambda: load_key(fifo))
    assert isinstance(err, ConfigError) and str(err) == f"{fifo}: auth.key_file: not a regular file", err
    err = _in_time(lambda: load_config(fifo))
    assert isinstance(err, ConfigError) and str(err) == f"{fifo}: not a regular file", err


def test_a_key_pasted_where_its_path_goes_is_never_shown(tmp_path: Path) -> None:
    secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    path = write(tmp_path, BASE.replace("/etc/failover/web.key", secret))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert secret[:8] not in str(info.value)
    assert "auth.key_file: must be an absolute path" in str(info.value)


def test_the_key_file_given_as_cluster_file_is_never_shown(tmp_path: Path) -> None:
    secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    path = tmp_path / "web.key"
    path.write_text(secret + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert secret[:8] not in str(info.value)
    assert str(info.value) == f"{path}:1: top level must be a mapping, got a string of 64 characters"


@pytest.mark.parametrize("where", ["cluster: *a9\n", "hooks:\n  confirmed: *a9\n", "zzz: *a9\n"])
def test_a_billion_laughs_fails_fast_with_one_line(tmp_path: Path, where: str) -> None:
    import time

    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\n" + where)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - started < 1.0
    assert str(info.value) == f"{path}:1: YAML aliases expand to more than 10000 values"


def test_the_agent_parses_a_cluster_file_again_only_when_its_bytes_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before a move the agent checks the operator's file; the same bytes at the same path load the same.
    import asyncio

    from failover import controlcommands

    parsed: list[bytes] = []
    real = controlcommands.config_from

    def counting(path: Path | str, raw: bytes) -> object:
        parsed.append(raw)
        return real(path, raw)

    monkeypatch.setattr(controlcommands, "config_from", counting)
    commands = controlcommands.ControlCommands.__new__(controlcommands.ControlCommands)
    commands._file_found_good = None
    path = write(tmp_path, MINIMAL)
    asyncio.run(commands._check_file(str(path)))
    asyncio.run(commands._check_file(str(path)))
    assert len(parsed) == 1
    bad = edit(MINIMAL, "cluster: db", "cluster: 'no spaces allowed'")
    path.write_text(bad)
    with pytest.raises(ConfigError):
        asyncio.run(commands._check_file(str(path)))
    with pytest.raises(ConfigError):  # a bad file is never remembered as good
        asyncio.run(commands._check_file(str(path)))
    path.write_text(MINIMAL)  # the bytes last found good again
    asyncio.run(commands._check_file(str(path)))
    assert len(parsed) == 3
    path.write_text(MINIMAL + "# a comment\n")
    asyncio.run(commands._check_file(str(path)))
    assert len(parsed) == 4
