"""The lab itself: real namespaces, real nginx, real traffic (root), plus the pure load summaries."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failover.lab.client import ClientLoad, Request, first_served_by, load_records, summarize
from failover.lab.netns import VIP, Lab, LabError, cleanup_prefix, new_prefix
from failover.lab.nginx import PROBE_USER_AGENT, Nginx

REPO = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 `ip` is not installed")

# combined: $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$referer" "$ua"
COMBINED = re.compile(r'^(\S+) - (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$')


def netns_with(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {e["name"] for e in json.loads(out or "[]") if e["name"].startswith(f"{prefix}-")}


def root_snapshot() -> tuple[list[Any], list[Any]]:
    links = json.loads(
        subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    )
    addrs = json.loads(
        subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    )
    link_view = sorted(
        (link["ifindex"], link["ifname"], link.get("address"), link.get("master"), link.get("link_type"))
        for link in links
    )
    addr_view = sorted(
        (a["ifname"], i.get("local"), i.get("prefixlen")) for a in addrs for i in a.get("addr_info", [])
    )
    return link_view, addr_view


# --- pure: summarize / first_served_by ----------------------------------------------------------------


def req(start: float, end: float, ok: bool = True, who: str = "live") -> Request:
    return Request(start, end, ok, who if ok else "timeout")


def test_summarize_empty() -> None:
    s = summarize([])
    assert (s.requests, s.failed, s.stalled_over_1s, s.max_gap_ms, s.served_by) == (0, 0, 0, 0.0, {})


def test_summarize_counts_gaps_stalls_failures() -> None:
    records = [
        req(0.0, 0.01),
        req(0.1, 0.11),
        req(0.2, 2.0, ok=False),  # failures never count as successes or stalls
        req(0.3, 1.3, who="backup"),  # ok but took exactly 1 s: a stall
        req(0.4, 0.41, who="backup"),
        req(1.5, 1.51, who="backup"),
    ]
    s = summarize(records)
    assert s.requests == 6
    assert s.failed == 1
    assert s.stalled_over_1s == 1
    # success ends sorted: 0.01, 0.11, 0.41, 1.3, 1.51 -> largest gap 0.41 -> 1.3
    assert s.max_gap_ms == pytest.approx(890.0)
    assert s.served_by == {"live": 2, "backup": 3}


def test_summarize_window_is_by_start_and_inclusive() -> None:
    records = [req(0.0, 0.5), req(1.0, 1.1), req(2.0, 2.05, ok=False), req(3.0, 3.2), req(4.0, 4.1)]
    s = summarize(records, since=1.0, until=3.0)
    assert (s.requests, s.failed) == (3, 1)
    assert s.max_gap_ms == pytest.approx(2100.0)  # 1.1 -> 3.2; the failure in between is no success
    assert s.served_by == {"live": 2}
    assert summarize(records, since=3.5).requests == 1
    assert summarize(records, until=0.0).requests == 1
    assert summarize(records, since=1.0, until=1.0).max_gap_ms == 0.0  # fewer than two successes


def test_summarize_gap_uses_sorted_end_times() -> None:
    # a slow request ending late must not make the gap negative or hide the real one
    records = [req(0.0, 0.9), req(0.1, 0.11), req(0.2, 0.21), req(0.3, 0.31)]
    assert summarize(records).max_gap_ms == pytest.approx(590.0)


def test_first_served_by() -> None:
    records = [
        req(0.0, 0.1),
        req(0.5, 0.9, who="backup"),
        req(0.6, 0.7, who="backup"),
        req(0.8, 0.8, ok=False),
    ]
    assert first_served_by(records, "backup", after=0.0) == records[2]
    assert first_served_by(records, "backup", after=0.7) == records[1]
    assert first_served_by(records, "backup", after=0.9) is None
    assert first_served_by(records, "nobody", after=0.0) is None


def test_load_records_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "load.json"
    path.write_text(json.dumps({"records": [[1.0, 1.5, True, "live"], [2.0, 4.0, False, "timeout"]],
                                "keepalive": {"requests": 3, "resets": 1}}))  # fmt: skip
    records, keepalive = load_records(path)
    assert records == [Request(1.0, 1.5, True, "live"), Request(2.0, 4.0, False, "timeout")]
    assert keepalive == {"requests": 3, "resets": 1}


# --- the lab: namespaces ------------------------------------------------------------------------------


@needs_root
@needs_ip
@pytest.mark.root
def test_up_builds_topology_and_down_removes_it() -> None:
    before = root_snapshot()
    handler = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    with Lab(("live", "backup", "client")) as lab:
        built = time.monotonic() - started
        p = lab.prefix
        assert re.fullmatch(r"fo[0-9a-f]{6}", p)
        assert netns_with(p) == {f"{p}-br", f"{p}-live", f"{p}-backup", f"{p}-client"}
        assert root_snapshot() == before
        for name, host in lab.hosts.items():
            link = json.loads(lab.run(name, ["ip", "-j", "addr", "show", "dev", "eth0"]).stdout)[0]
            assert link["address"] == host.mac
            assert "UP" in link["flags"]
            locals_ = {i["local"] for i in link["addr_info"]}
            assert {str(host.address), str(host.address6)} <= locals_
            values = lab.run(name, ["sysctl", "-n", "net.ipv4.conf.all.promote_secondaries",
                                    "net.ipv4.conf.eth0.promote_secondaries"]).stdout.split()  # fmt: skip
            assert values == ["1", "1"]
        assert lab.host("client").address6.compressed == "2001:db8:0:1::100"
        ports = json.loads(lab.run("bridge", ["ip", "-j", "link", "show", "master", "br0"]).stdout)
        assert sorted(port["ifname"] for port in ports) == ["vbackup", "vclient", "vlive"]
        bridge_addrs = json.loads(lab.run("bridge", ["ip", "-j", "addr"]).stdout)
        assert [i["local"] for a in bridge_addrs if a["ifname"] != "lo" for i in a.get("addr_info", [])] == []
        assert lab.holders(str(lab.host("backup").address)) == ["backup"]
        assert lab.holders(str(VIP.ip)) == []
        sleeper = lab.popen("live", ["sleep", "30"])
        started = time.monotonic()
    torn = time.monotonic() - started
    assert sleeper.poll() is not None
    assert netns_with(p) == set()
    assert root_snapshot() == before
    assert signal.getsignal(signal.SIGTERM) is handler
    assert built < 5 and torn < 5
    lab.down()  # idempotent


@needs_root
@needs_ip
@pytest.mark.root
def test_down_runs_after_exception_in_with() -> None:
    lab = Lab(("live", "client"))
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert len(netns_with(lab.prefix)) == 3
        raise RuntimeError("boom")
    assert netns_with(lab.prefix) == set()


@needs_root
@needs_ip
@pytest.mark.root
def test_prefix_collision_raises_and_leaves_foreign_namespace() -> None:
    prefix = new_prefix()
    subprocess.run(["ip", "netns", "add", f"{prefix}-live"], check=True)
    try:
        with pytest.raises(LabError, match="exists"), Lab(("live", "client"), prefix=prefix):
            pass
        # what we made (the bridge namespace) is gone; the namespace we did not make is untouched
        assert netns_with(prefix) == {f"{prefix}-live"}
    finally:
        cleanup_prefix(prefix)
    assert netns_with(prefix) == set()


@needs_root
@needs_ip
@pytest.mark.root
@pytest.mark.parametrize("how", ["sigterm", "uncaught-exception"])
def test_teardown_when_the_process_dies(how: str) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from failover.lab.netns import Lab
        lab = Lab(("live", "client"))
        lab.up()
        child = lab.popen("live", ["sleep", "60"])
        print(lab.prefix, child.pid, flush=True)
        if sys.argv[1] == "uncaught-exception":
            raise RuntimeError("no with block, no down(): atexit must clean up")
        time.sleep(20)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, how], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    prefix = ""
    try:
        assert proc.stdout is not None
        prefix, child = proc.stdout.readline().split()
        assert len(netns_with(prefix)) == 3
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        assert rc == (128 + signal.SIGTERM if how == "sigterm" else 1)
        assert netns_with(prefix) == set()
        assert (
            not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if prefix:
            cleanup_prefix(prefix)


# --- the lab: nginx and client load -------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    workdir = tmp_path_factory.mktemp("web-lab")
    with Lab(("live", "backup", "client")) as lab:
        for name in ("live", "backup"):
            Nginx(lab, name, workdir).start()
        yield lab, workdir
    assert netns_with(lab.prefix) == set()


@needs_nginx
@pytest.mark.root
def test_nginx_serves_own_name_and_logs_combined(web_lab: tuple[Lab, Path]) -> None:
    lab, workdir = web_lab
    for name in ("live", "backup"):
        host = lab.host(name)
        for url in (f"http://{host.address}/", f"http://[{host.address6}]/"):
            body = lab.run("client", ["curl", "-sS", "--max-time", "2", "-A", "lab-test", url]).stdout
            assert body == f"{name}\n"
        lines = (workdir / name / "access.log").read_text().splitlines()
        client_lines = [m for m in map(COMBINED.match, lines) if m and m.group(8) == "lab-test"]
        assert [m.group(1) for m in client_lines] == ["203.0.113.100", "2001:db8:0:1::100"]
        assert all(m.group(4) == "GET / HTTP/1.1" and m.group(5) == "200" for m in client_lines)
        assert all(COMBINED.match(line) for line in lines)
        assert any(PROBE_USER_AGENT in line for line in lines)  # the readiness probe is tellable apart
        assert lab.neighbour_mac("client", str(host.address)) == host.mac
    assert lab.neighbour_mac("client", "203.0.113.99") is None


@needs_nginx
@pytest.mark.root
def test_nginx_stop_is_idempotent_and_restartable(web_lab: tuple[Lab, Path]) -> None:
    lab, workdir = web_lab
    nginx = Nginx(lab, "client", workdir)
    nginx.start()
    assert nginx.running()
    nginx.stop()
    nginx.stop()
    assert not nginx.running()
    probe = lab.run(
        "live", ["curl", "-s", "--max-time", "1", f"http://{lab.host('client').address}/"], check=False
    )
    assert probe.returncode != 0


@needs_nginx
@pytest.mark.root
def test_client_load_on_vip(web_lab: tuple[Lab, Path]) -> None:
    lab, workdir = web_lab
    lab.run("live", ["ip", "addr", "add", str(VIP), "dev", "eth0"])
    try:
        assert lab.holders(str(VIP.ip)) == ["live"]
        load = ClientLoad(lab, "client", str(VIP.ip), workdir, interval_ms=5, duration_s=30)
        began = load.start()
        time.sleep(2.0)
        stop_at = time.monotonic()
        load.stop()
        records = load.records()
        keepalive = load.keepalive()
    finally:
        lab.run("live", ["ip", "addr", "del", str(VIP), "dev", "eth0"])
    summary = summarize(records)
    assert 200 <= summary.requests <= 600, summary
    assert summary.failed == 0 and summary.stalled_over_1s == 0
    assert summary.served_by == {"live": summary.requests}
    assert summary.max_gap_ms < 500
    assert all(began <= r.start <= r.end <= stop_at + 3 for r in records)
    assert keepalive["requests"] > 0 and keepalive["resets"] == 0
    half = summarize(records, since=began + 1.0)
    assert 0 < half.requests < summary.requests and half.served_by == {"live": half.requests}
    first = first_served_by(records, "live", after=began)
    assert first is not None and first == min(records, key=lambda r: r.end)
    assert first_served_by(records, "backup", after=began) is None


@needs_nginx
@pytest.mark.root
def test_second_nginx_on_same_host_fails_to_start(web_lab: tuple[Lab, Path]) -> None:
    lab, workdir = web_lab
    clash = Nginx(lab, "live", workdir / "clash")
    with pytest.raises(LabError, match="Address already in use"):
        clash.start()
    assert not clash.running()


@needs_nginx
@pytest.mark.root
def test_client_load_stops_by_itself_at_max_requests(web_lab: tuple[Lab, Path]) -> None:
    lab, workdir = web_lab
    load = ClientLoad(lab, "client", str(lab.host("backup").address), workdir, interval_ms=2, max_requests=25)
    load.start()
    assert load._proc is not None
    load._proc.wait(timeout=5)  # no stop file, no signal: the cap ends it
    load.stop()
    summary = summarize(load.records())
    assert summary.requests == 25 and summary.served_by == {"backup": 25}
