"""`failover lab ...`: the command-line side of the namespace lab (root only)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from failover.lab.netns import cleanup_prefix

# `lab up` leaves a lab running for manual practice; `lab down` finds it here.
CURRENT = Path(os.environ.get("FAILOVER_LAB_STATE", "/run/failover-lab/current.json"))


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("failover: the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.lab_command == "rehearse":
        return _rehearse(args)
    if args.lab_command == "bench":
        from failover.lab.bench import bench

        return bench(args.pairs, args.json)
    if args.lab_command == "up":
        return _up()
    if args.lab_command == "down":
        return _down()
    if args.lab_command == "exec":
        return _exec(args.host, args.argv)
    return 2


def _rehearse(args: argparse.Namespace) -> int:
    from failover.lab.rehearse import format_report, rehearse

    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    report = rehearse(say, keep_workdir=args.keep_workdir, ipv6=args.ipv6, router=args.router)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


def _up() -> int:
    from failover.lab.cluster import LabCluster

    if CURRENT.exists():
        print(f"failover: a lab is already up ({CURRENT}); run `failover lab down` first", file=sys.stderr)
        return 1
    cluster = LabCluster(keep_workdir=True)
    try:
        cluster.up()
    except BaseException:
        cluster.keep_workdir = False
        cluster.down()  # a lab that did not come up whole leaves nothing behind
        raise
    # Detach: the namespaces, nginx and agents outlive this command until `lab down`.
    cluster.lab.detach()
    state = {
        "prefix": cluster.lab.prefix,
        "workdir": str(cluster.workdir),
        "config": str(cluster.config_path),
        "hosts": {name: cluster.lab.netns(name) for name in cluster.lab.hosts},
    }
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    CURRENT.write_text(json.dumps(state, indent=2))
    # The venv's own entry point, so the hints work whether or not `failover` is on root's PATH.
    me = shutil.which("failover") or f"{sys.executable} -m failover"
    print(f"lab {cluster.lab.prefix} is up; cluster file {cluster.config_path}")
    print(f"  {me} lab exec live -- {me} status -c {cluster.config_path} --node live")
    print(f"  {me} lab exec live -- {me} swap -c {cluster.config_path} --node live")
    print(f"  {me} lab exec client -- curl -s http://203.0.113.10/")
    print(f"  {me} lab down")
    return 0


def _down() -> int:
    try:
        state = json.loads(CURRENT.read_text())
    except (OSError, ValueError):
        print(f"failover: no lab is up ({CURRENT} missing)", file=sys.stderr)
        return 1
    cleanup_prefix(str(state["prefix"]))  # kills whatever runs in the namespaces, then deletes them
    shutil.rmtree(state["workdir"], ignore_errors=True)
    CURRENT.unlink(missing_ok=True)
    print(f"lab {state['prefix']} is down")
    return 0


def _exec(host: str, argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        state = json.loads(CURRENT.read_text())
        netns = state["hosts"][host]
    except (OSError, ValueError, KeyError):
        print(f"failover: no lab is up, or it has no host {host!r}", file=sys.stderr)
        return 1
    os.execvp("ip", ["ip", "netns", "exec", netns, *argv])
