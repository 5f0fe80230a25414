"""`failover check` without root: sysctls on a fake /proc, the access-log format and its proof, listeners."""

from __future__ import annotations

from pathlib import Path

from failover import sysctl
from failover.accesslog import APACHE_COMBINED_SERVER, NGINX_COMBINED_SERVER, LogFormat
from failover.check import (
    FAIL,
    OK,
    PROOF_BY_CLIENT,
    PROOF_BY_LOG,
    PROOF_BY_WITNESS,
    WARN,
    access_log_finding,
    host_checks,
    proof_finding,
    tail_lines,
    vip_has_listener,
)
from failover.config import ClusterConfig, load_config
from failover.findings import Check
from failover.lab.cluster import cluster_document
from failover.lab.netns import Lab

COMBINED = '203.0.113.50 - - [26/Nov/2026:05:28:06 +0000] "GET / HTTP/1.1" 200 7 "-" "curl/7.88"\n'


def fake_proc(root: Path, values: dict[str, int]) -> Path:
    defaults = {
        "ipv4/conf/all/arp_ignore": 0, "ipv4/conf/eth0/arp_ignore": 1,
        "ipv4/conf/all/arp_announce": 0, "ipv4/conf/eth0/arp_announce": 2,
        "ipv4/conf/all/promote_secondaries": 1, "ipv4/conf/eth0/promote_secondaries": 0,
        "ipv4/ip_nonlocal_bind": 0,
    }
    for rel, value in {**defaults, **values}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{value}\n")
    return root


def by_name(found: list[Check]) -> dict[str, Check]:
    return {f.check: f for f in found}


def test_good_settings_pass(tmp_path: Path) -> None:
    found = sysctl.judge("eth0", 4, drain=True, vip_bound=False, proc=fake_proc(tmp_path, {}))
    assert all(f.ok for f in found), found
    assert set(by_name(found)) == {
        "net.ipv4.conf.eth0.arp_ignore", "net.ipv4.conf.eth0.arp_announce",
        "net.ipv4.conf.eth0.promote_secondaries", "net.ipv4.ip_nonlocal_bind",
    }


def test_each_bad_setting_is_reported_with_its_exact_fix(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        "ipv4/conf/eth0/arp_ignore": 0, "ipv4/conf/eth0/arp_announce": 1,
        "ipv4/conf/all/promote_secondaries": 0,
    })
    found = by_name(sysctl.judge("eth0", 4, drain=True, vip_bound=True, proc=proc))
    bad = {name for name, f in found.items() if not f.ok}
    assert bad == set(found)
    assert found["net.ipv4.conf.eth0.arp_ignore"].fix.startswith("sysctl -w net.ipv4.conf.eth0.arp_ignore=1 ")
    assert "arp_announce=2" in found["net.ipv4.conf.eth0.arp_announce"].fix
    assert "promote_secondaries=1" in found["net.ipv4.conf.eth0.promote_secondaries"].fix
    assert "ip_nonlocal_bind=1" in found["net.ipv4.ip_nonlocal_bind"].fix
    assert all("/etc/sysctl.d/" in f.fix for f in found.values())  # also made permanent


def test_arp_settings_do_not_matter_without_a_drain(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {"ipv4/conf/eth0/arp_ignore": 0})
    found = by_name(sysctl.judge("eth0", 4, drain=False, vip_bound=False, proc=proc))
    assert found["net.ipv4.conf.eth0.arp_ignore"].ok
    assert sysctl.drain_blocker("eth0", 4, proc=proc).startswith("arp_ignore=0")


def test_vlan_interface_names_keep_their_dot(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {"ipv4/conf/eth0.100/arp_ignore": 1, "ipv4/conf/eth0.100/arp_announce": 2,
                                "ipv4/conf/eth0.100/promote_secondaries": 1})
    found = sysctl.judge("eth0.100", 4, drain=True, vip_bound=False, proc=proc)
    assert all(f.ok for f in found), found
    assert "net.ipv4.conf.eth0/100.arp_ignore" in by_name(found)


def _config(tmp_path: Path, log_format: str = "combined") -> ClusterConfig:
    import yaml

    (tmp_path / "lab.key").write_text("k" * 64)
    (tmp_path / "lab.key").chmod(0o600)
    doc = cluster_document(Lab(), tmp_path, {"confirm": {"log_format": log_format}})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def test_access_log_format_is_checked_on_its_last_lines(tmp_path: Path) -> None:
    config = _config(tmp_path)
    node = config.node("live")
    assert access_log_finding(config, node).level == FAIL  # missing
    node.access_log.parent.mkdir(parents=True)
    node.access_log.write_text("")
    assert access_log_finding(config, node).level == WARN  # empty: cannot tell
    node.access_log.write_text(COMBINED * 30)
    assert access_log_finding(config, node).level == OK
    node.access_log.write_text('{"json": "logging"}\n' * 5)
    finding = access_log_finding(config, node)
    assert finding.level == FAIL and "log_format" in finding.fix


def test_tail_lines_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail_lines(path, 3) == ["line 99997", "line 99998", "line 99999"]


def test_listener_bound_to_the_vip_is_found_in_proc_net_tcp(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    # 203.0.113.10:80 listening (0A), written little-endian as the kernel does; and the wildcard.
    (tmp_path / "tcp").write_text(
        header
        + "   0: 0A7100CB:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        + "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
    )
    assert vip_has_listener("203.0.113.10", proc=tmp_path)
    assert not vip_has_listener("203.0.113.11", proc=tmp_path)


WITH_SERVER = COMBINED.rstrip("\n") + " 203.0.113.10\n"


def test_plain_combined_gives_the_weaker_proof_and_the_fix_names_the_exact_lines(tmp_path: Path) -> None:
    config = _config(tmp_path)
    node = config.node("live")
    node.access_log.parent.mkdir(parents=True)
    node.access_log.write_text(COMBINED * 3)
    assert PROOF_BY_WITNESS in proof_finding(config, node, witness=True).detail
    finding = proof_finding(config, node, witness=False)
    assert finding.level == WARN  # weaker, not broken
    assert PROOF_BY_CLIENT in finding.detail and "no nft" in finding.detail
    assert proof_finding(config, node, witness=True).fix == finding.fix  # the stronger one is the same fix
    assert NGINX_COMBINED_SERVER in finding.fix
    assert f"access_log {node.access_log} combined_server;" in finding.fix
    assert APACHE_COMBINED_SERVER in finding.fix
    assert f"CustomLog {node.access_log} combined_server" in finding.fix
    assert "confirm.log_format: combined_server" in finding.fix
    assert proof_finding(config, node) in host_checks(config, node)
    # The line the fix gives makes the log the preset reads.
    assert LogFormat.COMBINED_SERVER.parse(WITH_SERVER) is not None


def test_combined_server_gives_the_log_field_proof(tmp_path: Path) -> None:
    config = _config(tmp_path, "combined_server")
    node = config.node("live")
    node.access_log.parent.mkdir(parents=True)
    node.access_log.write_text("")  # nothing to judge yet: the format alone decides
    assert proof_finding(config, node).level == OK
    node.access_log.write_text(WITH_SERVER * 3)
    finding = proof_finding(config, node)
    assert finding.level == OK and PROOF_BY_LOG in finding.detail and not finding.fix
    node.access_log.write_text(WITH_SERVER + WITH_SERVER.replace(" 203.0.113.10", " -"))
    finding = proof_finding(config, node)
    assert finding.level == WARN and "1 of its last 2 lines" in finding.detail


def test_a_server_field_that_never_parses_fails(tmp_path: Path) -> None:
    config = _config(tmp_path, "combined_server")
    node = config.node("live")
    node.access_log.parent.mkdir(parents=True)
    node.access_log.write_text(WITH_SERVER.replace(" 203.0.113.10", " www.example") * 4)
    finding = proof_finding(config, node)
    assert finding.level == FAIL and "server field of none of its last 4 lines" in finding.detail
    assert "$server_addr" in finding.fix


def test_hostnames_for_clients_fail_whatever_the_format(tmp_path: Path) -> None:
    config = _config(tmp_path)
    node = config.node("live")
    node.access_log.parent.mkdir(parents=True)
    node.access_log.write_text(COMBINED.replace("203.0.113.50", "client.example") * 2)
    finding = proof_finding(config, node)
    assert finding.level == FAIL and "client field" in finding.detail and "%a" in finding.fix
