"""Hooks: programs run in order with a timeout and the event's environment; before_release in the core."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from failover import protocol
from failover.hooks import run_all, run_hook
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].split()[0] != "Z"


def test_a_timed_out_hook_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; wait"
    started = time.monotonic()
    ok, details = asyncio.run(run_hook(("/bin/sh", "-c", script), {}, 0.5))
    assert not ok and "timed out" in details
    assert time.monotonic() - started < 5
    child = int(pids.read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "the hook's background child outlived the timeout"


def test_each_hook_runs_in_a_session_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ids"
    code = f"import os; open({str(out)!r}, 'w').write(f'{{os.getsid(0)}} {{os.getpgrp()}} {{os.getpid()}}')"
    ok, _ = asyncio.run(run_hook((sys.executable, "-c", code), {}, 5.0))
    sid, pgrp, pid = map(int, out.read_text().split())
    assert ok and sid == pgrp == pid != os.getsid(0)


def test_a_hook_that_leaves_a_child_in_the_background_is_done_when_it_exits(tmp_path: Path) -> None:
    """The child keeps the hook's stdout open; waiting for EOF would wait for the child (60 s)."""
    pids = tmp_path / "pids"
    script = f"echo starting the helper; sleep 60 & echo $! > {pids}; echo done"
    started = time.monotonic()
    ok, details = asyncio.run(run_hook(("/bin/sh", "-c", script), {}, 10.0))
    took = time.monotonic() - started
    os.kill(int(pids.read_text()), signal.SIGKILL)
    assert ok and details.endswith(": exit 0: done"), details
    assert took < 3, f"{took:.1f} s: waited for the background child"


def test_hooks_get_a_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    out = tmp_path / "env"
    code = f"import os, json; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"
    ok, _ = asyncio.run(run_hook((sys.executable, "-c", code), {"FAILOVER_EVENT": "confirmed"}, 5.0))
    env = json.loads(out.read_text())
    assert ok
    assert {k for k in env if k not in ("LC_CTYPE",)} == {"FAILOVER_EVENT", "PATH"}, env
    assert env["PATH"] == os.environ["PATH"]


def test_a_peer_supplied_nul_or_surrogate_never_breaks_execve(tmp_path: Path) -> None:
    out = tmp_path / "reason"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['FAILOVER_REASON'])"
    env = {"FAILOVER_EVENT": "rolled_back", "FAILOVER_REASON": "peer said a\x00b \ud800 c"}
    ok, details = asyncio.run(run_hook((sys.executable, "-c", code), env, 5.0))
    assert ok, details
    assert out.read_text() == "peer said a\ufffdb \ufffd c"


def test_a_flood_of_output_is_kept_to_its_tail() -> None:
    code = "import sys; sys.stdout.write('x' * 10_000_000 + '\\nlast line\\n')"
    ok, details = asyncio.run(run_hook((sys.executable, "-c", code), {}, 10.0))
    assert ok and details.endswith(": exit 0: last line"), details[-100:]


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
