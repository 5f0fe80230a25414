"""The Vagrant rehearsal: whole machines, real init, the agents as systemd units, a real reboot.

up -> swap --dry-run -> client load on -> swap (run on live) -> reboot live (the "upgrade") -> unswap
(run on live) -> load off -> report -> destroy. The report has the namespace lab's shape
(failover.lab.rehearse), built by the same code, plus `dry_run`, `reboot`, `isolation` and `clock`.
Teardown runs on success, failure, Ctrl-C and SIGTERM; every wait is bounded.

Times are measured, not believed. Each machine has its own CLOCK_MONOTONIC (on lxc they share the
host's, on VMs they do not), so the driver measures each guest's offset to its own clock over a
persistent SSH session (the smallest round trip of several pings) and moves every guest timestamp onto
its own clock: the client's request records, the agents' release/claim times from the journal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from failover.lab.client import Request, load_records, summarize  # noqa: E402
from failover.lab.rehearse import (  # noqa: E402
    SETTLE_S,
    client_report,
    format_report,
    move_report,
    parse_outcome,
    unserved_ms,
)

VIP_IP = "203.0.113.10"
SERVERS = ("live", "backup")
MACHINES = ("live", "backup", "client")
LAB_NIC = "eth1"
BOX = "failover/debian12-lxc"

UP_TIMEOUT_S = 900.0
DESTROY_TIMEOUT_S = 300.0
SSH_TIMEOUT_S = 60.0
MOVE_TIMEOUT_S = 90.0
REBOOT_TIMEOUT_S = 300.0
LOAD_LIMIT_S = 900.0  # the load stops by itself after this, whatever happens to the driver
CLOCK_PINGS = 12

Say = Callable[[str], None]


class RehearsalError(RuntimeError):
    """A step of the rehearsal failed; the message says which and why."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind through the finally blocks so the lab is destroyed."""


# --- Vagrant and SSH ------------------------------------------------------------------------------------


@dataclass
class Lab:
    provider: str
    prefix: str
    workdir: Path
    site: Path
    say: Say

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "VAGRANT_CWD": str(HERE),
            "VAGRANT_DOTFILE_PATH": str(self.workdir / "vagrant"),
            "FAILOVER_LAB_PREFIX": self.prefix,
            "FAILOVER_LAB_SITE": str(self.site),
            "VAGRANT_NO_COLOR": "1",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
        }

    @property
    def log(self) -> Path:
        return self.workdir / "vagrant.log"

    def vagrant(self, *args: str, timeout: float) -> str:
        """Run `vagrant ARGS` with its output appended to the lab's log; raise with its tail on failure."""
        with self.log.open("a") as log:
            log.write(f"\n$ vagrant {shlex.join(args)}\n")
            log.flush()
            try:
                done = subprocess.run(
                    ["vagrant", *args], env=self.env, cwd=HERE, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, timeout=timeout, start_new_session=True,
                )
            except subprocess.TimeoutExpired as exc:
                log.write(str(exc.output or ""))
                raise RehearsalError(f"vagrant {args[0]} did not finish in {timeout:.0f} s") from None
            log.write(done.stdout)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-25:])
            raise RehearsalError(f"vagrant {shlex.join(args)} failed ({done.returncode}):\n{tail}")
        return done.stdout

    def ssh_argv(self, machine: str) -> list[str]:
        return [
            "ssh", "-F", str(self.workdir / "ssh_config"),
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self.workdir}/ssh-%h",
            "-o", "ControlPersist=300", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=2",
            "-o", "ServerAliveCountMax=3", "-o", "BatchMode=yes", machine,
        ]  # fmt: skip

    def ssh(self, machine: str, command: str, *, timeout: float = SSH_TIMEOUT_S, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [*self.ssh_argv(machine), command], capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise RehearsalError(f"on {machine}: `{command}` did not finish in {timeout:.0f} s") from None
        if check and done.returncode != 0:
            raise RehearsalError(f"on {machine}: `{command}` failed ({done.returncode}): "
                                 f"{(done.stderr or done.stdout).strip()[-800:]}")
        return done


def build_box_if_absent(say: Say) -> None:
    """vagrant/box/build returns at once when the box is there and baked with today's dependencies."""
    say(f"box {BOX}: built if absent or stale (vagrant/box/build; about 2 minutes when it builds)")
    done = subprocess.run(["bash", str(HERE / "box" / "build")], timeout=1200, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in done.stdout.splitlines():
        say(f"  {line}")
    if done.returncode != 0:
        raise RehearsalError("vagrant/box/build failed")


# --- clocks -----------------------------------------------------------------------------------------------

_CLOCK_SERVER = "import sys,time\nfor _ in sys.stdin: print(repr(time.monotonic()), flush=True)"


def clock_offset(lab: Lab, machine: str) -> dict[str, float]:
    """guest monotonic - driver monotonic, from the ping with the smallest round trip (error <= rtt/2)."""
    proc = subprocess.Popen(
        [*lab.ssh_argv(machine), f"python3 -u -c {shlex.quote(_CLOCK_SERVER)}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    best: tuple[float, float] | None = None
    try:
        for _ in range(CLOCK_PINGS):
            t0 = time.monotonic()
            proc.stdin.write("\n")
            proc.stdin.flush()
            line = proc.stdout.readline()  # bounded: ServerAlive drops a dead session within ~6 s
            t1 = time.monotonic()
            if not line:
                break
            sample = (t1 - t0, float(line) - (t0 + t1) / 2)
            if best is None or sample[0] < best[0]:
                best = sample
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if best is None:
        raise RehearsalError(f"could not read {machine}'s clock")
    return {"offset_s": best[1], "error_ms": round(best[0] * 500.0, 3)}


# --- what the guests say ----------------------------------------------------------------------------------


def holders(lab: Lab) -> list[str]:
    found = []
    for name in SERVERS:
        out = lab.ssh(name, f"ip -4 -o addr show dev {LAB_NIC}").stdout
        if f" {VIP_IP}/" in out:
            found.append(name)
    return found


def agent_events(lab: Lab, machine: str, offset_s: float) -> list[dict[str, Any]]:
    """The agent's JSON log lines from the journal, `at` moved onto the driver's clock."""
    out = lab.ssh(machine, "sudo journalctl -u failover-agent -o cat --no-pager -b").stdout
    events = []
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                if isinstance(event.get("at"), (int, float)):
                    event["at"] = float(event["at"]) - offset_s
                events.append(event)
    return events


def pid1_started(lab: Lab, machine: str) -> str:
    return lab.ssh(machine, "ps -o lstart= -p 1").stdout.strip()


def isolation(lab: Lab) -> dict[str, Any]:
    """No default route in any guest, and nothing beyond the two lab networks is routable."""
    result: dict[str, Any] = {}
    for name in MACHINES:
        routes = lab.ssh(name, "ip -4 route show; ip -6 route show default").stdout.splitlines()
        result[name] = {"default_route": any(r.startswith("default") for r in routes), "routes": routes}
    result["ok"] = not any(v["default_route"] for v in result.values() if isinstance(v, dict))
    return result


# --- the client load ---------------------------------------------------------------------------------------

LOAD_DIR = "/var/tmp/failover-rehearsal"


def start_load(lab: Lab) -> None:
    cmd = (f"rm -rf {LOAD_DIR} && mkdir -p {LOAD_DIR} && cd {LOAD_DIR} && "
           f"(setsid nohup lab-load --duration-s {LOAD_LIMIT_S:.0f} --max-requests 200000 "
           f"--out {LOAD_DIR}/load.json --stop-file {LOAD_DIR}/stop >{LOAD_DIR}/out 2>{LOAD_DIR}/err "
           f"</dev/null &)")
    lab.ssh("client", cmd)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        if lab.ssh("client", f"cat {LOAD_DIR}/out", check=False).stdout.startswith("ready"):
            return
        time.sleep(0.2)
    err = lab.ssh("client", f"tail -20 {LOAD_DIR}/err", check=False).stdout
    raise RehearsalError(f"client load did not start:\n{err}")


def stop_load(lab: Lab, offset_s: float) -> tuple[list[Request], dict[str, int]]:
    """Stop the load (bounded), fetch its records, and move them onto the driver's clock."""
    lab.ssh("client", f"touch {LOAD_DIR}/stop")
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if lab.ssh("client", f"grep -q '^done' {LOAD_DIR}/out", check=False).returncode == 0:
            break
        time.sleep(0.3)
    else:
        lab.ssh("client", "pkill -TERM -f failover.lab.client", check=False)
        time.sleep(3)
    local = lab.workdir / "load.json"
    local.write_text(lab.ssh("client", f"cat {LOAD_DIR}/load.json", timeout=120).stdout)
    records, keepalive = load_records(local)
    moved = [Request(r.start - offset_s, r.end - offset_s, r.ok, r.served_by) for r in records]
    return moved, keepalive


# --- the steps -------------------------------------------------------------------------------------------


def do_move(lab: Lab, move: str, source: str, target: str, offsets: dict[str, float]) -> dict[str, Any]:
    """`sudo failover MOVE --json` on live, timed on the driver's clock, plus what netlink and ARP say."""
    started = time.monotonic()
    done = lab.ssh("live", f"sudo failover {move} --json", timeout=MOVE_TIMEOUT_S, check=False)
    ended = time.monotonic()
    outcome = parse_outcome(done.stdout, done.stderr, done.returncode, started, ended)
    # Clock error is a few ms; the window only has to contain this move's events and no other's.
    lo, hi = started - 0.5, ended + 0.5
    outcome["lab_unserved_ms"] = unserved_ms(
        agent_events(lab, source, offsets[source]), agent_events(lab, target, offsets[target]), lo, hi
    )
    found = holders(lab)
    outcome["holder_by_netlink"] = found[0] if len(found) == 1 else found
    neigh = lab.ssh("client", f"ip neigh show {VIP_IP} dev {LAB_NIC}").stdout.split()
    mac = neigh[neigh.index("lladdr") + 1] if "lladdr" in neigh else None
    target_mac = lab.ssh(target, f"cat /sys/class/net/{LAB_NIC}/address").stdout.strip()
    outcome["client_neighbour_mac"] = mac
    outcome["client_neighbour_moved"] = mac == target_mac
    return outcome


def dry_run(lab: Lab) -> dict[str, Any]:
    """`sudo failover swap --dry-run --json` on live, as the README's deploy steps do before the swap."""
    done = lab.ssh("live", "sudo failover swap --dry-run --json", timeout=MOVE_TIMEOUT_S, check=False)
    try:
        plan = json.loads(done.stdout)
    except ValueError:
        return {"ok": False, "reason": f"exit {done.returncode}: {done.stderr.strip()[-300:]}", "failed": []}
    failed = [c for c in plan.get("checks", []) if c.get("level") == "FAIL"]
    return {"ok": bool(plan.get("ok")) and done.returncode == 0, "reason": plan.get("reason"),
            "failed": failed}


def reboot(lab: Lab, machine: str, step: Say) -> dict[str, Any]:
    """Reboot `machine` from inside, as an upgrade would; proof: PID 1 restarted and /run was emptied."""
    marker = f"/run/failover-rehearsal-{secrets.token_hex(4)}"
    before = pid1_started(lab, machine)
    lab.ssh(machine, f"sudo touch {marker}")
    started = time.monotonic()
    # Detached, so the SSH session ends cleanly before the machine goes down.
    lab.ssh(machine, "sudo setsid nohup sh -c 'sleep 0.5; systemctl reboot' >/dev/null 2>&1 </dev/null &")
    step(f"reboot {machine}: `systemctl reboot` issued; waiting for it to come back (at most "
         f"{REBOOT_TIMEOUT_S:.0f} s)")
    deadline = started + REBOOT_TIMEOUT_S
    after, agent = before, ""
    while time.monotonic() < deadline:
        time.sleep(1.0)
        done = lab.ssh(machine, "ps -o lstart= -p 1; systemctl is-active failover-agent", timeout=15,
                       check=False)
        lines = done.stdout.split("\n")
        if done.returncode == 0 and len(lines) >= 2 and lines[0].strip() != before:
            after, agent = lines[0].strip(), lines[1].strip()
            break
    came_back = time.monotonic() - started
    marker_cleared = after != before and lab.ssh(machine, f"test -e {marker}", check=False).returncode == 1
    peer_alive = False
    while after != before and time.monotonic() < deadline:
        status = lab.ssh(machine, "sudo failover status --json", check=False)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(status.stdout)["peer"]["alive"]:
                peer_alive = True
                break
        time.sleep(0.5)
    return {
        "machine": machine,
        "ok": after != before and marker_cleared and agent == "active" and peer_alive,
        "pid1_started_before": before,
        "pid1_started_after": after,
        "run_marker_cleared": marker_cleared,
        "agent_active_after": agent == "active",
        "agents_hear_each_other_after": peer_alive,
        "back_after_s": round(came_back, 1),
        "started": started,
        "ended": time.monotonic(),
    }


def rehearse(lab: Lab, *, keep: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()

    def step(text: str) -> None:
        lab.say(f"[{time.monotonic() - t0:7.1f} s] {text}")

    timings: dict[str, float] = {}
    report: dict[str, Any] = {"ok": False, "provider": lab.provider, "lab": lab.prefix}
    try:
        if lab.provider == "lxc":
            build_box_if_absent(step)
        step(f"vagrant up --provider={lab.provider}: live, backup, client (prefix {lab.prefix}, "
             f"log {lab.log})")
        lab.vagrant("up", f"--provider={lab.provider}", timeout=UP_TIMEOUT_S)
        timings["up_s"] = round(time.monotonic() - t0, 1)
        timeline: list[dict[str, Any]] = []
        report["timeline"] = timeline
        (lab.workdir / "ssh_config").write_text(lab.vagrant("ssh-config", timeout=120))
        report["isolation"] = isolation(lab)
        step(f"up in {timings['up_s']} s; no default route in any guest: {report['isolation']['ok']}; "
             f"VIP on {', '.join(holders(lab)) or 'nobody'}")
        offsets = {name: clock_offset(lab, name) for name in MACHINES}
        step("guest clocks (offset to this host's monotonic clock, error): " + ", ".join(
            f"{n} {o['offset_s'] * 1000:+.1f} ms ±{o['error_ms']} ms" for n, o in offsets.items()))
        off = {n: o["offset_s"] for n, o in offsets.items()}

        report["dry_run"] = dry_run(lab)
        step("swap --dry-run (run on live): " + ("all checks passed" if report["dry_run"]["ok"] else
                                                 f"FAILED: {report['dry_run']['reason']}"))
        start_load(lab)
        step("client load started: a new connection to the VIP every 5 ms, plus one keep-alive connection")
        time.sleep(SETTLE_S)
        swap = do_move(lab, "swap", "live", "backup", off)
        timeline.append(_span("swap", swap["started"], swap["ended"], t0))
        step(f"swap (run on live): {_verdict(swap)}")
        time.sleep(SETTLE_S)

        rebooted = reboot(lab, "live", step)
        timeline.append(_span("reboot live", rebooted["started"], rebooted["ended"], t0))
        step(f"reboot live: back after {rebooted['back_after_s']} s, PID 1 restarted "
             f"({rebooted['pid1_started_before']} -> {rebooted['pid1_started_after']}), agent active: "
             f"{rebooted['agent_active_after']}, agents hear each other: "
             f"{rebooted['agents_hear_each_other_after']}")
        # A rebooted VM has a new monotonic clock: measure again.
        offsets_after = {name: clock_offset(lab, name) for name in MACHINES}
        off_after = {n: o["offset_s"] for n, o in offsets_after.items()}
        time.sleep(SETTLE_S)

        unswap = do_move(lab, "unswap", "backup", "live", off_after)
        timeline.append(_span("unswap", unswap["started"], unswap["ended"], t0))
        step(f"unswap (run on live, the target): {_verdict(unswap)}")
        time.sleep(SETTLE_S)
        records, keepalive = stop_load(lab, off["client"])
        step(f"client load stopped: {len(records)} requests")

        during_reboot = summarize(records, since=rebooted["started"], until=rebooted["ended"])
        rebooted["client"] = {"requests": during_reboot.requests, "failed": during_reboot.failed,
                              "served_by": during_reboot.served_by}
        clients = client_report(records, keepalive)
        # The first failures, each with its start on the rehearsal's clock and its error.
        clients["client"]["failures"] = [
            {"at_s": round(r.start - t0, 3), "took_ms": round((r.end - r.start) * 1000, 1),
             "error": r.served_by}
            for r in records if not r.ok
        ][:20]
        report.update({
            "swap": move_report(swap, records),
            "reboot": {k: v for k, v in rebooted.items() if k not in ("started", "ended")},
            "unswap": move_report(unswap, records),
            **clients,
            "clock": {"before_reboot": offsets, "after_reboot": offsets_after},
        })
        report["ok"] = bool(
            report["dry_run"]["ok"] and report["swap"]["ok"] and report["unswap"]["ok"]
            and report["reboot"]["ok"]
            and report["client"]["failed"] == 0 and report["served_by"]["backup"] > 0
            and report["isolation"]["ok"]
            and all(report[m].get("confirmed", True) is not False for m in ("swap", "unswap"))
        )
    except RehearsalError as err:
        report["error"] = str(err)
        step(f"FAILED: {err}")
    finally:
        timings["rehearsal_s"] = round(time.monotonic() - t0, 1)
        if keep:
            step(f"lab left running (--keep): {_keep_hint(lab)}")
        else:
            step("vagrant destroy -f")
            destroy(lab)
            timings["total_s"] = round(time.monotonic() - t0, 1)
            step(f"lab destroyed; total {timings['total_s']} s")
        report["timings"] = timings
    return report


def _span(what: str, started: float, ended: float, t0: float) -> dict[str, Any]:
    return {"step": what, "from_s": round(started - t0, 3), "to_s": round(ended - t0, 3)}


def destroy(lab: Lab) -> None:
    try:
        lab.vagrant("destroy", "-f", timeout=DESTROY_TIMEOUT_S)
    except RehearsalError as err:
        lab.say(f"vagrant destroy failed: {err}")
    if lab.provider == "lxc":
        # The after-destroy trigger removes the bridges; again here in case vagrant stopped early.
        for name in MACHINES:
            container = f"{lab.prefix}-{name}"
            if Path(f"/var/lib/lxc/{container}").exists():
                subprocess.run(["lxc-stop", "-k", "-n", container], capture_output=True, timeout=60)
                subprocess.run(["lxc-destroy", "-f", "-n", container], capture_output=True, timeout=120)
        subprocess.run(["bash", str(HERE / "lxc" / "host-net"), "down", lab.prefix], capture_output=True,
                       timeout=90)


def _keep_hint(lab: Lab) -> str:
    return (f"cd {HERE} && VAGRANT_DOTFILE_PATH={lab.workdir / 'vagrant'} FAILOVER_LAB_PREFIX={lab.prefix} "
            f"vagrant ssh live   (and `vagrant destroy -f` with the same variables when done)")


def _verdict(outcome: dict[str, Any]) -> str:
    if outcome.get("ok") and outcome.get("exit_code") == 0:
        return (f"ok in {outcome.get('duration_ms', 0):.1f} ms, VIP on {outcome['holder_by_netlink']}, "
                f"on no host for {outcome['lab_unserved_ms']} ms, client ARP moved: "
                f"{outcome['client_neighbour_moved']}")
    return f"FAILED: {outcome.get('reason')}"


def format_vagrant_report(report: dict[str, Any]) -> str:
    if "swap" not in report:
        return f"\nrehearsal FAILED before the moves: {report.get('error', '?')}"
    lines = [format_report(report)]
    r = report["reboot"]
    lines.append(f"  reboot  {r['machine']} ok={r['ok']} back after {r['back_after_s']} s; client during it: "
                 f"{r['client']['requests']} requests, {r['client']['failed']} failed")
    for move in ("swap", "unswap"):
        if "confirmed" in report[move]:
            lines.append(f"  {move:<7} confirmed by access_log: {report[move]['confirmed']}")
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    t = report.get("timings", {})
    lines.append(f"  timings up {t.get('up_s')} s, rehearsal {t.get('rehearsal_s')} s, "
                 f"total {t.get('total_s')} s")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def teardown_on_signals() -> Iterator[None]:
    def raise_interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vagrant/rehearse", description=__doc__.split("\n")[0])
    p.add_argument("--provider", default="lxc", choices=("lxc", "libvirt", "virtualbox"))
    p.add_argument("--site", type=Path, default=HERE / "site",
                   help="directory with cluster.yaml and nginx/*.conf (default vagrant/site)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards (and its workdir)")
    p.add_argument("--prefix", help="names of containers/bridges (default: fo + random hex, one per run)")
    args = p.parse_args(argv)
    if args.provider == "lxc" and os.geteuid() != 0:
        print("vagrant/rehearse: the lxc provider needs root (containers, bridges)", file=sys.stderr)
        return 2
    if shutil.which("vagrant") is None:
        print("vagrant/rehearse: vagrant is not installed (apt-get install vagrant vagrant-lxc lxc "
              "debootstrap)", file=sys.stderr)
        return 2
    prefix = args.prefix or f"fo{secrets.token_hex(3)}"
    workdir = Path(f"/var/tmp/failover-vagrant-{prefix}")
    workdir.mkdir(parents=True, exist_ok=True)
    lab = Lab(args.provider, prefix, workdir, args.site.resolve(),
              lambda text: print(text, file=sys.stderr, flush=True))
    with teardown_on_signals():
        try:
            report = rehearse(lab, keep=args.keep)
        except (KeyboardInterrupt, Interrupted) as exc:
            print(f"interrupted ({type(exc).__name__} {exc}); the lab was destroyed", file=sys.stderr)
            return 130
    report["workdir"] = str(workdir) if args.keep else None
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(format_vagrant_report(report))
    if report["ok"] and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not args.keep:
        print(f"logs kept in {workdir}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
