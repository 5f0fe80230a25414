"""The lab's network: one namespace holding a learning bridge, one namespace per host, veths between them.

Owns creating and tearing down that topology, running and tracking processes inside it, and reading
addresses and neighbour entries back out of it. Nothing is ever created in the root namespace; every
namespace name carries a prefix unique to the run, so parallel runs never collide; teardown runs from
``__exit__``, from an atexit hook and from a SIGTERM/SIGHUP handler.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from types import FrameType, TracebackType
from typing import Any

LAB_SUBNET = IPv4Network("203.0.113.0/24")
LAB_SUBNET6 = IPv6Network("2001:db8:0:1::/64")
VIP = IPv4Interface("203.0.113.10/24")
VIP6 = IPv6Interface("2001:db8:0:1::10/64")
HOST_PLAN: dict[str, int] = {"live": 11, "backup": 12, "client": 100, "client2": 101, "router": 1}

# A routed lab (``Lab(router=...)``) splits 203.0.113.0/24 in two: the servers' segment (the bridge) is the
# lower /25, the client's the upper one, behind the router; IPv6 gets a second /64. The client keeps its
# host number: 203.0.113.228 (128 + 100) and 2001:db8:0:2::100.
SERVER_SUBNET_ROUTED = IPv4Network("203.0.113.0/25")
CLIENT_SUBNET_ROUTED = IPv4Network("203.0.113.128/25")
CLIENT_SUBNET6_ROUTED = IPv6Network("2001:db8:0:2::/64")
VIP_ROUTED = IPv4Interface("203.0.113.10/25")
ROUTER = "router"
ROUTED_CLIENT = "client"
ROUTER_MODES: dict[str, dict[str, str]] = {
    # The router's own settings; "drop-garp" is the router that ignores gratuitous ARP and unsolicited
    # neighbour advertisements, as many real routers and switches in effect do (FIELD.md).
    "plain": {},
    "drop-garp": {
        "net.ipv4.conf.all.drop_gratuitous_arp": "1",
        "net.ipv4.conf.default.drop_gratuitous_arp": "1",
        "net.ipv6.conf.all.drop_unsolicited_na": "1",
        "net.ipv6.conf.default.drop_unsolicited_na": "1",
    },
}

BRIDGE = "br0"
ROUTER_CLIENT_PORT = "eth1"  # the router's interface toward the client, in the router's namespace
ROUTER_CLIENT_MAC = "02:00:cb:00:72:01"
# Pseudo host name accepted by argv/run/popen to reach the bridge namespace (tc, nft, link down on a port).
BRIDGE_HOST = "bridge"

_IP_TIMEOUT = 10.0
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)  # setns: os.setns is Python 3.12's
_KILL_GRACE = 2.0


class LabError(RuntimeError):
    """The lab could not be built or a command inside it failed."""


@dataclass(frozen=True)
class LabHost:
    name: str
    netns: str
    address: IPv4Address
    address6: IPv6Address
    mac: str
    interface: str = "eth0"
    bridge_port: str = ""  # "" for a host behind the router (not on the bridge)
    prefixlen: int = LAB_SUBNET.prefixlen
    prefixlen6: int = LAB_SUBNET6.prefixlen


def _plan_host(prefix: str, name: str, routed: bool = False) -> LabHost:
    try:
        octet = HOST_PLAN[name]
    except KeyError:
        raise ValueError(f"unknown lab host {name!r}; known: {sorted(HOST_PLAN)}") from None
    subnet: IPv4Network = LAB_SUBNET
    subnet6: IPv6Network = LAB_SUBNET6
    if routed:
        behind = name == ROUTED_CLIENT
        subnet = CLIENT_SUBNET_ROUTED if behind else SERVER_SUBNET_ROUTED
        subnet6 = CLIENT_SUBNET6_ROUTED if behind else LAB_SUBNET6
    address = subnet.network_address + octet
    # The IPv6 host part is the same digits as the IPv4 octet, so ::100 pairs with .100 at a glance.
    address6 = IPv6Address(f"{subnet6.network_address}{octet}")
    if address not in subnet or address6 not in subnet6:
        raise ValueError(f"host {name!r} falls outside the lab subnets")
    return LabHost(
        name=name,
        netns=f"{prefix}-{name}",
        address=address,
        address6=address6,
        mac=f"02:00:cb:00:71:{octet:02x}",
        bridge_port="" if routed and name == ROUTED_CLIENT else f"v{name}"[:15],
        prefixlen=subnet.prefixlen,
        prefixlen6=subnet6.prefixlen,
    )


def _ip(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *argv], input=stdin, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _list_netns() -> list[str]:
    out = _ip(["-j", "netns", "list"]).stdout.strip()
    if not out:
        return []
    return [str(entry["name"]) for entry in json.loads(out)]


def _kill_netns_pids(netns: str) -> None:
    """SIGKILL whatever still lives in a namespace, so deleting its name really frees it."""
    proc = _ip(["netns", "pids", netns], check=False)
    for word in proc.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


def _delete_netns(netns: str) -> None:
    _kill_netns_pids(netns)
    _ip(["netns", "delete", netns], check=False)


def cleanup_prefix(prefix: str) -> None:
    """Delete leftover namespaces named ``<prefix>-*`` (after a run that was SIGKILLed)."""
    if not prefix:
        raise ValueError("empty prefix would match every namespace")
    for netns in _list_netns():
        if netns.startswith(f"{prefix}-"):
            _delete_netns(netns)


def new_prefix() -> str:
    return "fo" + secrets.token_hex(3)


def stop_group(
    proc: subprocess.Popen[Any],
    signals: Sequence[signal.Signals] = (signal.SIGTERM,),
    grace: float = _KILL_GRACE,
) -> None:
    """Send each signal to the process group with a bounded wait after each, then SIGKILL the group."""
    if proc.returncode is not None:
        # Reaped earlier: its pid may belong to someone else by now. The namespace sweep in down()
        # catches anything of ours that outlived it.
        return
    for sig in signals:
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The group may outlive its leader (nginx workers), so SIGKILL it regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


# --- teardown on process exit and on SIGTERM/SIGHUP -------------------------------------------------------

_active: set[Lab] = set()
_active_lock = threading.RLock()
_saved_handlers: dict[int, Any] = {}
_TEARDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _down_all() -> None:
    with _active_lock:
        labs = list(_active)
    for lab in labs:
        lab.down()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _down_all()
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread() or _saved_handlers:
        return
    for signum in _TEARDOWN_SIGNALS:
        current = signal.getsignal(signum)
        # Python's own SIGINT handler already unwinds through __exit__; only a bare default needs help.
        if current is signal.SIG_DFL:
            _saved_handlers[signum] = current
            signal.signal(signum, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in list(_saved_handlers.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, handler)
        del _saved_handlers[signum]


atexit.register(_down_all)


class Lab:
    """A bridge namespace plus one namespace per host; a context manager that always tears down."""

    def __init__(
        self,
        hosts: Sequence[str] = ("live", "backup", "client"),
        prefix: str | None = None,
        *,
        router: str | None = None,
    ) -> None:
        """``router`` (a key of ``ROUTER_MODES``) puts ``client`` behind a router host on its own subnet."""
        if isinstance(hosts, str):
            raise TypeError("hosts must be a sequence of names, not a string")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"duplicate host names in {hosts!r}")
        if router is not None:
            if router not in ROUTER_MODES:
                raise ValueError(f"unknown router mode {router!r}; known: {sorted(ROUTER_MODES)}")
            if ROUTED_CLIENT not in hosts or ROUTER in hosts:
                raise ValueError(f"a routed lab needs {ROUTED_CLIENT!r} among its hosts, and adds {ROUTER!r}")
            hosts = [*hosts, ROUTER]
        self.router = router
        self.prefix = prefix or new_prefix()
        if not self.prefix.replace("-", "").isalnum() or len(self.prefix) > 20:
            raise ValueError(f"bad prefix {self.prefix!r}")
        self.bridge_netns = f"{self.prefix}-br"
        self.hosts: dict[str, LabHost] = {
            name: _plan_host(self.prefix, name, routed=router is not None) for name in hosts
        }
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.RLock()
        self.is_up = False

    # --- lifecycle --------------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self) -> None:
        with self._lock:
            if self.is_up or self._namespaces:
                raise LabError(f"lab {self.prefix} is already up")
            with _active_lock:
                _active.add(self)
                _install_handlers()
            try:
                self._build()
            except BaseException:
                self.down()
                raise
            self.is_up = True

    def _add_netns(self, netns: str) -> None:
        # `ip netns add` refuses an existing name, which is what makes a prefix collision raise.
        _ip(["netns", "add", netns])
        self._namespaces.append(netns)

    def _build(self) -> None:
        self._add_netns(self.bridge_netns)
        for host in self.hosts.values():
            self._add_netns(host.netns)
            # Set before eth0 exists so it inherits them: no tentative link-local address, and a
            # secondary address is promoted rather than flushed when the primary goes.
            self._sysctl_ns(
                host.netns,
                {
                    "net.ipv4.conf.all.promote_secondaries": "1",
                    "net.ipv4.conf.default.promote_secondaries": "1",
                    "net.ipv6.conf.all.accept_dad": "0",
                    "net.ipv6.conf.default.accept_dad": "0",
                    **(self._router_sysctls() if host.name == ROUTER else {}),
                },
            )
        # The bridge namespace carries no addresses at all, not even IPv6 link-local ones.
        self._sysctl_ns(
            self.bridge_netns,
            {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
        )
        batch = [
            f"link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0",
            f"link set {BRIDGE} up",
            "link set lo up",
        ]
        for host in self.hosts.values():
            if not host.bridge_port:
                continue
            batch += [
                f"link add {host.bridge_port} type veth peer name {host.interface}"
                f" address {host.mac} netns {host.netns}",
                f"link set {host.bridge_port} master {BRIDGE}",
                f"link set {host.bridge_port} up",
            ]
        _ip(["-n", self.bridge_netns, "-batch", "-"], stdin="\n".join(batch) + "\n")
        if self.router is not None:
            self._build_router()
        for host in self.hosts.values():
            self.set_sysctl(host.name, f"net.ipv4.conf.{host.interface}.promote_secondaries", "1")
            dev = host.interface
            batch = [
                "link set lo up",
                f"address add {host.address}/{host.prefixlen} dev {dev}",
                f"address add {host.address6}/{host.prefixlen6} dev {dev} nodad",
                f"link set {dev} up",
            ]
            batch += self._routes(host)
            _ip(["-n", host.netns, "-batch", "-"], stdin="\n".join(batch) + "\n")

    def _router_sysctls(self) -> dict[str, str]:
        # Before any interface exists, so every one inherits the defaults (drop_unsolicited_na is per
        # interface only; drop_gratuitous_arp is all OR interface).
        assert self.router is not None
        return {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1", **ROUTER_MODES[self.router]}

    def router_side(self) -> tuple[IPv4Address, IPv6Address]:
        """The router's addresses on the client's subnet (its eth1)."""
        return CLIENT_SUBNET_ROUTED.network_address + 1, CLIENT_SUBNET6_ROUTED.network_address + 1

    def _build_router(self) -> None:
        assert self.router is not None
        router, client = self.hosts[ROUTER], self.hosts[ROUTED_CLIENT]
        side4, side6 = self.router_side()
        batch = [
            f"link add {ROUTER_CLIENT_PORT} address {ROUTER_CLIENT_MAC} type veth"
            f" peer name {client.interface} address {client.mac} netns {client.netns}",
            f"address add {side4}/{CLIENT_SUBNET_ROUTED.prefixlen} dev {ROUTER_CLIENT_PORT}",
            f"address add {side6}/{CLIENT_SUBNET6_ROUTED.prefixlen} dev {ROUTER_CLIENT_PORT} nodad",
            f"link set {ROUTER_CLIENT_PORT} up",
        ]
        _ip(["-n", router.netns, "-batch", "-"], stdin="\n".join(batch) + "\n")

    def _routes(self, host: LabHost) -> list[str]:
        """In a routed lab: the client's default route via the router, the servers' route to the client."""
        if self.router is None or host.name == ROUTER:
            return []
        if host.name == ROUTED_CLIENT:
            side4, side6 = self.router_side()
            return [f"route add default via {side4}", f"route add default via {side6}"]
        router = self.hosts[ROUTER]
        return [
            f"route add {CLIENT_SUBNET_ROUTED} via {router.address}",
            f"route add {CLIENT_SUBNET6_ROUTED} via {router.address6}",
        ]

    def down(self) -> None:
        """Kill every process the lab started, then delete every namespace it made. Idempotent."""
        with self._lock:
            procs, self._procs = self._procs, []
            for proc in procs:
                with contextlib.suppress(Exception):
                    stop_group(proc)
            namespaces, self._namespaces = self._namespaces, []
            for netns in reversed(namespaces):
                with contextlib.suppress(Exception):
                    _delete_netns(netns)
            self.is_up = False
            with _active_lock:
                _active.discard(self)
                if not _active:
                    _restore_handlers()

    def detach(self) -> None:
        """Leave the lab running past this process (`failover lab up`); `cleanup_prefix` removes it."""
        with self._lock:
            self._procs, self._namespaces = [], []
            self.is_up = False
            with _active_lock:
                _active.discard(self)
                if not _active:
                    _restore_handlers()

    # --- running things inside --------------------------------------------------------------------------

    def host(self, name: str) -> LabHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in lab {self.prefix}; hosts: {sorted(self.hosts)}") from None

    def netns(self, host: str) -> str:
        return self.bridge_netns if host == BRIDGE_HOST else self.host(host).netns

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def run(
        self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        full = self.argv(host, argv)
        proc: subprocess.CompletedProcess[str] = subprocess.run(full, timeout=timeout, check=False, **kw)
        if check and proc.returncode != 0:
            raise LabError(
                f"[{host}] {' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or '').strip()}"
            )
        return proc

    def run_in(
        self, host: str, argv: Sequence[str], *, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """argv run as a shell on that host runs it: forked from a thread that entered the host's network
        namespace (setns), not through `ip netns exec`, whose own exec, mount namespace and /sys remount
        an operator typing a command on the host never pays. For what is timed from its spawn."""
        done: list[subprocess.CompletedProcess[str] | BaseException] = []

        def spawn() -> None:
            try:
                with open(f"/run/netns/{self.netns(host)}", "rb") as ns:
                    if _libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {self.netns(host)}")
                done.append(subprocess.run(argv, timeout=timeout, check=False, capture_output=True,
                                           text=True, **kw))
            except BaseException as err:  # handed to the caller
                done.append(err)

        # Only this thread enters the namespace (setns acts on the calling thread), and it ends with it.
        thread = threading.Thread(target=spawn, name=f"run-in-{host}")
        thread.start()
        thread.join()
        if isinstance(done[0], BaseException):
            raise done[0]
        return done[0]

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a process in its own group inside the host's namespace; down() kills the group."""
        with self._lock:
            if not self.is_up:
                raise LabError(f"lab {self.prefix} is not up")
            kw.setdefault("start_new_session", True)
            proc: subprocess.Popen[bytes] = subprocess.Popen(self.argv(host, argv), **kw)
            self._procs.append(proc)
            return proc

    # --- reading state back -----------------------------------------------------------------------------

    def neighbour_mac(self, host: str, ip: str) -> str | None:
        """The host's neighbour-table lladdr for ip, or None when there is no resolved entry."""
        out = _ip(["-n", self.netns(host), "-j", "neigh", "show", "to", ip]).stdout.strip()
        for entry in json.loads(out) if out else []:
            if entry.get("dst") == ip and entry.get("lladdr"):
                return str(entry["lladdr"])
        return None

    def holders(self, ip: str) -> list[str]:
        """Names of the hosts that have ip on their lab interface: the ones that answer for it.

        A copy on lo (failover's ARP-silent drain after a release) does not count.
        """
        names = []
        for name, host in self.hosts.items():
            out = _ip(["-n", host.netns, "-j", "address", "show", "dev", host.interface]).stdout.strip()
            for link in json.loads(out) if out else []:
                if any(info.get("local") == ip for info in link.get("addr_info", [])):
                    names.append(name)
                    break
        return names

    def set_sysctl(self, host: str, key: str, value: str) -> None:
        self._sysctl_ns(self.netns(host), {key: value})

    def _sysctl_ns(self, netns: str, values: dict[str, str]) -> None:
        argv = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise LabError(f"[{netns}] sysctl {values} failed: {proc.stderr.strip()}")

    def wait_until(
        self, predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02
    ) -> bool:
        """Poll predicate() until true or timeout; bounded in time and count."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / interval) + 2):
            if predicate():
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        return bool(predicate())


class NeighbourWatch:
    """Every change of one host's neighbour entry for one address, stamped with ``time.monotonic()``.

    Runs ``ip monitor neigh`` in the host's namespace (tracked by the lab, so down() stops it too) and
    reads its lines in a daemon thread; a line is stamped when it is read, within a millisecond or so of
    the kernel's change. Bounded: at most ``MAX_CHANGES`` changes are kept.
    """

    MAX_CHANGES = 10_000

    def __init__(self, lab: Lab, host: str, ip: str) -> None:
        self.lab, self.host, self.ip = lab, host, ip
        self._changes: list[tuple[float, str | None, str]] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> NeighbourWatch:
        self._proc = self.lab.popen(
            self.host, ["ip", "monitor", "neigh"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        # The entry as it is now, after the monitor is listening: a change from here on is not missed.
        time.sleep(0.05)
        self._add(time.monotonic(), self.lab.neighbour_mac(self.host, self.ip), "initial")
        self._thread = threading.Thread(target=self._read, name=f"neigh-{self.host}", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            words = raw.decode(errors="replace").split()
            deleted = bool(words) and words[0] == "Deleted"
            words = words[1:] if deleted else words
            if not words or words[0] != self.ip:
                continue
            mac = words[words.index("lladdr") + 1] if "lladdr" in words else None
            self._add(time.monotonic(), None if deleted else mac, "DELETED" if deleted else words[-1])

    def _add(self, at: float, mac: str | None, state: str) -> None:
        with self._lock:
            if len(self._changes) < self.MAX_CHANGES:
                self._changes.append((at, mac.lower() if mac else None, state))

    def changes(self) -> list[tuple[float, str | None, str]]:
        """(when, lladdr or None, state) of each change, oldest first; the first is the entry at start."""
        with self._lock:
            return list(self._changes)

    def first_at(self, mac: str, after: float = 0.0) -> float | None:
        """When the entry first carried ``mac`` at or after ``after``, None if it never did."""
        for at, seen, _state in self.changes():
            if seen == mac.lower() and at >= after:
                return at
        return None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_group(proc, (signal.SIGTERM,), 1.0)
        if self._thread is not None:
            self._thread.join(1.0)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
