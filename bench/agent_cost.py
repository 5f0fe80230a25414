"""What an idle agent costs: resident memory and CPU of both lab agents, heartbeating, nothing else to do.

Builds the namespace lab (root: `failover.lab.cluster.LabCluster`, torn down on exit, on failure too),
with heartbeats every 10 ms and `dead_after_ms` 30 by default (the issue's tuned setting), lets the agents
settle, then for each agent process reads:

- RSS: VmRSS and VmHWM from /proc/PID/status, and the anonymous / file-backed split from
  /proc/PID/smaps_rollup (file-backed pages are mostly shared libraries);
- CPU: utime + stime from /proc/PID/stat (every thread), over the window, as % of one core.

    sudo .venv/bin/python bench/agent_cost.py                   # 30 s window
    sudo .venv/bin/python bench/agent_cost.py --seconds 60 --interval-ms 50 --json out.json
    sudo .venv/bin/python bench/agent_cost.py --keepalived         # and keepalived tuned, same window

`--keepalived` then measures keepalived tuned (VRRPv3, 10 ms adverts, the bench's `keepalived-tuned`
contender, `failover.lab.contenders`) the same way in a lab of its own, over the same window: each
daemon with its VRRP child (RSS and CPU summed over the process tree).

For scale, the same figures for a bare `python -c "import time; time.sleep(...)"` in the same namespace
(the interpreter's own floor) are printed too. `--bytecode pyc` (the default) runs the agents from cached
bytecode, as a `pip install` does; `--bytecode source` makes them compile every module at start, as a
checkout run with PYTHONDONTWRITEBYTECODE=1 does (compiling leaves a few MiB behind).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import failover.lab.cluster
from failover.lab import contenders
from failover.lab.cluster import SERVERS, LabCluster
from failover.lab.idle_cost import _process_tree

TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_S = 3.0


def _status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Anonymous", "Pss"):
            fields[key] = int(value.split()[0])
    return fields


def _cpu_ticks(pid: int) -> int:
    # Fields after the command name, which is in parentheses and may hold spaces: utime is the 14th field.
    rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12])


def _python_agent_pid(pid: int) -> int:
    """The agent's Python process: `ip netns exec` may have exec'd into it (same PID) or run it as a child."""
    for candidate in (pid, *_children(pid)):
        cmdline = Path(f"/proc/{candidate}/cmdline").read_bytes().split(b"\0")
        if b"agent" in cmdline and any(b"python" in part for part in cmdline[:1]):
            return candidate
    raise RuntimeError(f"no agent process under PID {pid}")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def measure(pids: dict[str, int], seconds: float) -> dict[str, dict[str, Any]]:
    start = {name: _cpu_ticks(pid) for name, pid in pids.items()}
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    out: dict[str, dict[str, Any]] = {}
    for name, pid in pids.items():
        used_s = (_cpu_ticks(pid) - start[name]) / TICKS
        mem = _status_kib(pid)
        out[name] = {
            "pid": pid,
            "rss_mib": round(mem["VmRSS"] / 1024, 1),
            "peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
            "anonymous_mib": round(mem["Anonymous"] / 1024, 1),
            "pss_mib": round(mem["Pss"] / 1024, 1),
            "threads": mem["Threads"],
            "cpu_percent_of_a_core": round(100 * used_s / elapsed, 2),
            "window_s": round(elapsed, 1),
        }
    return out


def measure_trees(roots: dict[str, int], seconds: float) -> dict[str, dict[str, Any]]:
    """As measure(), for a daemon with children (keepalived's VRRP process): summed over each tree."""
    trees = {name: _process_tree(pid) for name, pid in roots.items()}

    def ticks(tree: list[int]) -> int:
        return sum(_cpu_ticks(pid) for pid in tree if Path(f"/proc/{pid}").exists())

    start = {name: ticks(tree) for name, tree in trees.items()}
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    out: dict[str, dict[str, Any]] = {}
    for name, tree in trees.items():
        used_s = (ticks(tree) - start[name]) / TICKS
        mems = [_status_kib(pid) for pid in tree if Path(f"/proc/{pid}").exists()]
        out[name] = {
            "pid": roots[name],
            "processes": len(mems),
            "rss_mib": round(sum(m["VmRSS"] for m in mems) / 1024, 1),
            "peak_rss_mib": round(sum(m["VmHWM"] for m in mems) / 1024, 1),
            "anonymous_mib": round(sum(m["Anonymous"] for m in mems) / 1024, 1),
            "pss_mib": round(sum(m["Pss"] for m in mems) / 1024, 1),
            "threads": sum(m["Threads"] for m in mems),
            "cpu_percent_of_a_core": round(100 * used_s / elapsed, 2),
            "window_s": round(elapsed, 1),
        }
    return out


def keepalived_tuned(seconds: float, workdir: Path) -> dict[str, dict[str, Any]]:
    """keepalived tuned (the bench's contender) on live and backup, idle, over `seconds`."""
    if contenders.ensure_tools(lambda text: print(text, file=sys.stderr)).get("keepalived"):
        raise RuntimeError("keepalived is not installed and could not be")
    with contenders.contender_lab(workdir) as lab:
        daemon = contenders.KeepalivedTuned(lab, workdir)
        try:
            daemon.start()
            time.sleep(SETTLE_S)
            return measure_trees({f"keepalived {h}": pid for h, pid in daemon.daemon_pids().items()}, seconds)
        finally:
            daemon.reset()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU window (1 to 600 s)")
    ap.add_argument("--interval-ms", type=int, default=10, help="heartbeat.interval_ms")
    ap.add_argument("--dead-after-ms", type=int, default=30, help="heartbeat.dead_after_ms")
    ap.add_argument("--bytecode", choices=("pyc", "source"), default="pyc", help="how agents load modules")
    ap.add_argument("--keepalived", action="store_true", help="also keepalived tuned (10 ms adverts)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("agent_cost: needs root (network namespaces)", file=sys.stderr)
        return 2
    seconds = max(1.0, min(args.seconds, 600.0))
    with tempfile.TemporaryDirectory(prefix="failover-agent-cost-") as pyc:
        return _run(args, seconds, pyc)


def _run(args: argparse.Namespace, seconds: float, pyc: str) -> int:
    # The agents inherit this environment (LabCluster.start_agent).
    if args.bytecode == "pyc":
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = pyc
        package_root = str(Path(failover.lab.cluster.__file__).resolve().parents[2])
        subprocess.run([sys.executable, "-c", "import failover.agent"], check=True,
                       env={**os.environ, "PYTHONPATH": package_root})
    else:
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    overrides = {"heartbeat": {"interval_ms": args.interval_ms, "dead_after_ms": args.dead_after_ms}}
    with LabCluster(hosts=("live", "backup"), overrides=overrides) as cluster:
        floor_proc = cluster.lab.popen("client" if "client" in cluster.lab.hosts else "live",
                                       [sys.executable, "-c", f"import time; time.sleep({seconds + 60})"])
        time.sleep(SETTLE_S)
        pids = {name: _python_agent_pid(cluster.agents[name].pid) for name in SERVERS}
        pids["python floor"] = floor_proc.pid
        figures = measure(pids, seconds)
        floor_proc.kill()
        floor_proc.wait()
    if args.keepalived:
        with tempfile.TemporaryDirectory(prefix="failover-agent-cost-keepalived-") as workdir:
            figures.update(keepalived_tuned(seconds, Path(workdir)))
    print(f"idle agents, heartbeat every {args.interval_ms} ms, dead_after {args.dead_after_ms} ms, "
          f"CPU over {seconds:.0f} s, bytecode: {args.bytecode}")
    columns = ("rss_mib", "peak_rss_mib", "anonymous_mib", "pss_mib", "threads", "cpu_percent_of_a_core")
    heads = ("RSS MiB", "peak", "anon", "PSS", "threads", "CPU % core")
    print(f"{'process':<18}" + "".join(f" {h:>10}" for h in heads))
    for name, f in figures.items():
        print(f"{name:<18}" + "".join(f" {f[c]:>10}" for c in columns))
    if args.json:
        args.json.write_text(json.dumps({"interval_ms": args.interval_ms, "dead_after_ms": args.dead_after_ms,
                                         "bytecode": args.bytecode, "agents": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
