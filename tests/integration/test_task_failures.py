"""A task of the real agent that raises is noticed: logged with its name, counted in status, acted on.

The agents run in the lab with the test fault `task-raises:<coroutine>` (FAILOVER_TEST_FAULT), which makes
that task raise at its start as an adapter bug would. A task of one move (the old holder's straggler
reporter) is logged as `task-failed` and counted in `status["task_failures"]`, and the move still
finishes. A task the agent cannot run without (the VIP's netlink watch) stops the agent with an error
(exit 2, systemd's Restart=on-failure starts it again), and the VIP stays where it was.
"""

from __future__ import annotations

import time

import pytest

from failover.agent import FAULT_ENV
from failover.lab.client import ClientLoad
from failover.lab.cluster import LabCluster

from .conftest import CLIENT, VIP_IP, events, restart_agent, vip_holders

pytestmark = pytest.mark.root


def test_a_move_task_that_raises_is_logged_and_counted_and_the_swap_finishes(cluster: LabCluster) -> None:
    restart_agent(cluster, "live", env={FAULT_ENV: "task-raises:_report_stragglers"})
    assert cluster.status("live")["task_failures"] == 0
    load = ClientLoad(cluster.lab, CLIENT, VIP_IP, cluster.workdir / "client", duration_s=30)
    load.start()  # the target's access log confirms the move only when clients arrive
    time.sleep(0.5)
    outcome = cluster.move("swap", via="live")
    load.stop()
    assert outcome["exit_code"] == 0, outcome
    assert vip_holders(cluster) == ["backup"]
    [failed] = events(cluster, "live", "task-failed")
    assert failed["task"] == "_report_stragglers", failed
    assert "injected test fault" in failed["error"], failed
    assert cluster.status("live")["task_failures"] == 1
    assert cluster.agents["live"].poll() is None  # one move's task: the agent goes on


def test_an_essential_task_that_raises_stops_the_agent_with_an_error_and_moves_nothing(
    cluster: LabCluster,
) -> None:
    cluster.stop_agent("backup")
    cluster.start_agent("backup", env={FAULT_ENV: "task-raises:_watch_vip"})
    proc = cluster.agents["backup"]
    assert cluster.lab.wait_until(lambda: proc.poll() is not None, 15.0), cluster.agent_log("backup")
    assert proc.returncode == 2, cluster.agent_log("backup")
    [failed] = events(cluster, "backup", "task-failed")
    assert failed["task"] == "_watch_vip", failed
    [stopping] = events(cluster, "backup", "agent-stopping")
    assert "_watch_vip ended" in stopping["reason"], stopping
    assert "a restart is safe" in cluster.agent_log("backup")  # the one line the CLI printed
    assert vip_holders(cluster) == ["live"]
    assert cluster.status("live")["last_takeover"] is None
    cluster.agents.pop("backup")
    cluster.start_agent("backup")  # as systemd would
    cluster.wait_ready()
    assert vip_holders(cluster) == ["live"]
