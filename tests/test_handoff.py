"""The handoff's pure parts, no root: what it reads from ss, what it refuses to put in an nft rule."""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv6Address, ip_address

import pytest

from failover import handoff
from failover.handoff import HandoffError, _address, _nft_command, handoff_rule, ruleset
from tests import nsutil

VIP, OLD = ip_address("203.0.113.10"), ip_address("203.0.113.11")


def test_sock_diag_addresses_are_read_as_the_packets_carry_them() -> None:
    assert _address(bytes([203, 0, 113, 100])) == ip_address("203.0.113.100")
    assert _address(ip_address("2001:db8:0:1::100").packed) == ip_address("2001:db8:0:1::100")
    # A dual-stack listener's socket for an IPv4 client: recorded as the IPv4 address its packets carry.
    assert _address(ip_address("::ffff:203.0.113.100").packed) == ip_address("203.0.113.100")


_SOCKETS = """
import asyncio, json, socket, subprocess, time
from ipaddress import ip_address
from failover import handoff
v4 = socket.socket()
v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
v4.bind(("203.0.113.10", 80))
v4.listen()
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
v6.bind(("::", 8080))
v6.listen()
over = socket.create_connection(("203.0.113.10", 80)); a, _ = v4.accept(); a.close(); over.close()
live = socket.create_connection(("203.0.113.10", 80)); b, _ = v4.accept()
half = socket.create_connection(("203.0.113.10", 80)); c, _ = v4.accept(); c.shutdown(socket.SHUT_WR)
mapped = socket.create_connection(("203.0.113.10", 8080)); d, _ = v6.accept()
time.sleep(0.2)
# As handoff asked ss before: no family option, so the dual-stack listener's sockets are in it too.
argv = ["ss", "-t", "-n", "-H", "state", "connected", "src", "203.0.113.10"]
ss = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
found, n_over = asyncio.run(handoff.connections(ip_address("203.0.113.10")))
# A kernel that refuses the one-walk request (an unknown type is refused alike, EINVAL): a walk per family.
handoff._TCPDIAG_GETSOCK = 99
found_by_family, n_over_by_family = asyncio.run(handoff.connections(ip_address("203.0.113.10")))
handoff._TCPDIAG_GETSOCK = 18
closed_tw = asyncio.run(handoff.close_time_wait(ip_address("203.0.113.10")))
ss_after_tw = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
closed_all = asyncio.run(handoff.close_leftovers(ip_address("203.0.113.10")))
ss_after_all = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
listening = subprocess.run(["ss", "-t", "-n", "-H", "-l"], capture_output=True, text=True, check=True).stdout
print(json.dumps({
    "ss": ss, "found": sorted([str(p), pp, port] for p, pp, port in found), "over": n_over,
    "found_by_family": sorted([str(p), pp, port] for p, pp, port in found_by_family),
    "over_by_family": n_over_by_family,
    "closed_tw": closed_tw, "ss_after_tw": ss_after_tw, "closed_all": closed_all,
    "ss_after_all": ss_after_all, "listening": len(listening.splitlines()),
}))
"""


def test_the_live_list_leaves_out_what_is_over_as_ss_does() -> None:
    if not nsutil.is_root():
        pytest.skip(nsutil.NEEDS_ROOT_REASON)
    with nsutil.topology(("server",)) as topo:
        netns = topo["server"].netns
        nsutil.ns(netns, "ip", "link", "set", "lo", "up")
        nsutil.ns(netns, "ip", "addr", "add", "203.0.113.10/32", "dev", "lo")
        result = nsutil.py_in(netns, _SOCKETS)
    assert isinstance(result, dict)
    expected, expected_over = [], 0
    for line in result["ss"].splitlines():
        state, *_, local, peer = line.split()
        if state == "TIME-WAIT":
            expected_over += 1
            continue
        host, _, port = peer.rpartition(":")
        address = ip_address(host.strip("[]"))
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        expected.append([str(address), int(port), int(local.rpartition(":")[2])])
    assert result["found"] == sorted(expected)
    assert result["over"] == expected_over == 1
    assert (result["found_by_family"], result["over_by_family"]) == (result["found"], result["over"])
    # Both ends of the live, the half-closed (FIN-WAIT-2 / CLOSE-WAIT) and the dual-stack connection
    # (the client ends are on the VIP too, here), never the TIME_WAIT one.
    assert len(result["found"]) == 6
    # Closed as `ss -K` closes them: the TIME_WAIT one first, the rest alone; then all but the listeners.
    assert result["closed_tw"] == 1 and "TIME-WAIT" not in result["ss_after_tw"]
    assert len(result["ss_after_tw"].splitlines()) == 6
    # Each end here closes its peer end too (a reset over loopback): that one is gone, not counted.
    assert result["closed_all"] >= 3 and result["ss_after_all"].strip() == ""
    assert result["listening"] == 2


def test_bad_input_is_refused_before_nft_sees_it() -> None:
    with pytest.raises(HandoffError, match="differ in family"):
        ruleset("lab", VIP, ip_address("2001:db8::11"), "eth0")
    with pytest.raises(HandoffError, match="unusual names"):
        handoff_rule("lab", VIP, OLD, 'eth0" accept; #')


def test_live_connections_are_recorded_with_the_rule_in_one_batch() -> None:
    rules = handoff_rule("lab-1", VIP, OLD, "eth0", [(ip_address("203.0.113.100"), 40000, 80)])
    element, chain, rule = rules.splitlines()
    assert element == "add element ip failover_lab_1 own { 203.0.113.100 . 40000 . 80 }"
    assert chain.startswith("add chain ip failover_lab_1 handoff")
    assert "ip saddr . tcp sport . tcp dport != @own" in rule and "dup to 203.0.113.11" in rule
    assert len(handoff_rule("lab-1", VIP, OLD, "eth0").splitlines()) == 2  # nothing to record


def test_the_rule_is_unhooked_before_the_record_of_own_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    # One transaction deleting both chains unhooks them in turn: for a moment the record (output) was gone
    # while the rule (prerouting) still handed off, and a fresh connection's ACK went to the old holder.
    import asyncio

    from failover import handoff

    calls: list[list[str]] = []

    async def fake_nft(args: list[str], stdin: str | None = None) -> tuple[int, str]:
        calls.append(args)
        return 0, "{}"

    monkeypatch.setattr(handoff, "_nft", fake_nft)
    asyncio.run(handoff.remove("lab", 4))
    deletes = [c for c in calls if c[0] == "delete"]
    assert deletes == [
        ["delete", "chain", "ip", "failover_lab", "handoff"],
        ["delete", "table", "ip", "failover_lab"],
    ]


def test_nothing_is_deleted_when_there_is_no_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # A delete costs a kernel transaction (10-16 ms here) even when it fails: a new holder's first
    # handoff, with no earlier table, sends none on its way to ready.
    import asyncio

    from failover import handoff

    calls: list[list[str]] = []

    async def fake_nft(args: list[str], stdin: str | None = None) -> tuple[int, str]:
        calls.append(args)
        return 1, "Error: No such file or directory\nlist table ip failover_lab\n"

    monkeypatch.setattr(handoff, "_nft", fake_nft)
    assert asyncio.run(handoff.remove("lab", 4)) == 0
    assert calls == [["-j", "list", "table", "ip", "failover_lab"]]


def test_libnftables_is_given_what_nft_would_have_run() -> None:
    assert _nft_command(["-f", "-"], "add table ip t\n") == (False, "add table ip t\n")
    assert _nft_command(["-j", "list", "table", "ip", "t"], None) == (True, "list table ip t")
    delete = ["delete", "chain", "ip", "t", "handoff"]
    assert _nft_command(delete, None) == (False, "delete chain ip t handoff")


class _KernelSaying:
    """Stands in for a netlink socket on a kernel this machine is not (one without TCPDIAG_GETSOCK, or
    without tcp_diag): answers each request with the next reply given, recording what was asked."""

    def __init__(self, *replies: bytes) -> None:
        self.replies, self.sent = list(replies), list[int]()

    def send(self, data: bytes) -> int:
        self.sent.append(struct.unpack_from("=H", data, 4)[0])  # the message type asked
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.replies.pop(0)


def _done(errno_: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, 0, 0, -errno_)  # NLMSG_DONE carrying the dump's outcome


def _error(errno_: int) -> bytes:
    return struct.pack("=IHHIIi", 36, 2, 0, 0, 0, -errno_) + bytes(16)  # NLMSG_ERROR


def test_a_dump_that_failed_is_an_error_not_an_empty_list() -> None:
    vip = ip_address("203.0.113.10")
    with pytest.raises(OSError) as err:
        handoff._read_dump(_KernelSaying(_done(errno.ENOENT)))  # type: ignore[arg-type]
    assert err.value.errno == errno.ENOENT
    assert handoff._read_dump(_KernelSaying(_done())) == []  # type: ignore[arg-type]  # ended well
    # Refused at once (EINVAL) or failed once begun (ENOENT): a walk per family, then their answers.
    for refusal in (_error(errno.EINVAL), _done(errno.ENOENT)):
        nl = _KernelSaying(refusal, _done(), _done())
        assert handoff._tcp_sockets(vip, handoff._CONNECTED, nl) == []  # type: ignore[arg-type]
        assert nl.sent == [18, 20, 20]
    nl = _KernelSaying(_done(errno.ENOENT), _done(errno.ENOENT))  # no tcp_diag at all: said, not hidden
    with pytest.raises(OSError) as err:
        handoff._tcp_sockets(vip, handoff._CONNECTED, nl)  # type: ignore[arg-type]
    assert err.value.errno == errno.ENOENT and nl.sent == [18, 20]


def test_the_record_starts_before_the_list_it_is_completed_with(monkeypatch: pytest.MonkeyPatch) -> None:
    # A connection accepted while the list is read is in the record either way; then the list and the
    # rule go in together.
    import asyncio

    steps: list[str] = []
    live = [(ip_address("203.0.113.100"), 40000, 80)]

    async def fake_nft(args: list[str], stdin: str | None = None) -> tuple[int, str]:
        steps.append(stdin if stdin is not None else " ".join(args))
        return 0, ""

    async def fake_connections(vip: object) -> tuple[list[handoff.Connection], int]:
        steps.append("list")
        return live, 0

    monkeypatch.setattr(handoff, "_nft", fake_nft)
    monkeypatch.setattr(handoff, "connections", fake_connections)
    asyncio.run(handoff.install("lab", VIP, OLD, "eth0", present=False))
    assert steps == [ruleset("lab", VIP, OLD, "eth0"), "list", handoff_rule("lab", VIP, OLD, "eth0", live)]
