"""Hooks: programs run in order with a timeout and the event's environment; before_release in the core."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

from failover import protocol
from failover.hooks import run_all
from failover.protocol.events import BeforeReleaseDone
from tests.nodepair import NodePair


def test_hooks_run_in_order_with_the_event_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write = f"import os; open({str(out)!r}, 'a').write(os.environ['FAILOVER_EVENT'] + ' ' + '%s\\n')"
    hooks = ((sys.executable, "-c", write % "first"), (sys.executable, "-c", write % "second"))
    ok, details = asyncio.run(run_all(hooks, {"FAILOVER_EVENT": "confirmed"}, 5.0))
    assert ok and len(details) == 2
    assert out.read_text() == "confirmed first\nconfirmed second\n"


def test_the_first_failure_stops_the_list_and_says_why(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hooks = (
        (sys.executable, "-c", "print('load balancer said no'); raise SystemExit(3)"),
        (sys.executable, "-c", f"open({str(marker)!r}, 'w')"),
    )
    ok, details = asyncio.run(run_all(hooks, {}, 5.0))
    assert not ok
    assert details == [f"{sys.executable}: exit 3: load balancer said no"]
    assert not marker.exists()


def test_a_hook_that_hangs_is_killed_at_its_timeout() -> None:
    ok, details = asyncio.run(run_all(((sys.executable, "-c", "import time; time.sleep(30)"),), {}, 0.3))
    assert not ok and "timed out" in details[0]


def test_missing_program_fails_without_raising() -> None:
    ok, details = asyncio.run(run_all((("/nonexistent/hook",),), {}, 1.0))
    assert not ok and details[0].startswith("/nonexistent/hook")


# --- the core: before_release comes before anything changes --------------------------------------------


def _with_before_release(pair: NodePair, budget: float = 5.0, answer: bool | None = None) -> NodePair:
    """Both nodes with before_release hooks; `answer` None: the test answers for them."""
    for node in pair.nodes.values():
        node.setup = dataclasses.replace(node.setup, before_release=budget)
    pair.before_release_ok = answer
    pair.run(0.3)
    return pair


def test_failing_before_release_aborts_before_anything_changed() -> None:
    pair = _with_before_release(NodePair())
    live = pair.nodes["live"]
    cid = live.command("swap", pair.now)
    asked = [a for a in live.pop_actions() if isinstance(a, protocol.BeforeRelease)]
    assert [(a.move, a.target) for a in asked] == [("swap", "backup")]
    pair.run(1.0)  # hooks take their time: nothing is sent to the target meanwhile
    assert pair.vip_on == {"live"} and pair.nodes["backup"].run is None
    live.handle(BeforeReleaseDone(asked[0].epoch, False, "/usr/local/bin/lb-drain: exit 1"), pair.now)
    actions = live.pop_actions()
    finished = [a for a in actions if isinstance(a, protocol.Finished) and a.command == cid]
    assert len(finished) == 1 and not finished[0].outcome.ok
    assert "before_release hook failed" in finished[0].outcome.reason
    assert "nothing changed" in finished[0].outcome.reason
    assert not any(isinstance(a, protocol.Release) for a in actions)
    pair.run(1.0)
    assert pair.vip_on == {"live"}


def test_passing_before_release_goes_on_with_the_swap() -> None:
    pair = _with_before_release(NodePair(), answer=True)
    cid = pair.command("live", "swap")
    pair.run(0.2)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok, out
    assert [s for s, _ in out.steps][:2] == ["preflight", "before-release-hooks"]
    assert pair.vip_on == {"backup"}


def test_target_that_asked_hears_the_hook_failure() -> None:
    pair = _with_before_release(NodePair())
    cid = pair.command("backup", "swap")
    pair.run(0.05)
    live = pair.nodes["live"]
    assert live.run is not None and live.run.state == "before-release"
    live.handle(BeforeReleaseDone(live.run.epoch, False, "exit 1"), pair.now)
    pair.run(0.2)
    out = pair.outcome("backup", cid)
    assert out is not None and not out.ok and "before_release hook failed" in out.reason, out
    assert pair.vip_on == {"live"}


def test_hooks_that_never_answer_time_out_and_nothing_changes() -> None:
    pair = _with_before_release(NodePair(), budget=0.5)
    cid = pair.command("live", "swap")
    pair.run(3.0)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and "did not finish in time" in out.reason, out
    assert pair.vip_on == {"live"}
