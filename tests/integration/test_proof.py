"""Proof you can trust, against the case that fooled it: monitors polling each node's own address.

A common site has monitoring that polls each node's own address (the peer, a blackbox exporter, a load
balancer's health check). Here one poller runs on live (backup's address) and one on the client itself
(both nodes' addresses, from the very address whose requests to the VIP are the proof), 10 times a second
each. With a firewall mistake on backup (its nft drops TCP to the VIP's port 80, not to its own address),
`failover swap` must not confirm: it rolls back to live by itself within the adaptive deadline. With the
firewall fine, the same swap confirms. Both for a log with the server address (`combined_server`: proof by
log field) and for nginx's plain `combined` (proof by the kernel witness).

The lab's cluster file is the defaults a user gets; the only change a test makes is the one an operator
makes: the log format, in nginx and in `confirm.log_format`, together.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from failover.accesslog import (
    DESTINATION_LOG,
    DESTINATION_WITNESS,
    NGINX_COMBINED_SERVER,
)
from failover.check import PROOF_BY_LOG, PROOF_BY_WITNESS
from failover.config import load_config
from failover.lab.client import ClientLoad, Request, summarize
from failover.lab.cluster import SERVERS, LabCluster
from failover.lab.rehearse import claim_at
from failover.lab.scenarios import MONITOR_INTERVAL_MS
from tests.integration.conftest import CLIENT, VIP_IP, client_load, failover_cli, lab_cluster

LOG_FORMATS = ("combined_server", "combined")
DESTINATION = {"combined_server": DESTINATION_LOG, "combined": DESTINATION_WITNESS}
# The source reads its rate from its last seconds of log: a site that has been busy for a while.
WARM_S = 2.0
SETTLE_S = 0.5
FIREWALL_TABLE = "fo_test_firewall"
DEADLINE = re.compile(
    r"no client request to 203\.0\.113\.10 reached backup in (\d+) ms \(live served (\d+) req/s before the "
    r"move: 20 arrivals take \d+ ms(, at least 300 ms)?"
    r"(; \d+ ms more: this host was held off the CPU that long meanwhile)?\)"
)


@contextlib.contextmanager
def proof_lab(log_format: str) -> Iterator[LabCluster]:
    """The lab with its web servers logging in `log_format`, and the cluster file saying so."""
    overrides = None if log_format == "combined" else {"confirm": {"log_format": log_format}}
    with lab_cluster(overrides) as cluster:
        if log_format != "combined":
            use_nginx_log_format(cluster, log_format)
        assert load_config(cluster.config_path).confirm.log_format == log_format
        yield cluster


def use_nginx_log_format(cluster: LabCluster, log_format: str) -> None:
    """nginx on both servers restarted with a fresh access log in `log_format` (before any move)."""
    for name in SERVERS:
        server = cluster.nginx[name]
        server.stop()
        server.access_log.unlink(missing_ok=True)
        server.log_format = log_format
        server.start()


@contextlib.contextmanager
def monitors(cluster: LabCluster) -> Iterator[dict[str, ClientLoad]]:
    """Pollers of the nodes' own addresses, 10 a second each: from live (backup's) and from the client
    (live's and backup's). Each opens a new connection per poll; its keep-alive asks once and idles."""
    lab = cluster.lab
    live, backup = (str(lab.host(n).address) for n in SERVERS)
    plan = {
        "live->backup": ("live", backup), "client->live": (CLIENT, live), "client->backup": (CLIENT, backup)
    }
    polls = {
        name: ClientLoad(lab, host, target, cluster.workdir / f"monitor-{name.replace('>', '')}",
                         interval_ms=MONITOR_INTERVAL_MS, keepalive_interval_ms=60_000.0, duration_s=60,
                         max_requests=600)
        for name, (host, target) in plan.items()
    }  # fmt: skip
    started: list[ClientLoad] = []
    try:
        for poll in polls.values():
            poll.start()
            started.append(poll)
        yield polls
    finally:
        for poll in started:
            poll.stop()


def firewall_drops_vip(cluster: LabCluster) -> None:
    """backup's firewall mistake: TCP to VIP:80 dropped on input, its own address still served."""
    rules = (
        f"table inet {FIREWALL_TABLE} {{\n"
        "  counter dropped {}\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    ip daddr {VIP_IP} tcp dport 80 counter name dropped drop\n"
        "  }\n"
        "}\n"
    )
    cluster.lab.run("backup", ["nft", "-f", "-"], input=rules, timeout=10)


def dropped_by_firewall(cluster: LabCluster) -> int:
    argv = ["nft", "-j", "list", "counter", "inet", FIREWALL_TABLE, "dropped"]
    listing = json.loads(cluster.lab.run("backup", argv, timeout=10).stdout)
    return next(int(i["counter"]["packets"]) for i in listing["nftables"] if "counter" in i)


def swap_under_load(cluster: LabCluster) -> tuple[dict[str, Any], list[Request]]:
    """The standard client load on the VIP, `failover swap` from live's CLI in the middle of it."""
    load = client_load(cluster)
    time.sleep(WARM_S)
    outcome = cluster.move("swap", via="live")
    time.sleep(SETTLE_S)
    load.stop()
    return outcome, load.records()


def says_how_it_knew(evidence: dict[str, object], log_format: str) -> None:
    """The proof names how the address asked was known; called last, after everything else held."""
    assert evidence["destination"] == DESTINATION[log_format], evidence


def some_traffic(cluster: LabCluster) -> None:
    load = client_load(cluster, duration_s=5.0)
    time.sleep(SETTLE_S)
    load.stop()


def served_throughout(polls: dict[str, ClientLoad]) -> None:
    """Every monitor got its answers all along: to them, both nodes looked fine the whole time."""
    for name, poll in polls.items():
        total = summarize(poll.records())
        target = name.rsplit(">", 1)[1]
        assert total.requests >= 20 and total.failed == 0, (name, total)
        assert set(total.served_by) == {target}, (name, total)


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_swap_to_a_backup_clients_cannot_reach_rolls_back_despite_monitors(log_format: str) -> None:
    with proof_lab(log_format) as cluster:
        firewall_drops_vip(cluster)
        with monitors(cluster) as polls:
            outcome, records = swap_under_load(cluster)
        served_throughout(polls)
        assert outcome["exit_code"] == 1 and outcome["rolled_back"] is True, outcome
        assert outcome["confirmed"] is False, outcome
        assert cluster.holders() == ["live"]
        assert cluster.lab.neighbour_mac(CLIENT, VIP_IP) == cluster.lab.host("live").mac
        assert dropped_by_firewall(cluster) > 0  # the clients' SYNs to the VIP did reach backup
        reason = str(outcome["reason"])
        found = DEADLINE.match(reason)
        assert found is not None and reason.endswith(" ms"), reason
        deadline_ms, rate = int(found.group(1)), int(found.group(2))
        # The deadline followed live's rate (the load began 2 s ago), far below confirm.within_s (10 s).
        assert rate >= 20 and 300 <= deadline_ms <= 1000, reason
        steps = {s["step"]: s["ms"] for s in outcome["steps"]}
        rollback_ms = steps["reclaimed"] - steps["target-claimed"]
        assert rollback_ms < deadline_ms + 1000, steps
        # The source's outcome carries the target's proof facts: what was counted, how it was known.
        evidence = outcome["evidence"]
        assert isinstance(evidence, dict), outcome
        assert evidence["requests"] == 0 and evidence["clients"] == [], evidence
        assert evidence["to"] == VIP_IP, evidence
        assert abs(evidence["deadline_ms"] - deadline_ms) <= 0.5, evidence
        assert evidence["deadline_why"] in reason, evidence
        # Clients: what they began between backup's claim and live's reclaim waited for a SYN retry
        # (1 s) and was served by live then; nothing failed, nothing begun after the reclaim waited.
        claim = claim_at(cluster.agent_events("backup"), 0.0, float("inf"))
        reclaim = claim_at(cluster.agent_events("live"), 0.0, float("inf"))
        assert claim is not None and reclaim is not None and claim < reclaim
        total = summarize(records)
        slow = [r for r in records if not r.ok or r.end - r.start >= 1.0]
        late = [(round(r.start - reclaim, 3), r.served_by) for r in slow if r.start > reclaim + 0.1]
        print(f"{log_format}: deadline {deadline_ms} ms, claim to reclaim {(reclaim - claim) * 1000:.0f} ms, "
              f"{total.requests} requests, {total.failed} failed, {len(slow)} waited >= 1 s")
        assert total.failed == 0 and not late, (total, late)
        assert total.served_by.get("backup", 0) == 0  # no client ever got an answer from backup at the VIP
        says_how_it_knew(evidence, log_format)


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_swap_with_monitors_polling_confirms_by_client_requests_to_the_vip(log_format: str) -> None:
    with proof_lab(log_format) as cluster:
        with monitors(cluster) as polls:
            outcome, records = swap_under_load(cluster)
        served_throughout(polls)
        assert outcome["exit_code"] == 0 and outcome["confirmed"] is True, outcome
        assert cluster.holders() == ["backup"]
        evidence = outcome["evidence"]
        assert isinstance(evidence, dict), outcome
        assert evidence["requests"] >= 3
        # Only the client's requests to the VIP counted: not live's polls, nor its agent's health checks.
        assert evidence["clients"] == [str(cluster.lab.host(CLIENT).address)], evidence
        assert evidence["to"] == VIP_IP, evidence
        assert evidence["canary"] is False and 300 <= evidence["deadline_ms"] <= 1000, evidence
        assert "live served" in evidence["deadline_why"], evidence
        total = summarize(records)
        claim = claim_at(cluster.agent_events("backup"), 0.0, float("inf"))
        assert claim is not None
        lost = [(round(r.start - claim, 3), round(r.end - r.start, 3), r.served_by)
                for r in records if not r.ok]  # fmt: skip
        assert total.failed == 0, (total, "failed (start after the claim, took, error):", lost)
        assert total.served_by.get("backup", 0) > 0
        says_how_it_knew(evidence, log_format)


def test_check_names_the_proof_of_each_format_and_the_line_that_gives_the_stronger() -> None:
    with lab_cluster() as cluster:
        some_traffic(cluster)  # lines in live's log to judge by
        weaker = failover_cli(cluster, "live", "check", "-c", str(cluster.config_path), "--node", "live",
                              "--json")
        proof = next(f for f in json.loads(weaker.stdout)["findings"] if f["check"] == "proof")
        # nginx's own combined format, nft on this host: the kernel witness, the weaker of the two.
        assert proof["level"] == "warn" and PROOF_BY_WITNESS in proof["detail"], proof
        assert NGINX_COMBINED_SERVER in proof["fix"] and "confirm.log_format: combined_server" in proof["fix"]
        # Doing what it says (the lab's nginx takes that very line) gives the stronger proof.
        use_nginx_log_format(cluster, "combined_server")
        doc = cluster.document()
        doc["confirm"]["log_format"] = "combined_server"
        cluster.write_config(doc)
        some_traffic(cluster)
        stronger = failover_cli(cluster, "live", "check", "-c", str(cluster.config_path), "--node", "live",
                                "--json")
        proof = next(f for f in json.loads(stronger.stdout)["findings"] if f["check"] == "proof")
        assert proof["level"] == "ok" and PROOF_BY_LOG in proof["detail"] and not proof.get("fix"), proof
