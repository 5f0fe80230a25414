"""The one-shot tools and the hooks for real, in the lab: announce, probe, after_claim, confirmed,
rolled_back and takeover.

What is proved is read from the world: the client's neighbour table (announce), live's MAC from the CLI
run in backup's namespace (probe), and for each hook a line its program wrote itself: its FAILOVER_*
environment and the network namespace it ran in, compared with the lab host's own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from failover.lab.cluster import LabCluster

from .conftest import VIP_IP, client_load, crash, failover_cli, fetch, lab_cluster

pytestmark = pytest.mark.root

SETTLE_S = 0.5
WRONG_MAC = "02:00:5e:00:53:99"  # locally administered; nobody in the lab has it
HOOK_EVENTS = ("after_claim", "confirmed", "rolled_back", "takeover")

# Appends one JSON line per run: its FAILOVER_* variables and its network namespace. One write call on
# an O_APPEND file, so the two agents' lines never interleave.
HOOK_SCRIPT = """\
import json, os, sys
record = {k: v for k, v in os.environ.items() if k.startswith("FAILOVER_")}
record["netns"] = os.readlink("/proc/self/ns/net")
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
try:
    os.write(fd, (json.dumps(record) + "\\n").encode())
finally:
    os.close(fd)
"""


def hooks_writing_to(tmp_path: Path, **extra: Any) -> tuple[dict[str, Any], Path]:
    """Hooks for every event but before_release, each running the recording script; and its file."""
    script = tmp_path / "record_hook.py"
    script.write_text(HOOK_SCRIPT)
    out = tmp_path / "hooks.jsonl"
    argv = [sys.executable, str(script), str(out)]
    return {"hooks": {event: [argv] for event in HOOK_EVENTS}, **extra}, out


def hook_runs(out: Path) -> list[dict[str, str]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def runs_of(out: Path, event: str) -> list[dict[str, str]]:
    return [r for r in hook_runs(out) if r.get("FAILOVER_EVENT") == event]


def fired(out: Path, **counts: int) -> bool:
    """Whether each event's hook has run at least that many times."""
    return all(len(runs_of(out, event)) >= n for event, n in counts.items())


def netns_id(cluster: LabCluster, host: str) -> str:
    return cluster.lab.run(host, ["readlink", "/proc/self/ns/net"]).stdout.strip()


def assert_ran_on(cluster: LabCluster, run: dict[str, str], node: str) -> None:
    assert run["FAILOVER_NODE"] == node, run
    assert run["netns"] == netns_id(cluster, node), (run, node)
    assert run["FAILOVER_CLUSTER"] == "lab" and run["FAILOVER_VIP"].startswith(VIP_IP + "/"), run
    assert run["FAILOVER_PEER"] == ("backup" if node == "live" else "live"), run


# --- announce and probe --------------------------------------------------------------------------------


def test_announce_moves_a_clients_stale_neighbour_entry() -> None:
    # One announcement round at the agents' start, long over before the test looks.
    with lab_cluster({"announce": {"schedule_ms": [0]}}) as cluster:
        live_mac = cluster.lab.host("live").mac
        assert fetch(cluster) == "live"
        client_if = cluster.lab.host("client").interface
        cluster.lab.run("client", ["ip", "neigh", "replace", VIP_IP, "lladdr", WRONG_MAC, "dev", client_if,
                                   "nud", "stale"])
        # Nothing else moves it back meanwhile: only the command under test may.
        time.sleep(SETTLE_S)
        assert cluster.lab.neighbour_mac("client", VIP_IP) == WRONG_MAC

        config = str(cluster.config_path)
        done = failover_cli(cluster, "live", "announce", "-c", config, "--node", "live", "--json")
        assert done.returncode == 0, done.stderr
        sent = json.loads(done.stdout)
        assert sent["vip"] == VIP_IP and sent["mac"] == live_mac and sent["frames_sent"] >= 1, sent
        assert cluster.lab.wait_until(lambda: cluster.lab.neighbour_mac("client", VIP_IP) == live_mac, 2.0), (
            cluster.lab.neighbour_mac("client", VIP_IP)
        )
        assert fetch(cluster) == "live"


def test_probe_from_backup_names_lives_mac(cluster: LabCluster) -> None:
    config = str(cluster.config_path)
    done = failover_cli(cluster, "backup", "probe", "-c", config, "--node", "backup", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["vip"] == VIP_IP and found["interface"] == "eth0", found
    assert [m.lower() for m in found["answered_by"]] == [cluster.lab.host("live").mac.lower()], found
    assert found["probe_ms"] > 0
    human = failover_cli(cluster, "backup", "probe", "-c", config, "--node", "backup")
    assert human.returncode == 0 and f"{VIP_IP}: answered by" in human.stdout, human


# --- hooks ----------------------------------------------------------------------------------------------


def test_after_claim_and_confirmed_hooks_run_on_the_new_holder(tmp_path: Path) -> None:
    overrides, out = hooks_writing_to(tmp_path)
    with lab_cluster(overrides) as cluster:
        load = client_load(cluster)
        try:
            time.sleep(SETTLE_S)
            outcome = cluster.move("swap", via="live")
        finally:
            load.stop()
        assert outcome["exit_code"] == 0 and outcome["confirmed"] is True, outcome
        epoch = str(outcome["epoch"])
        assert cluster.lab.wait_until(lambda: fired(out, confirmed=1, after_claim=1), 5.0), hook_runs(out)
        [claimed] = runs_of(out, "after_claim")
        assert_ran_on(cluster, claimed, "backup")
        assert claimed["FAILOVER_MOVE"] == "swap" and claimed["FAILOVER_EPOCH"] == epoch, claimed
        [confirmed] = runs_of(out, "confirmed")
        assert_ran_on(cluster, confirmed, "backup")
        assert (confirmed["FAILOVER_MOVE"], confirmed["FAILOVER_SOURCE"], confirmed["FAILOVER_TARGET"]) == (
            "swap", "live", "backup"
        ), confirmed
        assert confirmed["FAILOVER_EPOCH"] == epoch
        time.sleep(SETTLE_S)
        # Nothing else fired: no rollback, no takeover, and nothing on live.
        assert sorted(r["FAILOVER_EVENT"] for r in hook_runs(out)) == ["after_claim", "confirmed"]


def test_rolled_back_hook_on_the_old_holder_then_takeover_hook_on_the_survivor(tmp_path: Path) -> None:
    # backup's web server logs nowhere its agent looks: no proof can come, not even a canary's (a site
    # without clients, like this one, is proven by live's canary requests).
    overrides, out = hooks_writing_to(tmp_path, confirm={"within_s": 1})
    with lab_cluster(overrides) as cluster:
        doc = cluster.document()
        doc["nodes"]["backup"]["access_log"] = str(cluster.workdir / "backup" / "not-the-access.log")
        cluster.write_config(doc)
        for name in ("live", "backup"):
            cluster.stop_agent(name)
            cluster.start_agent(name)
        cluster.wait_ready()
        time.sleep(SETTLE_S)
        outcome = cluster.move("swap", via="live")
        assert outcome["exit_code"] == 1 and outcome["rolled_back"] is True, outcome
        assert cluster.holders() == ["live"]
        assert cluster.lab.wait_until(lambda: fired(out, rolled_back=1, after_claim=2), 5.0), hook_runs(out)
        # On live, the reclaim's after_claim runs before the rolled_back it brought.
        on_live = [r["FAILOVER_EVENT"] for r in hook_runs(out) if r["FAILOVER_NODE"] == "live"]
        assert on_live == ["after_claim", "rolled_back"], on_live
        [rolled_back] = runs_of(out, "rolled_back")
        assert_ran_on(cluster, rolled_back, "live")
        assert (rolled_back["FAILOVER_MOVE"], rolled_back["FAILOVER_SOURCE"],
                rolled_back["FAILOVER_TARGET"]) == ("swap", "live", "backup"), rolled_back
        assert "rolled back to live" in rolled_back["FAILOVER_REASON"], rolled_back
        assert rolled_back["FAILOVER_EPOCH"] == str(outcome["epoch"])
        # Both claims ran after_claim where they happened: backup's for the swap, live's for the reclaim.
        claims = {(r["FAILOVER_NODE"], r["FAILOVER_MOVE"]) for r in runs_of(out, "after_claim")}
        assert claims == {("backup", "swap"), ("live", "rollback")}, runs_of(out, "after_claim")
        assert not runs_of(out, "confirmed") and not runs_of(out, "takeover")

        live_netns = netns_id(cluster, "live")  # read before the crash; the namespace stays
        crash(cluster, "live")
        assert cluster.lab.wait_until(lambda: fired(out, takeover=1, after_claim=3), 10.0), hook_runs(out)
        [takeover] = runs_of(out, "takeover")
        assert_ran_on(cluster, takeover, "backup")
        assert takeover["netns"] != live_netns
        assert (takeover["FAILOVER_MOVE"], takeover["FAILOVER_SOURCE"], takeover["FAILOVER_TARGET"]) == (
            "takeover", "live", "backup"
        ), takeover
        # The dead live still has the VIP on its downed eth0; what counts is that backup claimed it.
        assert "backup" in cluster.holders()
        assert ("backup", "takeover") in {
            (r["FAILOVER_NODE"], r["FAILOVER_MOVE"]) for r in runs_of(out, "after_claim")
        }
        on_backup = [r["FAILOVER_EVENT"] for r in hook_runs(out) if r["FAILOVER_NODE"] == "backup"]
        assert on_backup[-2:] == ["after_claim", "takeover"], on_backup
