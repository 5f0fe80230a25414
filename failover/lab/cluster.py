"""A whole failover cluster in the namespace lab: nginx and an agent on live and backup, a client.

Used by `failover lab rehearse|up|bench` and by the integration tests. The agents are real processes
(`python -m failover agent`) in their namespaces, configured by a generated cluster file and key.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

import yaml

from failover import control
from failover.lab.netns import VIP, VIP6, VIP_ROUTED, Lab, LabHost, stop_group
from failover.lab.nginx import Nginx

SERVERS = ("live", "backup")
MOVE_MARGIN_S = 30.0  # a move's own steps on a busy host, past the drain it may wait for


def lab_vip(ipv6: bool = False, router: str | None = None) -> IPv4Interface | IPv6Interface:
    """The VIP of a lab: in the servers' subnet, IPv6 or IPv4 (a /25 when the client is routed)."""
    if ipv6:
        return VIP6
    return VIP_ROUTED if router is not None else VIP


def node_address(host: LabHost, ipv6: bool) -> IPv4Address | IPv6Address:
    return host.address6 if ipv6 else host.address


DRAIN_HOOK = "drain-hook"  # in the workdir: `nginx -s reload` for the node it runs on


def write_drain_hook(workdir: Path) -> Path:
    """The lab's hooks.drain program: each node's nginx has its own prefix, the cluster file is shared."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    path = workdir / DRAIN_HOOK
    root = f'{workdir}/"$FAILOVER_NODE"'
    path.write_text(f'#!/bin/sh\nexec {nginx} -p {root}/ -c {root}/nginx.conf -s reload\n')
    path.chmod(0o755)
    return path


def cluster_document(
    lab: Lab, workdir: Path, overrides: Mapping[str, Any] | None = None, *, ipv6: bool = False
) -> dict[str, Any]:
    """The cluster file for this lab: one file for both agents, with per-node paths in workdir.

    With ``ipv6`` everything the agents do goes over IPv6: the VIP, the nodes' addresses (heartbeats,
    health checks, the connection handoff, which needs the old holder's address in the VIP's family).
    """
    vip = lab_vip(ipv6, lab.router)
    nodes: dict[str, Any] = {}
    for name in SERVERS:
        host = lab.host(name)
        address = node_address(host, ipv6)
        nodes[name] = {
            "address": str(address),
            "home": name == "live",
            "health_url": f"http://[{address}]/" if ipv6 else f"http://{address}/",
            "access_log": str(workdir / name / "access.log"),
            "control_socket": str(workdir / name / "agent.sock"),
            "state_dir": str(workdir / name / "state"),
        }
    doc: dict[str, Any] = {
        "cluster": "lab",
        "vip": {"address": str(vip), "interface": "eth0"},
        "auth": {"key_file": str(workdir / "lab.key")},
        "heartbeat": {"port": 5405, "interval_ms": 50, "dead_after_ms": 250},
        "announce": {"schedule_ms": [0, 200, 1100, 2300]},
        "swap": {"step_timeout_ms": 1000},
        "health": {"timeout_ms": 1000},
        # The defaults a user gets: the agents themselves leave out the nodes, loopback and their own checks.
        "confirm": {"mode": "traffic", "requests": 3},
        # As the README asks of a host with nginx: the old holder's idle keep-alive connections close in
        # order once it released (nginx -s reload), so its drain ends when the work does.
        "hooks": {"drain": [[str(workdir / DRAIN_HOOK)]]},
        "nodes": nodes,  # last: tests append to it as text
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def cli_command() -> list[str]:
    """How an operator starts the CLI: the `failover` script that installing the project put beside this
    interpreter (what the README has them type), or `python -m failover` where there is none of ours."""
    script = Path(sys.executable).with_name("failover")
    try:
        with open(script, "rb") as f:
            first = f.readline().strip()
        # This venv's interpreter, by whichever name ran pip (`python` or `python3`).
        named = Path(os.fsdecode(first.removeprefix(b"#!")))
        ours = first.startswith(b"#!") and named.parent == script.parent and named.samefile(sys.executable)
    except OSError:
        ours = False
    return [str(script)] if ours else [sys.executable, "-m", "failover"]


class LabCluster:
    def __init__(
        self,
        workdir: Path | None = None,
        *,
        hosts: tuple[str, ...] = ("live", "backup", "client"),
        overrides: Mapping[str, Any] | None = None,
        keep_workdir: bool = False,
        ipv6: bool = False,
        router: str | None = None,
    ) -> None:
        """``ipv6``: an IPv6 VIP and nodes; ``router``: the client behind a router (netns.ROUTER_MODES)."""
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="failover-lab-")).resolve()
        self.keep_workdir = keep_workdir
        self.ipv6 = ipv6
        self.lab = Lab(hosts=hosts, router=router)
        self.vip = lab_vip(ipv6, router)
        self.overrides = overrides
        self.config_path = self.workdir / "cluster.yaml"
        self.nginx: dict[str, Nginx] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._compiled = False  # the CLI's modules, for move()

    def __enter__(self) -> LabCluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- building ----------------------------------------------------------------------------------

    def up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lab.up()
        key = self.workdir / "lab.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        write_drain_hook(self.workdir)
        self.write_config(cluster_document(self.lab, self.workdir, self.overrides, ipv6=self.ipv6))
        for name in SERVERS:
            # As the README asks of real hosts: ARP only for addresses on the interface itself, so the
            # old holder's drain copy of the VIP (on lo) stays silent.
            for conf in ("all", "eth0"):
                self.lab.set_sysctl(name, f"net.ipv4.conf.{conf}.arp_ignore", "1")
                self.lab.set_sysctl(name, f"net.ipv4.conf.{conf}.arp_announce", "2")
        for name in SERVERS:
            self.nginx[name] = Nginx(self.lab, name, self.workdir)
            self.nginx[name].start()
        # The lab starts like production: the VIP on its home node, put there by the operator.
        nodad = ["nodad"] if self.ipv6 else []
        self.lab.run("live", ["ip", "addr", "add", str(self.vip), "dev", "eth0", *nodad])
        for name in SERVERS:
            self.start_agent(name)
        self.wait_ready()

    def document(self) -> dict[str, Any]:
        """The cluster file as it is now, to change and write back."""
        doc: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return doc

    def write_config(self, doc: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))

    def start_agent(
        self, name: str, env: Mapping[str, str] | None = None, config: Path | None = None
    ) -> None:
        """Start `name`'s agent; `config` gives it a cluster file of its own (default: the shared one)."""
        log = (self.workdir / name / "agent.log").open("ab")
        package_root = str(Path(__file__).resolve().parents[2])
        full_env = {**os.environ, "PYTHONPATH": package_root, **(env or {})}
        argv = [sys.executable, "-m", "failover", "agent", "-c", str(config or self.config_path),
                "--node", name, "--log-json"]
        self.agents[name] = self.lab.popen(name, argv, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        log.close()

    def stop_agent(self, name: str, sig: signal.Signals = signal.SIGTERM) -> int | None:
        proc = self.agents.pop(name, None)
        if proc is None:
            return None
        if sig == signal.SIGKILL:
            proc.kill()
        else:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_group(proc, (signal.SIGKILL,), 2.0)
            return None

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until both agents answer and each hears the other."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if all(self.status(name)["peer"]["alive"] for name in SERVERS):
                    return
            except control.ControlError as err:
                last = str(err)
            for name, proc in self.agents.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"agent {name} exited with {proc.returncode}:\n{self.agent_log(name)}")
            time.sleep(0.05)
        raise RuntimeError(f"agents not ready within {timeout:.0f} s ({last})")

    def down(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        for server in self.nginx.values():
            server.stop()
        self.lab.down()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- using --------------------------------------------------------------------------------------

    def socket(self, name: str) -> Path:
        return self.workdir / name / "agent.sock"

    def status(self, name: str) -> dict[str, Any]:
        replies = list(control.request(self.socket(name), {"cmd": "status"}, timeout=5.0))
        final = replies[-1]
        if final["type"] != "done":
            raise control.ControlError(final.get("error", "no status"))
        status: dict[str, Any] = final["status"]
        return status

    def move(self, move: str, via: str, timeout: float | None = None) -> dict[str, Any]:
        """Run `failover swap|unswap` for real (the CLI in via's namespace, started as from a shell on that
        host: `Lab.run_in`); returns its JSON outcome, `started` just before the spawn. By default it may
        take as long as the old holder may drain (the CLI waits for that) and `MOVE_MARGIN_S` more."""
        if timeout is None:
            from failover.config import load_config

            timeout = load_config(self.config_path).swap.drain_max_ms / 1000 + MOVE_MARGIN_S
        argv = [*cli_command(), move, "-c", str(self.config_path), "--node", via, "--json"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        # Compiled modules, as an installed failover has them (pip compiles them at install), also where
        # this process was told not to write any: compiled once per lab, beside the sources (gitignored).
        if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None and not self._compiled:
            package = str(Path(__file__).resolve().parents[1])
            subprocess.run([sys.executable, "-m", "compileall", "-q", package], env=env, check=False,
                           capture_output=True, timeout=120)
            self._compiled = True
        from failover.lab.rehearse import parse_outcome

        started = time.monotonic()
        done = self.lab.run_in(via, argv, timeout=timeout, env=env)
        return parse_outcome(done.stdout, done.stderr, done.returncode, started, time.monotonic())

    def holders(self) -> list[str]:
        return [h for h in self.lab.holders(str(self.vip.ip)) if h in SERVERS]

    def agent_log(self, name: str, tail: int = 40) -> str:
        path = self.workdir / name / "agent.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-tail:])
        return ""

    def agent_events(self, name: str) -> list[dict[str, Any]]:
        events = []
        with contextlib.suppress(OSError):
            for line in (self.workdir / name / "agent.log").read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events
