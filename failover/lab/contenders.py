"""The tools `failover lab bench` measures failover against, each run by the bench inside the lab.

Owns how every contender is configured, started, moved (planned), crashed and put back, and the
installation of the tools they need. Every daemon runs in a lab namespace with lab addresses only, is
started with ``Lab.popen`` (so ``Lab.down`` kills it whatever happens) and keeps its config, pid files
and log under the bench's workdir. Nothing here measures: the bench does that from the client's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from failover.lab.netns import VIP, Lab, LabError, stop_group
from failover.lab.nginx import Nginx

SERVERS = ("live", "backup")
SCENARIOS = ("planned", "crash")
VRID = 51
# Plain-text lab secret for ucarp's HMAC; the lab is throwaway and the value never leaves it.
UCARP_PASS = "failover-lab"
START_TIMEOUT_S = 12.0
_APT_TIMEOUT_S = 300.0

# tool on $PATH -> Debian package that provides it
TOOLS = {"keepalived": "keepalived", "ucarp": "ucarp", "arping": "iputils-arping"}


class Unavailable(RuntimeError):
    """A contender cannot run here; the message is the reason shown in its row."""


# --- tools ----------------------------------------------------------------------------------------------


def _net_ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _pids_named(name: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    pids.add(int(entry.name))
    return pids


def ensure_tools(say: Any = print) -> dict[str, str]:
    """Install what is missing from Debian (`apt-get install -y`); returns {tool: reason} for failures.

    A package's maintainer script may start a daemon in the root namespace; only the ones that appear
    during our own install are stopped, by pid.
    """
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    problems: dict[str, str] = {}
    if missing:
        packages = sorted({TOOLS[tool] for tool in missing})
        before = {name: _pids_named(name) for name in ("keepalived", "ucarp")}
        say(f"installing {' '.join(packages)} (apt-get install -y)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        done = _run_bounded(argv, env)
        if done is not None and done.returncode != 0:
            # A stale package index is the usual cause; refresh it once and retry.
            _run_bounded(["apt-get", "update"], env)
            done = _run_bounded(argv, env)
        root_ns = _net_ns_of(os.getpid())
        for name, old in before.items():
            for pid in _pids_named(name) - old:
                if _net_ns_of(pid) == root_ns:
                    say(f"stopping {name} (pid {pid}) that its package started in the root namespace")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        for tool in missing:
            if shutil.which(tool) is None:
                tail = "" if done is None else (done.stderr or done.stdout).strip().splitlines()[-1:]
                problems[tool] = f"{TOOLS[tool]} could not be installed ({' '.join(tail) or 'timeout'})"
    arping = shutil.which("arping")
    if arping is not None and "arping" not in problems:
        version = subprocess.run([arping, "-V"], capture_output=True, text=True, timeout=5, check=False)
        if "iputils" not in version.stdout + version.stderr:
            problems["arping"] = "arping on $PATH is not iputils-arping (options differ)"
    return problems


def _run_bounded(argv: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=_APT_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return None


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# --- the shared topology ----------------------------------------------------------------------------------


@contextmanager
def contender_lab(workdir: Path) -> Iterator[Lab]:
    """The same topology LabCluster builds (hosts, nginx, ARP sysctls), without our agents or a VIP."""
    with Lab(hosts=("live", "backup", "client")) as lab:
        servers: list[Nginx] = []
        try:
            for name in SERVERS:
                for conf in ("all", "eth0"):
                    lab.set_sysctl(name, f"net.ipv4.conf.{conf}.arp_ignore", "1")
                    lab.set_sysctl(name, f"net.ipv4.conf.{conf}.arp_announce", "2")
            for name in SERVERS:
                server = Nginx(lab, name, workdir)
                servers.append(server)
                server.start()
            yield lab
        finally:
            for server in servers:
                server.stop()


def vip_on_eth0(lab: Lab, host: str) -> bool:
    """Whether host has the VIP on eth0 (a drain copy on lo does not count: it takes no new clients)."""
    done = subprocess.run(
        ["ip", "-n", lab.netns(host), "-j", "address", "show", "dev", "eth0"],
        capture_output=True, text=True, timeout=5, check=False,
    )  # fmt: skip
    with contextlib.suppress(ValueError):
        for link in json.loads(done.stdout or "[]"):
            if any(a.get("local") == str(VIP.ip) for a in link.get("addr_info", [])):
                return True
    return False


def _del_vip(lab: Lab, host: str) -> None:
    lab.run(host, ["ip", "address", "del", str(VIP), "dev", "eth0"], check=False, timeout=5)


def link_up(lab: Lab, host: str) -> None:
    lab.run(host, ["ip", "link", "set", "eth0", "up"], check=False, timeout=5)


def link_down(lab: Lab, host: str) -> None:
    subprocess.run(["ip", "-n", lab.netns(host), "link", "set", "eth0", "down"], timeout=5, check=True)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# --- contenders -------------------------------------------------------------------------------------------


class Contender:
    """One tool in one configuration. ``start`` leaves the VIP on live and the backup standing by."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    config: ClassVar[str] = ""
    actions: ClassVar[dict[str, str]] = {}
    # scenario -> why it cannot run; printed in the row instead of numbers
    unsupported: ClassVar[dict[str, str]] = {}
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        raise NotImplementedError

    def act(self, scenario: str) -> float:
        """Carry out the scenario on live; returns the monotonic time just before the first step."""
        if scenario == "planned":
            return self.planned()
        if scenario == "crash":
            return self.crash()
        raise ValueError(f"unknown scenario {scenario!r}")

    def planned(self) -> float:
        raise NotImplementedError

    def crash(self) -> float:
        """Live's link down in its namespace, then SIGKILL of its daemon (all of its process group)."""
        proc = self.procs.get("live")
        if proc is None:
            raise LabError("no daemon on live to crash")
        started = time.monotonic()
        link_down(self.lab, "live")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return started

    def reset(self) -> None:
        """Stop every daemon, take the VIP off both hosts, bring links up: the state before start()."""
        for proc in self.procs.values():
            stop_group(proc, (signal.SIGKILL,), 2.0)
        self.procs.clear()
        for host in SERVERS:
            link_up(self.lab, host)
            _del_vip(self.lab, host)

    def daemon_pids(self) -> dict[str, int]:
        return {host: proc.pid for host, proc in self.procs.items() if proc.poll() is None}

    def _popen(self, host: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{host}.log").open("ab")
        try:
            proc = self.lab.popen(host, argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.procs[host] = proc
        return proc

    def _wait_vip(self, host: str, timeout: float) -> None:
        proc = self.procs.get(host)
        ok = self.lab.wait_until(
            lambda: vip_on_eth0(self.lab, host) or (proc is not None and proc.poll() is not None),
            timeout=timeout, interval=0.02,
        )  # fmt: skip
        if not ok or not vip_on_eth0(self.lab, host):
            state = "exited" if proc is not None and proc.poll() is not None else "running"
            raise Unavailable(
                f"{self.name} on {host} did not take the VIP within {timeout:.0f} s ({state}); "
                f"log:\n{_log_tail(self.dir / f'{host}.log')}"
            )


class Manual(Contender):
    name = "manual"
    label = "manual: ip del; ip add; one GARP"
    config = (
        "one `ip netns exec <backup> bash -c` running `ip -n <live> addr del 203.0.113.10/24 dev eth0 && "
        "ip addr add 203.0.113.10/24 dev eth0 && arping -q -U -c 1 -I eth0 -s 203.0.113.10 203.0.113.10`"
    )
    actions: ClassVar[dict[str, str]] = {"planned": "scripted steps"}
    unsupported: ClassVar[dict[str, str]] = {"crash": "n/a (no detector: a person must notice)"}
    needs = ("arping",)

    def _announce(self) -> str:
        return f"arping -q -U -c 1 -I eth0 -s {VIP.ip} {VIP.ip}"

    def start(self) -> None:
        self.lab.run("live", ["bash", "-c", f"ip address add {VIP} dev eth0 && {self._announce()}"])

    def planned(self) -> float:
        script = (
            f"ip -n {self.lab.netns('live')} address del {VIP} dev eth0 && "
            f"ip address add {VIP} dev eth0 && exec {self._announce()}"
        )
        started = time.monotonic()
        self.lab.run("backup", ["bash", "-c", script], timeout=10)
        return started

    def reset(self) -> None:
        for host in SERVERS:
            _del_vip(self.lab, host)


class Keepalived(Contender):
    """keepalived, VRRP only, one unicast instance per host; live has the higher priority."""

    name = "keepalived-default"
    label = "keepalived, advert 1 s (VRRPv2)"
    advert = "1"
    version = 2
    actions: ClassVar[dict[str, str]] = {
        "planned": "stop master (SIGTERM: priority 0)",
        "crash": "link down + SIGKILL",
    }
    needs = ("keepalived",)

    @classmethod
    def describe(cls) -> str:
        return (
            f"`keepalived -n -l -D -G -P -f <conf> -p/-r/-c <pid files in workdir>` per host; "
            f"vrrp_version {cls.version}, advert_int {cls.advert}, unicast peers, priority 150 (live, "
            f"state MASTER) / 100 (backup, state BACKUP), preempt (default), "
            f"`virtual_ipaddress {{ {VIP} dev eth0 }}`, no scripts, other settings default"
        )

    def render(self, host: str) -> str:
        me = self.lab.host(host)
        peer = self.lab.host("backup" if host == "live" else "live")
        state, priority = ("MASTER", 150) if host == "live" else ("BACKUP", 100)
        return f"""\
global_defs {{
    router_id lab_{host}
    vrrp_version {self.version}
}}
vrrp_instance lab {{
    state {state}
    interface eth0
    virtual_router_id {VRID}
    priority {priority}
    advert_int {self.advert}
    unicast_src_ip {me.address}
    unicast_peer {{
        {peer.address}
    }}
    virtual_ipaddress {{
        {VIP} dev eth0
    }}
}}
"""

    def _start_host(self, host: str) -> None:
        conf = self.dir / f"{host}.conf"
        conf.write_text(self.render(host))
        pids = {
            flag: self.dir / f"{host}.{suffix}.pid"
            for flag, suffix in (("-p", "main"), ("-r", "vrrp"), ("-c", "checkers"))
        }
        for path in pids.values():
            path.unlink(missing_ok=True)
        argv = ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", str(conf)]
        for flag, path in pids.items():
            argv += [flag, str(path)]
        self._popen(host, argv)

    def start(self) -> None:
        self._start_host("live")
        self._wait_vip("live", START_TIMEOUT_S)
        self._start_host("backup")
        # The backup must have heard the master before the move, or it would claim on its own.
        time.sleep(min(3 * float(self.advert), 1.0) + 0.2)
        if vip_on_eth0(self.lab, "backup"):
            raise Unavailable(f"{self.name}: backup took the VIP while live was master (split brain)")

    def planned(self) -> float:
        proc = self.procs["live"]
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        return started

    def reset(self) -> None:
        # SIGTERM first so keepalived takes its VIP away the way it does in production.
        for proc in self.procs.values():
            stop_group(proc, (signal.SIGTERM,), 2.0)
        super().reset()


class KeepalivedTuned(Keepalived):
    name = "keepalived-tuned"
    label = "keepalived tuned (VRRPv3, advert 10 ms)"
    advert = "0.01"  # the smallest this version accepts: "outside range [0.010000, 255.000000]"
    version = 3


class Ucarp(Contender):
    """ucarp with the usual up/down scripts: add or delete the VIP, then one gratuitous ARP."""

    name = "ucarp-default"
    label = "ucarp, advbase 1 s x deadratio 3"
    advbase = 1
    deadratio = 3
    actions: ClassVar[dict[str, str]] = {"planned": "demote master (SIGUSR2)", "crash": "link down + SIGKILL"}
    needs = ("ucarp", "arping")

    @classmethod
    def describe(cls) -> str:
        return (
            f"`ucarp -i eth0 -s <host ip> -v {VRID} -p <pass> -a {VIP.ip} -b {cls.advbase} "
            f"-r {cls.deadratio} -n -u vip-up.sh -d vip-down.sh` per host, live started first; "
            "vip-up.sh: `ip addr add $2/24 dev $1; arping -q -U -c 1 -I $1 -s $2 $2`, "
            "vip-down.sh: `ip addr del $2/24 dev $1`"
        )

    def _scripts(self) -> tuple[Path, Path]:
        up, down = self.dir / "vip-up.sh", self.dir / "vip-down.sh"
        up.write_text(
            '#!/bin/sh\nip address add "$2/24" dev "$1"\nexec arping -q -U -c 1 -I "$1" -s "$2" "$2"\n'
        )
        down.write_text('#!/bin/sh\nexec ip address del "$2/24" dev "$1"\n')
        for path in (up, down):
            path.chmod(0o755)
        return up, down

    def _start_host(self, host: str) -> None:
        up, down = self._scripts()
        argv = ["ucarp", "-i", "eth0", "-s", str(self.lab.host(host).address), "-v", str(VRID),
                "-p", UCARP_PASS, "-a", str(VIP.ip), "-b", str(self.advbase), "-r", str(self.deadratio),
                "-n", "-u", str(up), "-d", str(down)]  # fmt: skip
        self._popen(host, argv)

    def start(self) -> None:
        self._start_host("live")
        self._wait_vip("live", self.advbase * self.deadratio + START_TIMEOUT_S)
        self._start_host("backup")
        time.sleep(self.advbase * self.deadratio + 0.5)
        if vip_on_eth0(self.lab, "backup"):
            raise Unavailable(f"{self.name}: backup took the VIP while live was master (split brain)")

    def planned(self) -> float:
        proc = self.procs["live"]
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGUSR2)
        return started


class UcarpTuned(Ucarp):
    name = "ucarp-tuned"
    label = "ucarp tuned, advbase 1 s x deadratio 1"
    # advbase is whole seconds; deadratio 1 is the floor (ucarp polls libpcap with a 1 s timeout).
    deadratio = 1


CONTENDERS: tuple[type[Contender], ...] = (Manual, Keepalived, KeepalivedTuned, Ucarp, UcarpTuned)


def describe(kind: type[Contender]) -> str:
    describer = getattr(kind, "describe", None)
    return str(describer()) if callable(describer) else kind.config


# failover is measured through LabCluster; these are its rows' static facts.
FAILOVER_NAME = "failover"
FAILOVER_LABEL = "failover (confirm: traffic)"
FAILOVER_ACTIONS = {"planned": "`failover swap` (CLI on live)", "crash": "link down + SIGKILL agent"}
FAILOVER_UNSUPPORTED: dict[str, str] = {}
FAILOVER_CONFIG = (
    "LabCluster's cluster file: heartbeat 50 ms, dead after 250 ms, announce schedule 0/200/1100/2300 ms, "
    "swap step timeout 1 s, drain 1 s with handoff, confirm by 3 client requests within 5 s, "
    "straggler window 1 s, probe 3 x 20 ms + 60 ms wait; swap run as `failover swap --json` on live"
)
TAKEOVER_IMPLEMENTED = True
# The crash of live with timers tightened for the 150 ms floor, heartbeats still every 50 ms. dead_after
# cannot go lower (the config demands >= 2 x interval); the probe stays, shortened: 2 probes 10 ms
# apart and 20 ms of listening, which a holder on the same segment answers in well under a millisecond.
FAILOVER_TUNED_NAME = "failover-tuned"
FAILOVER_TUNED_LABEL = "failover tuned (dead after 100 ms, probe 2 x 10 ms + 20 ms)"
FAILOVER_TUNED: dict[str, Any] = {
    "heartbeat": {"dead_after_ms": 100},
    "probe": {"count": 2, "interval_ms": 10, "wait_ms": 20},
}
FAILOVER_TUNED_CONFIG = (
    "LabCluster's cluster file with `heartbeat: {interval_ms: 50, dead_after_ms: 100}` and "
    "`probe: {count: 2, interval_ms: 10, wait_ms: 20}`; everything else as the failover row"
)
# The heartbeat-loss soak: 30 % loss and 50 +- 20 ms of delay on the heartbeat path only, on both
# servers. This kernel has neither netem nor prio (CONFIG_NET_SCH_NETEM, CONFIG_NET_SCH_PRIO unset), so
# nftables does it: a random drop (numgen) and a redirect to a delaying relay in the same namespace.
# Only datagrams from port 5405 to port 5405 match: the agents' own; the relay sends from another port.
SOAK_NAME = "soak"
# The same soak at the fastest timers the issue names (heartbeats every 10 ms, dead after 30 ms) with the
# default probe, whose window the agents size from the peer kernel's measured answers: a false takeover
# here would be a probe too short to hear a live holder, or a dead_after too short for the jitter.
SOAK_FAST_NAME = "soak-10ms"
FAILOVER_FAST: dict[str, Any] = {"heartbeat": {"interval_ms": 10, "dead_after_ms": 30}}
# The crash of live at those timers, set as an operator of a fast site would: only the heartbeat section
# changes; the probe keeps its defaults and the agents shrink its window to what the peer kernel's
# measured answers allow. Measured with `--only crash-10ms`, set against keepalived tuned's crash.
CRASH_FAST_NAME = "crash-10ms"
CRASH_FAST_LABEL = "failover fast site (heartbeat 10 ms, dead after 30 ms, default probe, measured window)"
CRASH_FAST_CONFIG = (
    "LabCluster's cluster file with `heartbeat: {interval_ms: 10, dead_after_ms: 30}`; "
    "everything else as the failover row"
)
HEARTBEAT_PORT = 5405
RELAY_PORT = 15405
SOAK_LOSS_PERCENT = 30
SOAK_DELAY_MS = 50.0
SOAK_JITTER_MS = 20.0


def heartbeat_impairment_rules(
    loss_percent: int = SOAK_LOSS_PERCENT, port: int = HEARTBEAT_PORT, relay_port: int = RELAY_PORT
) -> str:
    """nft rules for one server's namespace: drop loss_percent of its outgoing heartbeats at random,
    hand the rest to the delaying relay on relay_port.

    The redirect is NAT, decided once per conntrack flow, and both agents' heartbeats are one flow
    (port to port). Were the peer's incoming heartbeat tracked first, ours would be that flow's replies
    and never redirected: which direction got delayed was a race (a soak had live's heartbeats only
    dropped, not delayed). The peer's heartbeats are left untracked, so ours always start the flow."""
    match = f"udp sport {port} udp dport {port}"
    return (
        "table ip fo_soak {\n"
        "  chain untracked_in {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f"    {match} notrack\n"
        "  }\n"
        "  chain loss {\n"
        "    type filter hook output priority -200; policy accept;\n"
        f"    {match} numgen random mod 100 < {loss_percent} counter name dropped drop\n"
        f"    {match} counter name passed\n"
        "  }\n"
        "  counter dropped {}\n"
        "  counter passed {}\n"
        "  chain delay {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    {match} redirect to :{relay_port}\n"
        "  }\n"
        "}\n"
    )


def heartbeat_relay(
    peer: str, seconds: float, stats: str, delay_ms: float = SOAK_DELAY_MS, jitter_ms: float = SOAK_JITTER_MS,
    port: int = HEARTBEAT_PORT, relay_port: int = RELAY_PORT,
) -> None:  # fmt: skip
    """Run in a server's namespace: every datagram redirected to relay_port goes on to peer:port after
    delay_ms +- jitter_ms (uniform, so late ones may overtake: reordering, as netem's jitter does).
    Stops after `seconds` and writes its counts as JSON to `stats`."""
    import asyncio
    import random

    async def relay() -> None:
        loop = asyncio.get_running_loop()
        counts = {"received": 0, "sent": 0}
        out, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(peer, port))

        def send(data: bytes) -> None:
            out.sendto(data)
            counts["sent"] += 1

        class Delay(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                counts["received"] += 1
                later = (delay_ms + random.uniform(-jitter_ms, jitter_ms)) / 1000.0
                loop.call_later(max(later, 0.0), send, data)

        inbound, _ = await loop.create_datagram_endpoint(Delay, local_addr=("0.0.0.0", relay_port))
        try:
            await asyncio.sleep(seconds)
        finally:
            inbound.close()
            out.close()
            Path(stats).write_text(json.dumps(counts))

    asyncio.run(relay())


def start_heartbeat_impairment(lab: Lab, workdir: Path, seconds: float) -> dict[str, Path]:
    """Loss and delay on both servers' heartbeats for `seconds`; returns each relay's stats file.

    Relays are started with ``Lab.popen`` (``Lab.down`` kills them) and end on their own; the rules
    live in the servers' namespaces and go with them.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": package_root}
    stats: dict[str, Path] = {}
    for host in SERVERS:
        peer = lab.host("backup" if host == "live" else "live")
        stats[host] = workdir / f"relay-{host}.json"
        code = (
            "from failover.lab.contenders import heartbeat_relay; "
            f"heartbeat_relay({str(peer.address)!r}, {seconds!r}, {str(stats[host])!r})"
        )
        lab.popen(host, [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)
    time.sleep(0.3)  # the relays bind before any heartbeat is redirected to them
    for host in SERVERS:
        lab.run(host, ["nft", "-f", "-"], input=heartbeat_impairment_rules(), timeout=10)
    return stats


def stop_heartbeat_impairment(lab: Lab) -> dict[str, dict[str, int]]:
    """Remove the rules; returns each server's nft counters (heartbeats dropped and passed on)."""
    counters: dict[str, dict[str, int]] = {}
    for host in SERVERS:
        argv = ["nft", "-j", "list", "counters", "table", "ip", "fo_soak"]
        done = lab.run(host, argv, check=False, timeout=10)
        found: dict[str, int] = {}
        with contextlib.suppress(ValueError, KeyError, TypeError):
            for item in json.loads(done.stdout or "{}")["nftables"]:
                if "counter" in item:
                    found[str(item["counter"]["name"])] = int(item["counter"]["packets"])
        counters[host] = found
        lab.run(host, ["nft", "delete", "table", "ip", "fo_soak"], check=False, timeout=10)
    return counters


def known_names() -> list[str]:
    own = [FAILOVER_NAME, FAILOVER_TUNED_NAME, SOAK_NAME, SOAK_FAST_NAME]
    return [*own, *(kind.name for kind in CONTENDERS)]


def environment_versions() -> dict[str, Any]:
    return {
        "keepalived": tool_version(["keepalived", "--version"]),
        "ucarp": tool_version(["ucarp", "--help"]),
        "arping": tool_version(["arping", "-V"]),
        "nginx": tool_version(["nginx", "-v"]),
        "kernel": os.uname().release,
    }
