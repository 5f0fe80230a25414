"""`swap --dry-run` and the metrics endpoint for real, in the lab.

A dry run must leave everything as it was: the VIP (netlink, on eth0 and lo), the nft ruleset, both
agents' epochs and both journals. The metrics endpoint listens on 127.0.0.1 inside each server's
namespace and is scraped from there with curl.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from failover.config import load_config
from failover.lab.cluster import SERVERS, LabCluster

from .conftest import client_load, failover_cli, lab_cluster

pytestmark = pytest.mark.root

SETTLE_S = 0.5
METRICS = "127.0.0.1:9405"


def world(cluster: LabCluster) -> dict[str, Any]:
    """What a move would change: addresses (eth0 and lo), nft rules, epochs, journals, saved state."""
    config = load_config(cluster.config_path)
    seen: dict[str, Any] = {"holders": cluster.holders()}
    for name in SERVERS:
        node = config.node(name)
        status = cluster.status(name)
        addrs = cluster.lab.run(name, ["ip", "-br", "addr", "show"]).stdout
        nft = (cluster.lab.run(name, ["nft", "list", "ruleset"], check=False).stdout
               if shutil.which("nft") else "")
        seen[name] = {
            "addresses": sorted(addrs.split("\n")),
            "nft": nft,
            "epoch": status["epoch"],
            "held_epoch": status["held_epoch"],
            "holds_vip_netlink": status["holds_vip_netlink"],
            "last_move": status["last_move"],
            "journal": node.journal.read_bytes() if node.journal.exists() else None,
            "state": (node.state_dir / "state.json").read_bytes()
            if (node.state_dir / "state.json").exists() else None,
        }
    return seen


def dry_run(cluster: LabCluster, via: str, move: str = "swap", *extra: str) -> Any:
    config = str(cluster.config_path)
    return failover_cli(cluster, via, move, "-c", config, "--node", via, "--dry-run", *extra)


def test_dry_run_changes_nothing_on_either_host(cluster: LabCluster) -> None:
    time.sleep(SETTLE_S)
    before = world(cluster)
    assert before["holders"] == ["live"]
    for via in ("live", "backup"):
        done = dry_run(cluster, via)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert out.startswith("dry run: swap live -> backup; nothing was changed"), out
        steps = [line.split()[1] for line in out.splitlines() if line.strip()[:2] in
                 {f"{i}." for i in range(1, 10)}]
        assert steps == ["preflight", "prepare", "release", "claim", "announce", "confirm", "stragglers",
                         "done"]
        for node, check in (("live", "VIP on this host"), ("backup", "VIP not on this host"),
                            ("backup", "health_url"), ("backup", "access_log"), ("live", "key")):
            assert any(line.split()[:2] == ["ok", node] and check in line for line in out.splitlines()), (
                node, check, out)
        assert "all checks passed" in out
    # Refused by the core's own rule, still with nothing changed and nothing journaled.
    done = dry_run(cluster, "live", "unswap", "--json")
    assert done.returncode == 1, done
    plan = json.loads(done.stdout)
    assert plan["dry_run"] and not plan["ok"]
    assert plan["reason"] == "live: target is home: the VIP is already on its home node live"
    time.sleep(0.3)  # anything a dry run set off would show by now
    assert world(cluster) == before


def test_dry_run_names_the_failing_health_check_and_changes_nothing(cluster: LabCluster) -> None:
    time.sleep(SETTLE_S)
    cluster.nginx["backup"].stop()
    before = world(cluster)
    done = dry_run(cluster, "live", "swap", "--json")
    assert done.returncode == 1, done
    plan = json.loads(done.stdout)
    failed = [(c["node"], c["check"]) for c in plan["checks"] if c["level"] == "FAIL"]
    assert failed == [("backup", "health_url")], plan["checks"]
    assert plan["reason"].startswith("backup: health_url: http://"), plan["reason"]
    human = dry_run(cluster, "backup")
    assert human.returncode == 1
    assert "FAIL  backup" in human.stdout and "health_url" in human.stdout
    assert "fix: start the web server on backup" in human.stdout
    assert "swap would not go ahead: 1 check(s) failed, first: backup: health_url" in human.stderr
    assert world(cluster) == before


def scrape(cluster: LabCluster, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics of name's agent, scraped inside its namespace: {(sample, labels): value}."""
    done = cluster.lab.run(name, ["curl", "-s", "--max-time", "3", f"http://{METRICS}/metrics"], check=False,
                           timeout=10)
    assert done.returncode == 0, (name, done.stderr)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }


def test_metrics_follow_a_swap() -> None:
    with lab_cluster({"metrics": {"listen": METRICS}}) as cluster:
        time.sleep(SETTLE_S)
        before = {name: scrape(cluster, name) for name in SERVERS}
        assert before["live"][("failover_vip_held", ())] == 1
        assert before["backup"][("failover_vip_held", ())] == 0
        assert before["live"][("failover_role", (("role", "holder"),))] == 1
        assert before["backup"][("failover_peer_alive", ())] == 1
        assert 0 <= before["backup"][("failover_peer_heartbeat_age_ms", ())] < 250
        assert ("failover_moves_total", (("move", "swap"), ("outcome", "ok"))) not in before["live"]
        load = client_load(cluster)
        try:
            time.sleep(SETTLE_S)
            done = failover_cli(cluster, "live", "swap", "-c", str(cluster.config_path), "--node", "live",
                                "--json")
            assert done.returncode == 0, done.stdout + done.stderr
            outcome = json.loads(done.stdout)
            assert outcome["confirmed"] is True
        finally:
            load.stop()
        after = {name: scrape(cluster, name) for name in SERVERS}
        assert after["live"][("failover_vip_held", ())] == 0
        assert after["backup"][("failover_vip_held", ())] == 1
        assert after["backup"][("failover_role", (("role", "holder"),))] == 1
        for name in SERVERS:
            assert after[name][("failover_moves_total", (("move", "swap"), ("outcome", "ok")))] == 1, name
            for counter in ("failover_heartbeats_sent_total", "failover_heartbeats_received_total"):
                assert after[name][(counter, ())] > before[name][(counter, ())], (name, counter)
            assert after[name][("failover_up", ())] == 1
        unserved = after["live"][("failover_last_move_unserved_ms", ())]
        assert unserved == pytest.approx(outcome["unserved_ms"], abs=0.01)
        assert after["live"][("failover_last_move_duration_ms", ())] > 0
        assert after["backup"][("failover_garp_frames_sent_total", ())] >= 2  # at least the first round
        assert after["live"][("failover_epoch", ())] == outcome["epoch"]
