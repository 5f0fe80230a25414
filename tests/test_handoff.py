"""The handoff's pure parts, no root: what it reads from ss, what it refuses to put in an nft rule."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from failover.handoff import (
    HandoffError,
    _endpoint,
    _nft_command,
    _ss_filter,
    handoff_rule,
    parse_connections,
    ruleset,
)

VIP, OLD = ip_address("203.0.113.10"), ip_address("203.0.113.11")


def test_ss_endpoints_of_both_families_are_read() -> None:
    assert _endpoint("203.0.113.100:40000") == (ip_address("203.0.113.100"), 40000)
    assert _endpoint("[2001:db8:0:1::100]:443") == (ip_address("2001:db8:0:1::100"), 443)
    assert _endpoint("[fe80::1%eth0]:80") == (ip_address("fe80::1"), 80)
    # A dual-stack listener's socket for an IPv4 client: recorded as the IPv4 address its packets carry.
    assert _endpoint("[::ffff:203.0.113.100]:40000") == (ip_address("203.0.113.100"), 40000)
    with pytest.raises(ValueError):
        _endpoint("*:*")


def test_the_live_list_leaves_out_what_is_over() -> None:
    # ss takes its state filter before the address expression.
    assert _ss_filter(VIP, ("connected",)) == ["-t", "-n", "-H", "state", "connected", "src", "203.0.113.10"]
    out = (
        "TIME-WAIT 0      0      203.0.113.10:80    203.0.113.100:43336\n"
        "ESTAB     0      0      203.0.113.10:80    203.0.113.100:43344\n"
        "FIN-WAIT-2 0     0      [::ffff:203.0.113.10]:80 [::ffff:203.0.113.101]:5000\n"
    )
    live, over = parse_connections(out)
    # FIN-WAIT-2 is not over: its client's FIN is still to come, and it must stay recorded.
    assert live == [(ip_address("203.0.113.100"), 43344, 80), (ip_address("203.0.113.101"), 5000, 80)]
    assert over == 1
    with pytest.raises(HandoffError, match="ss printed"):
        parse_connections("ESTAB 0 0 garbage\n")


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
