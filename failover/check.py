"""Host checks for `failover check` and for the preflight of a dry run: each finding with its exact fix.

Owns what is checked about one node on this host (its key, interface, access log and the kind of proof
its format gives, kernel settings, what the connection handoff needs, where the journal goes) and how a
finding is written.
Reads files, /proc and /sys only; changes nothing, sends nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from failover import sysctl
from failover.accesslog import APACHE_COMBINED_SERVER, NGINX_COMBINED_SERVER, LogFormat
from failover.config import ClusterConfig, ConfigError, NodeConfig, keys_for
from failover.findings import FAIL as FAIL
from failover.findings import OK as OK
from failover.findings import WARN as WARN
from failover.findings import Check
from failover.findings import failed as failed

Finding = Check  # the name the host checks have always used

TAIL_BYTES = 64 * 1024
TAIL_LINES = 20
IFF_UP = 0x1
TCP_LISTEN = "0A"
Listener = tuple[IPv4Address | IPv6Address, int]  # bound address, port


def host_checks(config: ClusterConfig, node: NodeConfig) -> list[Finding]:
    """Everything about `node` on this host; the cluster file itself was already loaded."""
    return [
        key_finding(config),
        interface_finding(node.interface),
        access_log_finding(config, node),
        proof_finding(config, node),
        *sysctl_findings(config, node),
        *handoff_findings(config),
        drain_hook_finding(config),
        hold_finding(),
        journal_finding(node.journal),
    ]


def key_finding(config: ClusterConfig) -> Finding:
    try:
        keys = keys_for(config.auth)
    except ConfigError as err:
        path = config.auth.key_file
        fix = (
            f"head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}, "
            "then copy the same file to the peer"
            if "cannot read" in err.problem or "bytes" in err.problem
            else f"chmod 600 {path}"
        )
        return Finding("key", FAIL, str(err), fix)
    rotating = " (and the previous key, rotation under way)" if len(keys) > 1 else ""
    return Finding("key", OK, f"{config.auth.key_file}: readable, {len(keys[0])} bytes{rotating}")


def interface_finding(interface: str) -> Finding:
    try:
        socket.if_nametoindex(interface)
    except OSError:
        return Finding(
            "interface",
            FAIL,
            f"{interface}: no such interface on this host",
            "set vip.interface (or nodes.<name>.interface) to the interface of the service network",
        )
    try:
        flags = int((Path("/sys/class/net") / interface / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return Finding("interface", OK, f"{interface}: exists (its flags could not be read)")
    if not flags & IFF_UP:
        return Finding("interface", FAIL, f"{interface}: down", f"ip link set {interface} up")
    return Finding("interface", OK, f"{interface}: up")


def tail_lines(path: Path, max_lines: int = TAIL_LINES) -> list[str]:
    """The last complete lines of a file, read from its end (an access log may be large)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        data = f.read(TAIL_BYTES)
    lines = data.decode(errors="replace").splitlines()
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first one is cut
    return [line for line in lines if line.strip()][-max_lines:]


def access_log_finding(config: ClusterConfig, node: NodeConfig) -> Finding:
    path, spec = node.access_log, config.confirm.log_format
    if config.confirm.mode == "none":
        return Finding("access_log", OK, f"{path}: not read (confirm.mode: none)")
    try:
        fmt = LogFormat.named(spec)
    except ValueError as err:
        return Finding("access_log", FAIL, str(err), "set confirm.log_format to combined, common or a regex")
    try:
        lines = tail_lines(path)
    except OSError as err:
        return Finding(
            "access_log",
            FAIL,
            f"{path}: cannot read: {err.strerror or err}",
            f"point nodes.{node.name}.access_log at the web server's access log (nginx: access_log {path};)",
        )
    if not lines:
        return Finding("access_log", WARN, f"{path}: readable but empty, so its format cannot be checked")
    parsed = sum(1 for line in lines if fmt.parse(line) is not None)
    if parsed == 0:
        return Finding(
            "access_log",
            FAIL,
            f"{path}: none of its last {len(lines)} lines is in the {fmt.name} format: {lines[-1][:120]!r}",
            "set confirm.log_format to the server's format (combined, common, or a regex with named "
            "groups client and time)",
        )
    level = OK if parsed == len(lines) else WARN
    detail = f"{path}: {parsed} of its last {len(lines)} lines parse as {fmt.name}"
    return Finding("access_log", level, detail)


PROOF_BY_LOG = "log field (server address in the log)"
PROOF_BY_WITNESS = (
    "kernel witness (nftables): a line counts only if its client's connection to the VIP was answered here "
    "since the claim, but a client that also polls this node's own address has those lines counted too"
)
PROOF_BY_CLIENT = (
    "client address only: a request to this node's own address from the same client cannot be told from "
    "one to the VIP"
)


def server_address_fix(access_log: Path) -> str:
    """The exact web-server lines that put the server address in the log, and the cluster-file line."""
    return (
        f"nginx, in http {{}}: {NGINX_COMBINED_SERVER} and access_log {access_log} combined_server; | "
        f"Apache: {APACHE_COMBINED_SERVER} and CustomLog {access_log} combined_server | "
        "then set confirm.log_format: combined_server"
    )


def proof_finding(config: ClusterConfig, node: NodeConfig, witness: bool | None = None) -> Finding:
    """Which kind of proof of a move this host's log format gives, judged on the log's last lines too.

    `witness`: whether the kernel witness can stand in for a log without the server address (default:
    whether `nft` is on PATH, as the agent decides at each move)."""
    if config.confirm.mode == "none":
        return Finding("proof", OK, "none asked (confirm.mode: none)")
    try:
        fmt = LogFormat.named(config.confirm.log_format)
    except ValueError:
        return Finding("proof", WARN, "unknown: confirm.log_format cannot be used (see access_log)")
    try:
        entries = [e for e in map(fmt.parse, tail_lines(node.access_log)) if e is not None]
    except OSError:
        entries = []  # access_log already says why it cannot be read
    fix = server_address_fix(node.access_log)
    if entries and not any(_is_address(e.client) for e in entries):
        return Finding(
            "proof",
            FAIL,
            f"{node.access_log}: the client field of its last {len(entries)} lines is not an address, so no "
            "request would count",
            "log the client address: nginx $remote_addr; Apache %a (or HostnameLookups Off)",
        )
    if not fmt.destination_known:
        if witness if witness is not None else shutil.which("nft") is not None:
            return Finding("proof", WARN, f"{fmt.name} format: {PROOF_BY_WITNESS}", fix)
        return Finding("proof", WARN, f"{fmt.name} format, no nft: {PROOF_BY_CLIENT}", fix)
    no_server = sum(1 for e in entries if e.server is None)
    if entries and no_server == len(entries):
        return Finding(
            "proof",
            FAIL,
            f"{node.access_log}: the server field of none of its last {len(entries)} lines is an address, so "
            "no request would count",
            fix,
        )
    detail = f"{fmt.name} format: {PROOF_BY_LOG}"
    if no_server:
        return Finding("proof", WARN, f"{detail}; {no_server} of its last {len(entries)} lines lack it")
    return Finding("proof", OK, detail)


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def tcp_listeners(family: int, proc: Path = Path("/proc/net")) -> list[Listener]:
    """(address, port) of every listening TCP socket of the family in this namespace; [] if unreadable."""
    try:
        rows = (proc / ("tcp" if family == 4 else "tcp6")).read_text().splitlines()[1:]
    except OSError:
        return []
    found = []
    for row in rows:
        fields = row.split()
        if len(fields) < 4 or fields[3] != TCP_LISTEN:
            continue
        hex_addr, hex_port = fields[1].split(":")
        raw = bytes.fromhex(hex_addr)
        # /proc/net/tcp prints each 32-bit word in host (little-endian) order.
        words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
        found.append((ip_address(b"".join(words)), int(hex_port, 16)))
    return found


def vip_has_listener(vip: str, proc: Path = Path("/proc/net")) -> bool:
    """Whether a TCP listener is bound to the VIP itself (not the wildcard address)."""
    ip = ip_address(vip)
    return any(address == ip for address, _ in tcp_listeners(ip.version, proc))


def sysctl_findings(config: ClusterConfig, node: NodeConfig) -> list[Finding]:
    judged = sysctl.judge(
        node.interface,
        config.vip.family,
        drain=config.swap.drain_ms > 0,
        vip_bound=vip_has_listener(str(config.vip.ip)),
    )
    return judged


def handoff_findings(
    config: ClusterConfig, net: Path = Path("/proc/net"), sysctls: Path = sysctl.PROC
) -> list[Finding]:
    """Whether the connection handoff of a swap can work on this host: one line for each thing it needs."""
    return [nft_finding(), sock_diag_finding(), listener_finding(config, net, sysctls)]


def drain_hook_finding(config: ClusterConfig) -> Finding:
    """Whether something closes idle keep-alive connections after a release, so the drain can end."""
    hooks = config.hooks.drain
    if config.swap.drain_ms == 0:
        return Finding("drain hook", OK, "swap.drain_ms is 0: no drain")
    if not hooks:
        return Finding(
            "drain hook",
            WARN,
            "hooks.drain is empty: an idle keep-alive client keeps the old holder draining until "
            f"swap.drain_max_ms ({config.swap.drain_max_ms} ms), and a swap waits for it",
            "hooks: {drain: [[/usr/sbin/nginx, -s, reload]]} (Apache: [[/usr/sbin/apachectl, -k, graceful]])",
        )
    missing = [argv[0] for argv in hooks if not os.access(argv[0], os.X_OK)]
    if missing:
        return Finding(
            "drain hook",
            WARN,
            f"hooks.drain: {missing[0]} is not an executable file on this host",
            "install it, or name the web server's program by its absolute path",
        )
    return Finding("drain hook", OK, " ".join(hooks[0]) + (f" (+{len(hooks) - 1})" if len(hooks) > 1 else ""))


CAP_SYS_PTRACE = 19


def _pidfd_getfd_self() -> None:
    """pidfd_getfd of a descriptor of this process's own (/dev/null): what a seccomp filter (SystemCallFilter
    without it), a kernel before 5.6 or Yama's ptrace_scope 3 refuse."""
    from failover.connectionhold import ConnectionHold

    with open(os.devnull) as probe:
        mine = ConnectionHold.getfd_of(os.getpid(), probe.fileno())
    os.close(mine)


def hold_finding(
    status: Path = Path("/proc/self/status"), call: Callable[[], None] = _pidfd_getfd_self
) -> Finding:
    """Whether a drain can hold the web server's connections (connectionhold: pidfd_getfd, and
    CAP_SYS_PTRACE over a server that runs as another user). Judged for this process, as the agent's
    unit would run it: `failover check` under the same unit settings tells the truth."""
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        effective = int(fields["CapEff"].strip(), 16)
    except (OSError, KeyError, ValueError) as err:
        return Finding("connection hold", WARN, f"cannot read the capabilities from {status}: {err}")
    if not effective >> CAP_SYS_PTRACE & 1:
        return Finding(
            "connection hold", WARN,
            "no CAP_SYS_PTRACE: a drain cannot hold the web server's connections, so a request that "
            "crosses its close of an idle keep-alive connection is answered with a reset",
            "run the agent as root with CAP_SYS_PTRACE (configs/failover-agent.service has it)",
        )  # fmt: skip
    try:
        call()
    except OSError as err:
        return Finding(
            "connection hold", WARN,
            f"pidfd_getfd refused ({err.strerror or err}): a drain cannot hold the web server's "
            "connections, so a request that crosses its close of an idle one is answered with a reset",
            "Linux 5.6 or later; under systemd SystemCallFilter=pidfd_getfd (the units have it)",
        )  # fmt: skip
    return Finding("connection hold", OK, "CAP_SYS_PTRACE, pidfd_getfd: idle connections close in order")


def nft_finding() -> Finding:
    path = shutil.which("nft")
    if path is None:
        return Finding(
            "nft",
            WARN,
            "not found: no connection handoff, so connections open on the old holder at a swap are reset",
            "apt-get install nftables",
        )
    return Finding("nft", OK, path)


def _dump_tcp_listeners() -> None:
    from failover.pyroute2_parts import DiagSocket

    diag = DiagSocket()
    try:
        diag.bind()
        diag.get_sock_stats(socket.AF_INET, 1 << TCP_LISTEN_STATE)
    finally:
        diag.close()


TCP_LISTEN_STATE = 10


def sock_diag_finding(dump: Callable[[], None] = _dump_tcp_listeners) -> Finding:
    """Whether the kernel's sock_diag answers: the handoff lists this host's connections on the VIP with
    it, the drain counts and holds them, and the leftovers are closed with its SOCK_DESTROY."""
    try:
        dump()
    except OSError as err:
        return Finding(
            "sock_diag", WARN,
            f"the kernel's socket listing does not answer ({err.strerror or err}): no connection handoff, "
            "and a drain cannot count its connections (it ends at swap.drain_ms)",
            "a kernel with CONFIG_INET_DIAG, CONFIG_INET_TCP_DIAG and CONFIG_INET_DIAG_DESTROY",
        )  # fmt: skip
    return Finding("sock_diag", OK, "TCP sockets listed by the kernel")


def _ports(ports: list[int]) -> str:
    shown = ", ".join(f":{port}" for port in sorted(set(ports))[:6])
    return shown + (", ..." if len(set(ports)) > 6 else "")


def listener_finding(
    config: ClusterConfig, net: Path = Path("/proc/net"), sysctls: Path = sysctl.PROC
) -> Finding:
    """Which listeners serve the VIP here, and whether the handoff and a restart can cover them."""
    vip = config.vip.ip
    listeners = tcp_listeners(vip.version, net)
    if vip.version == 4:  # an IPv6 socket on :: serves IPv4 too unless it is ipv6only, which /proc hides
        for address, port in tcp_listeners(6, net):
            if isinstance(address, IPv6Address) and (address.is_unspecified or address.ipv4_mapped):
                listeners.append((address.ipv4_mapped or address, port))
    on_vip = [port for address, port in listeners if address == vip]
    on_any = [port for address, port in listeners if address.is_unspecified]
    if on_vip:
        ip = "ipv4" if vip.version == 4 else "ipv6"
        name = sysctl.dotted(ip, "ip_nonlocal_bind")
        try:
            nonlocal_bind = sysctl.read(ip, "ip_nonlocal_bind", proc=sysctls)
        except (OSError, ValueError):
            nonlocal_bind = 0
        detail = f"bound to the VIP itself on {_ports(on_vip)}"
        if nonlocal_bind == 1:
            return Finding("listener", OK, f"{detail}; the handoff covers it, {name}=1 lets it start")
        return Finding(
            "listener",
            WARN,
            f"{detail}, {name} not 1: the server cannot start here while the other host holds the VIP, "
            "so after a restart this host serves nothing when the VIP comes back",
            f"{sysctl._fix(name, 1)} (or listen on the wildcard address)",
        )
    if on_any:
        return Finding("listener", OK, f"on the wildcard address ({_ports(on_any)}); the handoff covers it")
    return Finding(
        "listener",
        WARN,
        "no TCP listener on the VIP or the wildcard address: nothing here serves the VIP",
        "start the web server, listening on the wildcard address (nginx: listen 80;) or on the VIP with "
        "ip_nonlocal_bind=1",
    )


def journal_finding(path: Path) -> Finding:
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    if os.access(existing, os.W_OK):
        return Finding("journal", OK, f"{path}: writable")
    return Finding(
        "journal",
        FAIL,
        f"{path}: {existing} is not writable by this user",
        "run the agent as root, or set nodes.<name>.journal to a writable path",
    )
