"""Operator tools for real, in the lab: check, the journal across a SIGKILL, before_release, unswap."""

from __future__ import annotations

import json
import signal
import time

import pytest

from failover import journal
from failover.config import load_config
from failover.lab.cluster import LabCluster

from .conftest import client_load, failover_cli, lab_cluster

pytestmark = pytest.mark.root

SETTLE_S = 0.5


def test_check_reports_each_bad_sysctl_with_its_fix(cluster: LabCluster) -> None:
    config = str(cluster.config_path)
    for setting in ("all.arp_ignore=0", "eth0.arp_ignore=0", "all.promote_secondaries=0",
                    "eth0.promote_secondaries=0"):
        cluster.lab.run("backup", ["sysctl", "-q", "-w", f"net.ipv4.conf.{setting}"])
    done = failover_cli(cluster, "backup", "check", "-c", config, "--node", "backup", "--json")
    assert done.returncode == 1, done
    report = json.loads(done.stdout)
    failed = {f["check"]: f for f in report["findings"] if f["level"] == "FAIL"}
    assert set(failed) >= {"net.ipv4.conf.eth0.arp_ignore", "net.ipv4.conf.eth0.promote_secondaries"}
    fix = failed["net.ipv4.conf.eth0.arp_ignore"]["fix"]
    assert fix.startswith("sysctl -w net.ipv4.conf.eth0.arp_ignore=1")
    assert "promote_secondaries=1" in failed["net.ipv4.conf.eth0.promote_secondaries"]["fix"]
    # The other host's namespace was not touched: its own settings are judged on their own.
    human = failover_cli(cluster, "live", "check", "-c", config, "--node", "live")
    assert "arp_ignore" in human.stdout and "FAIL  net.ipv4.conf.eth0.arp_ignore" not in human.stdout


def test_journal_survives_sigkill_right_after_a_swap_and_unswap_says_where_the_vip_came_from(
    cluster: LabCluster,
) -> None:
    config = str(cluster.config_path)
    load = client_load(cluster)
    try:
        time.sleep(SETTLE_S)
        done = failover_cli(cluster, "live", "swap", "-c", config, "--node", "live", "--json",
                            "--reason", "kernel upgrade on live")
        assert done.returncode == 0, done.stderr
        epoch = json.loads(done.stdout)["epoch"]
        # No grace: the entry must already be on disk when the CLI heard the outcome.
        cluster.stop_agent("live", signal.SIGKILL)
        for name in ("live", "backup"):
            path = load_config(cluster.config_path).node(name).journal
            entries = journal.read(path)
            assert [(e["kind"], e["epoch"], e["ok"], e["holder"]) for e in entries] == [
                ("swap", epoch, True, "backup")
            ], (name, entries)
        mine = journal.read(load_config(cluster.config_path).node("live").journal)[0]
        assert mine["operator_reason"] == "kernel upgrade on live" and mine["operator"]
        assert mine["steps"] and mine["evidence"]["requests"] >= 1
        history = failover_cli(cluster, "live", "history", "-c", config, "--node", "live", "--json")
        assert history.returncode == 0, history.stderr
        assert [e["epoch"] for e in json.loads(history.stdout)] == [epoch]

        cluster.start_agent("live")
        cluster.wait_ready()
        time.sleep(SETTLE_S)
        # From live, whose journal has the operator's reason (the peer's entry has no reason text).
        done = failover_cli(cluster, "live", "unswap", "-c", config, "--node", "live")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"undoing: swap live -> backup (epoch {epoch})" in done.stdout
        assert "kernel upgrade on live" in done.stdout
    finally:
        load.stop()
    # The old holder finishes once its straggler window (1 s) closed, after the CLI returned.
    backup_journal = load_config(cluster.config_path).node("backup").journal
    assert cluster.lab.wait_until(lambda: len(journal.read(backup_journal)) == 2, 3.0)
    human = failover_cli(cluster, "backup", "history", "-c", config, "--node", "backup", "-n", "1")
    assert "unswap" in human.stdout and "backup -> live" in human.stdout, human.stdout


def test_failing_before_release_hook_leaves_the_vip_in_place() -> None:
    hooks = {"before_release": [["/bin/sh", "-c", "echo load balancer refused; exit 4"]], "timeout_ms": 2000}
    with lab_cluster({"hooks": hooks}) as cluster:
        config = str(cluster.config_path)
        time.sleep(SETTLE_S)
        done = failover_cli(cluster, "backup", "swap", "-c", config, "--node", "backup", "--json")
        assert done.returncode == 1, done
        outcome = json.loads(done.stdout)
        assert "before_release hook failed on live" in outcome["reason"], outcome
        assert "load balancer refused" in outcome["reason"]
        assert cluster.holders() == ["live"]
        assert cluster.status("live")["holds_vip_netlink"] is True
        entries = journal.read(load_config(cluster.config_path).node("backup").journal)
        assert [(e["kind"], e["ok"]) for e in entries] == [("swap", False)]
