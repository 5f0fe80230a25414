"""`failover check` on what the connection handoff needs: nft, ss, and a listener it can cover.

No root: listeners come from a fake /proc/net, sysctls from a fake /proc/sys/net, tools from PATH.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from failover.check import OK, WARN, handoff_findings, host_checks, listener_finding, tcp_listeners
from tests.labconfig import lab_config as config

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
# As the kernel prints them: each 32-bit word of the address in host (little-endian) order; 0A = LISTEN.
VIP4_80 = "0A7100CB:0050"  # 203.0.113.10:80
ANY4_22 = "00000000:0016"
VIP6_80 = "B80D0120010000000000000010000000:0050"  # [2001:db8:0:1::10]:80
ANY6_443 = "00000000000000000000000000000000:01BB"


def proc_net(root: Path, tcp: Sequence[str], tcp6: Sequence[str] = (), state: str = "0A") -> Path:
    net = root / "net"
    net.mkdir(parents=True, exist_ok=True)
    for table, local in (("tcp", tcp), ("tcp6", tcp6)):
        rows = [f"   {i}: {addr} {'0' * (len(addr) - 5)}:0000 {state} 00000000:00000000 00:00000000 0 0\n"
                for i, addr in enumerate(local)]
        (net / table).write_text(HEADER + "".join(rows))
    return net


def proc_sys(root: Path, ipv4: int = 0, ipv6: int = 0) -> Path:
    sys_net = root / "sys"
    for family, value in (("ipv4", ipv4), ("ipv6", ipv6)):
        (sys_net / family).mkdir(parents=True, exist_ok=True)
        (sys_net / family / "ip_nonlocal_bind").write_text(f"{value}\n")
    return sys_net


def test_listeners_of_both_families_are_read_with_their_ports(tmp_path: Path) -> None:
    net = proc_net(tmp_path, [VIP4_80, ANY4_22], [VIP6_80, ANY6_443])
    assert [(str(a), p) for a, p in tcp_listeners(4, net)] == [("203.0.113.10", 80), ("0.0.0.0", 22)]
    assert [(str(a), p) for a, p in tcp_listeners(6, net)] == [("2001:db8:0:1::10", 80), ("::", 443)]
    established = proc_net(tmp_path / "x", [VIP4_80], state="01")
    assert tcp_listeners(4, established) == []


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_listener_bound_to_the_vip_is_covered_once_nonlocal_bind_is_set(tmp_path: Path, ipv6: bool) -> None:
    cfg = config(tmp_path, ipv6)
    net = proc_net(tmp_path, [VIP4_80, ANY4_22], [VIP6_80])
    family = "ipv6" if ipv6 else "ipv4"
    ok = listener_finding(cfg, net, proc_sys(tmp_path / "on", **{family: 1}))
    assert ok.level == OK and "bound to the VIP itself on :80" in ok.detail, ok
    off = listener_finding(cfg, net, proc_sys(tmp_path / "off", **{"ipv4" if ipv6 else "ipv6": 1}))
    assert off.level == WARN and "bound to the VIP itself on :80" in off.detail, off
    name = f"net.{family}.ip_nonlocal_bind"
    assert off.fix.startswith(f"sysctl -w {name}=1 ") and "wildcard" in off.fix, off


def test_a_wildcard_listener_is_covered_and_no_listener_is_named(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    wildcard = listener_finding(cfg, proc_net(tmp_path, [ANY4_22, "00000000:0050"]), proc_sys(tmp_path))
    assert wildcard.level == OK and "wildcard address (:22, :80)" in wildcard.detail, wildcard
    dual_stack = listener_finding(cfg, proc_net(tmp_path / "dual", [], [ANY6_443]), proc_sys(tmp_path))
    assert dual_stack.level == OK and "wildcard address (:443)" in dual_stack.detail, dual_stack
    nothing = listener_finding(cfg, proc_net(tmp_path / "none", []), proc_sys(tmp_path))
    assert nothing.level == WARN and "listen" in nothing.fix, nothing


def test_missing_nft_is_one_line_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    net, sys_net = proc_net(tmp_path, ["00000000:0050"]), proc_sys(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found = {f.check: f for f in handoff_findings(cfg, net, sys_net)}
    assert set(found) == {"nft", "sock_diag", "listener"}
    assert found["nft"].level == WARN and found["nft"].fix == "apt-get install nftables"
    assert found["sock_diag"].level == OK  # asked of this machine's kernel, which has it
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nft").write_text("#!/bin/sh\n")
    (tools / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    assert all(f.level == OK for f in handoff_findings(cfg, net, sys_net))


def test_a_kernel_without_sock_diag_is_one_line() -> None:
    from failover.check import sock_diag_finding

    def refused() -> None:
        raise OSError(93, "Protocol not supported")

    finding = sock_diag_finding(refused)
    assert finding.level == WARN and "Protocol not supported" in finding.detail
    assert "\n" not in finding.detail and "CONFIG_INET_DIAG" in finding.fix


def test_failover_check_prints_the_handoff_lines(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    checks = {f.check for f in host_checks(cfg, cfg.node("live"))}
    assert {"nft", "sock_diag", "listener", "connection hold"} <= checks


def test_the_drain_hook_is_judged(tmp_path: Path) -> None:
    from failover.check import drain_hook_finding

    cfg = config(tmp_path)  # the lab's file: its drain hook is a script in the workdir, not written here
    missing = drain_hook_finding(cfg)
    assert missing.level == WARN and "not an executable file" in missing.detail
    hook = tmp_path / "drain-hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert drain_hook_finding(cfg).level == OK
    empty = drain_hook_finding(config(tmp_path, hooks={"drain": []}))
    assert empty.level == WARN and "swap.drain_max_ms (60000 ms)" in empty.detail
    assert "nginx, -s, reload" in empty.fix


def test_the_connection_hold_needs_cap_sys_ptrace(tmp_path: Path) -> None:
    from failover.check import hold_finding

    status = tmp_path / "status"
    status.write_text("Name:\tfailover\nCapEff:\t0000000000003000\n")  # CAP_NET_ADMIN, CAP_NET_RAW only
    without = hold_finding(status)
    assert without.level == WARN and "CAP_SYS_PTRACE" in without.detail and "reset" in without.detail
    status.write_text("Name:\tfailover\nCapEff:\t0000000000083000\n")  # and CAP_SYS_PTRACE (19)
    assert hold_finding(status).level == OK  # and pidfd_getfd of this test's own descriptor works

    def filtered() -> None:
        raise OSError(1, "Operation not permitted")  # what a SystemCallFilter without it answers

    refused = hold_finding(status, filtered)
    assert refused.level == WARN and "pidfd_getfd refused" in refused.detail and "\n" not in refused.detail
    assert "SystemCallFilter=pidfd_getfd" in refused.fix
    status.write_text("Name:\tfailover\n")
    assert hold_finding(status).level == WARN
