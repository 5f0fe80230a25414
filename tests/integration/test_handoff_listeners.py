"""The handoff rule with real nginx, for a listener on the wildcard address and one bound to the VIP itself,
over IPv4 and IPv6: connections open on the old holder keep working after the VIP moved, none is reset.

No agents here: each test moves the VIP by hand in the order a swap does (the new holder places its
handoff rule, the old holder keeps the VIP on lo, the new holder adds it and announces it with
failover.announce), so what is proved is the rule itself. A packet socket in the client's namespace counts
every TCP frame from the VIP and the RSTs among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Any

import pytest

from failover.lab.netns import VIP, VIP6, Lab
from failover.lab.nginx import render_config
from tests.integration.conftest import CLIENT, REPO, package_env

SERVERS = ("live", "backup")
CLUSTER = "lab"
WILDCARD_LISTEN = "        listen 80 default_server;\n        listen [::]:80 default_server;\n"
REQUESTS = 5  # request/response rounds on each old connection after each move


def vip_of(family: int) -> IPv4Interface | IPv6Interface:
    return VIP if family == 4 else VIP6


BINDS = {
    "wildcard": {"0.0.0.0", "::"},
    "dual-stack": {"*"},  # one IPv6 socket serving IPv4 too (ss prints it so), connections [::ffff:...]
    "vip": {str(VIP.ip), str(VIP6.ip)},
}


def listen_lines(lab: Lab, host: str, bind: str) -> str:
    if bind == "wildcard":
        return WILDCARD_LISTEN
    if bind == "dual-stack":
        return "        listen [::]:80 ipv6only=off default_server;\n"
    me = lab.host(host)
    # Bound to the VIP itself; the host's own address too, for the readiness probe (and a health URL).
    lines = [f"{VIP.ip}:80 default_server", f"[{VIP6.ip}]:80 default_server", f"{me.address}:80",
             f"[{me.address6}]:80"]
    return "".join(f"        listen {line};\n" for line in lines)


def start_nginx(lab: Lab, host: str, workdir: Path, bind: str) -> None:
    """The lab's nginx config with the listen lines of ``bind``; answers every request with the host name."""
    root = workdir / host
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / name).mkdir(parents=True, exist_ok=True)
    config = render_config(host, root)
    assert WILDCARD_LISTEN in config, "the lab's nginx config changed: update this test"
    (root / "nginx.conf").write_text(config.replace(WILDCARD_LISTEN, listen_lines(lab, host, bind)))
    argv = ["nginx", "-p", f"{root}/", "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")]
    lab.popen(host, [*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{lab.host(host).address}/"
    probe = ["curl", "-s", "--max-time", "1", url]
    answers = lambda: lab.run(host, probe, check=False, timeout=3).stdout.strip() == host  # noqa: E731
    assert lab.wait_until(answers, 5.0), (root / "error.log").read_text(errors="replace")[-2000:]


def ip(lab: Lab, host: str, *args: str) -> None:
    lab.run(host, ["ip", *args])


def in_host(lab: Lab, host: str, code: str) -> Any:
    """Run ``code`` (the body of an async function) with the package inside host's namespace; its result."""
    script = "import asyncio, json\nasync def main():\n" + textwrap.indent(textwrap.dedent(code), "    ")
    script += "\nprint(json.dumps(asyncio.run(main())))\n"
    out = lab.run(host, [sys.executable, "-c", script], env=package_env(), timeout=30, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def place_handoff(lab: Lab, host: str, family: int, old_holder: str) -> None:
    old = lab.host(old_holder)
    to = old.address if family == 4 else old.address6
    in_host(lab, host, f"""
        from ipaddress import ip_address
        from failover import handoff
        return await handoff.install({CLUSTER!r}, ip_address({str(vip_of(family).ip)!r}),
                                     ip_address({str(to)!r}), "eth0")
    """)


def remove_handoff(lab: Lab, host: str, family: int) -> int:
    handed_off: int = in_host(lab, host, f"""
        from failover import handoff
        return await handoff.remove({CLUSTER!r}, {family})
    """)
    return handed_off


def drain(lab: Lab, host: str, family: int) -> None:
    """The old holder's side of a swap: the VIP ARP-silent on lo, off the service interface."""
    vip = vip_of(family)
    nodad = ("nodad",) * (family == 6)
    ip(lab, host, "address", "add", f"{vip.ip}/{vip.max_prefixlen}", "dev", "lo", *nodad)
    ip(lab, host, "address", "del", str(vip), "dev", "eth0")


def claim(lab: Lab, host: str, family: int, drained_on_lo: bool = False) -> None:
    """The new holder's side: the VIP on eth0 (off lo, if it was draining it), announced once."""
    vip = vip_of(family)
    known = lab.neighbour_mac(CLIENT, str(vip.ip)) is not None  # an announcement updates, never creates
    ip(lab, host, "address", "add", str(vip), "dev", "eth0", *(("nodad",) * (family == 6)))
    if drained_on_lo:
        ip(lab, host, "address", "del", f"{vip.ip}/{vip.max_prefixlen}", "dev", "lo")
    in_host(lab, host, f"""
        from ipaddress import ip_address
        from failover.announce import Announcer
        announcer = Announcer("eth0", ip_address({str(vip.ip)!r}), {lab.host(host).mac!r})
        try:
            return announcer.announce()
        finally:
            announcer.close()
    """)
    if known:
        assert lab.wait_until(lambda: lab.neighbour_mac(CLIENT, str(vip.ip)) == lab.host(host).mac, 5.0)


class KeepAlive:
    """One keep-alive connection from the client to the VIP, asked one request at a time."""

    def __init__(self, lab: Lab, family: int, port: int = 0) -> None:
        argv = [sys.executable, "-m", "tests.integration.handoff_probe", "keepalive", str(vip_of(family).ip)]
        argv += ["--port", str(port)]
        self.proc = lab.popen(
            CLIENT, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=package_env(), cwd=REPO,
        )

    def ask(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return "error: exited after an earlier error"
        answer: dict[str, str] = json.loads(self.proc.stdout.readline() or b'{"error": "exited"}')
        return answer.get("body") or f"error: {answer.get('error')}"

    def rounds(self, count: int = REQUESTS) -> list[str]:
        return [self.ask() for _ in range(count)]


@contextmanager
def rst_count(lab: Lab) -> Iterator[dict[str, int]]:
    """Counts of TCP frames from the VIP (both families) seen by the client, filled in at exit."""
    argv = [sys.executable, "-m", "tests.integration.handoff_probe", "sniff", str(VIP.ip), str(VIP6.ip),
            "--duration", "120"]
    proc = lab.popen(CLIENT, argv, stdout=subprocess.PIPE, env=package_env(), cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    counts: dict[str, int] = {}
    try:
        yield counts
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=5)
        counts.update(json.loads(out.decode().strip().splitlines()[-1]))


def fetch_new(lab: Lab, family: int) -> str:
    """One request on a new connection to the VIP: who served it."""
    host = str(vip_of(family).ip) if family == 4 else f"[{vip_of(family).ip}]"
    argv = ["curl", "-s", "--max-time", "2", f"http://{host}/"]
    return lab.run(CLIENT, argv, check=False, timeout=5).stdout.strip()


@contextmanager
def served(tmp_path: Path, bind: str) -> Iterator[Lab]:
    """live and backup each run nginx (bound as ``bind`` says, IPv4 and IPv6); the VIPs are on nobody yet."""
    with Lab(("live", "backup", CLIENT)) as lab:
        for host in SERVERS:
            # What `failover check` asks for: the drain copy on lo stays ARP-silent; a server bound to the
            # VIP starts on the host that does not hold it.
            lab.set_sysctl(host, "net.ipv4.conf.all.arp_ignore", "1")
            lab.set_sysctl(host, "net.ipv4.conf.all.arp_announce", "2")
            if bind == "vip":
                lab.set_sysctl(host, "net.ipv4.ip_nonlocal_bind", "1")
                lab.set_sysctl(host, "net.ipv6.ip_nonlocal_bind", "1")
            start_nginx(lab, host, tmp_path, bind)
        yield lab


def listener_addresses(lab: Lab, host: str) -> set[str]:
    out = lab.run(host, ["ss", "-t", "-l", "-n", "-H", "sport", "=", ":80"]).stdout
    return {line.split()[-2].rpartition(":")[0].strip("[]") for line in out.splitlines()}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("bind", list(BINDS))
def test_connections_of_either_holder_survive_a_swap_and_a_swap_back(
    tmp_path: Path, bind: str, family: int
) -> None:
    with served(tmp_path, bind) as lab:
        assert BINDS[bind] <= listener_addresses(lab, "backup")
        claim(lab, "live", family)
        with rst_count(lab) as frames:
            on_live = KeepAlive(lab, family)
            assert on_live.ask() == "live"

            # Swap: backup places its rule, live keeps the VIP on lo, backup claims.
            place_handoff(lab, "backup", family, old_holder="live")
            drain(lab, "live", family)
            claim(lab, "backup", family)
            assert on_live.rounds() == ["live"] * REQUESTS
            assert [fetch_new(lab, family) for _ in range(3)] == ["backup"] * 3
            on_backup = KeepAlive(lab, family)
            assert on_backup.ask() == "backup"

            # Swap back while live still drains: live's own connection must stay live's, backup's is
            # handed to backup.
            handed_to_live = remove_handoff(lab, "backup", family)
            place_handoff(lab, "live", family, old_holder="backup")
            drain(lab, "backup", family)
            claim(lab, "live", family, drained_on_lo=True)
            assert on_live.rounds() == ["live"] * REQUESTS
            assert on_backup.rounds() == ["backup"] * REQUESTS
            assert [fetch_new(lab, family) for _ in range(3)] == ["live"] * 3
            handed_to_backup = remove_handoff(lab, "live", family)
        assert frames["rst"] == 0, frames
        assert frames["tcp"] > 4 * REQUESTS, frames  # the sniffer saw the traffic it judged
        # Each request on the old holder's connection crossed the new holder's rule (the ACKs of the
        # responses mostly ride on the next request).
        handed = (handed_to_live, handed_to_backup)
        assert min(handed) >= REQUESTS, handed


def test_without_the_rule_the_old_connection_is_reset(tmp_path: Path) -> None:
    """The control: the same move with no handoff, and the sniffer sees the reset the rule prevents."""
    with served(tmp_path, "vip") as lab:
        claim(lab, "live", 4)
        with rst_count(lab) as frames:
            on_live = KeepAlive(lab, 4)
            assert on_live.ask() == "live"
            drain(lab, "live", 4)
            claim(lab, "backup", 4)
            assert on_live.ask().startswith("error")
        assert frames["rst"] >= 1, frames


def test_client_port_reused_from_a_time_wait_on_the_new_holder(tmp_path: Path) -> None:
    """backup closed a connection first (TIME_WAIT there); the client reuses its port for a connection to
    live; after the swap to backup that connection still reaches live."""
    port = 41234
    with served(tmp_path, "vip") as lab:
        claim(lab, "backup", 4)
        reuse = textwrap.dedent(f"""
            import socket, sys
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", {port}))
            s.settimeout(3)
            s.connect(({str(VIP.ip)!r}, 80))
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            s.close()
            print(data.rsplit(b"\\r\\n\\r\\n", 1)[1].decode().strip())
        """)
        assert lab.run(CLIENT, [sys.executable, "-c", reuse]).stdout.strip() == "backup"
        time_wait = ["ss", "-4", "-t", "-n", "-H", "state", "time-wait", "dport", "=", f":{port}"]
        assert lab.run("backup", time_wait).stdout.strip(), "backup should hold the TIME_WAIT"
        drain(lab, "backup", 4)
        ip(lab, "backup", "address", "del", f"{VIP.ip}/32", "dev", "lo")  # that drain is over
        claim(lab, "live", 4)
        with rst_count(lab) as frames:
            reused = KeepAlive(lab, 4, port)
            assert reused.ask() == "live"
            place_handoff(lab, "backup", 4, old_holder="live")
            drain(lab, "live", 4)
            claim(lab, "backup", 4)
            assert reused.rounds() == ["live"] * REQUESTS
        assert frames["rst"] == 0, frames
        assert not lab.run("backup", time_wait).stdout.strip(), "install closes the TIME_WAIT it found"
