"""How long `failover swap|unswap|status` take from exec to their first byte on the agent's socket.

A stand-in agent (a Unix socket in a temporary directory: no network, no namespaces) timestamps the first
byte of each request and answers with an error, so the CLI exits at once. Time zero is taken just before
the CLI is spawned, so the figure holds fork/exec, Python's start-up, the imports, reading the cluster
file and the connect: all the operator waits for before the agent can act. On a busy machine that wall
time mostly measures the others, so two CPU figures go with it, both immune to waiting for a core: the
CLI's CPU time up to the first byte (/proc/PID/schedstat, read while the CLI waits for the answer) and
to its exit (getrusage: user + system).

    .venv/bin/python bench/cli_startup.py            # 20 runs of each row
    .venv/bin/python bench/cli_startup.py -n 50 --json out.json

Rows: the floor (the same interpreter connecting and sending one line, nothing of failover), then each
command by `python -m failover` and by the installed `failover` script. Two bytecode modes: "pyc" is what a
`pip install` gives (compiled modules cached, here in a temporary PYTHONPYCACHEPREFIX); "source" compiles
every module at each start, which is what a checkout run with PYTHONDONTWRITEBYTECODE=1 pays. Both with
the socket lookup cache warm (`failover.agentsocket.CACHE`, here in the temporary directory, written by the
uncounted first run), as every run after the first with an unchanged cluster file; "pyc, no cache" turns
the cache off, as the first run after an edit of the file pays (PyYAML imported and the file parsed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from failover.lab.cluster import cluster_document
from failover.lab.netns import Lab

# What each command exits with when the agent answers {"type": "error"}: the CLI's documented codes.
EXPECTED_EXIT = {"status": 3, "swap": 1, "unswap": 1}
REPLY = b'{"type":"error","error":"bench: stand-in agent"}\n'
# _socket, the C module `socket` wraps: what the CLI itself connects with (failover.controlclient).
FLOOR = ("import _socket,sys; s=_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM); "
         "s.connect(sys.argv[1]); s.sendall(b'{}\\n'); s.recv(4096); sys.exit(3)")
TIMEOUT_S = 10.0


def _cluster_file(workdir: Path, sock: Path) -> Path:
    (workdir / "lab.key").write_text("k" * 64)
    # An unbuilt Lab only plans names and addresses: the lab's own cluster file, nothing is created.
    doc = cluster_document(Lab(), workdir)
    for node in doc["nodes"].values():
        node["control_socket"] = str(sock)
    path = workdir / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cpu_so_far(pid: int) -> float:
    """CPU time in ms the process has run so far (its one thread), in nanoseconds of resolution."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def _one_run(
    server: socket.socket, argv: list[str], expected: int, env: dict[str, str]
) -> tuple[float, float, float]:
    """(exec -> first byte, CPU to the first byte, CPU to exit) in ms for one CLI invocation."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(TIMEOUT_S)
            first = conn.recv(1)
            first_byte = time.monotonic()
            if not first:
                raise RuntimeError(f"{argv}: connected and sent nothing")
            while not first.endswith(b"\n"):
                more = conn.recv(4096)
                if not more:
                    break
                first = more
            cpu_first_byte = _cpu_so_far(proc.pid)  # it is blocked reading the answer: the figure holds
            conn.sendall(REPLY)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    if proc.returncode != expected:
        raise RuntimeError(f"{argv}: exit {proc.returncode}, expected {expected}: {err.decode()!r}")
    return (first_byte - start) * 1000, cpu_first_byte, (usage.ru_utime + usage.ru_stime) * 1000


def _figures(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1)}


def _row(server: socket.socket, argv: list[str], expected: int, env: dict[str, str], runs: int,
         **labels: str) -> dict[str, Any]:
    _one_run(server, argv, expected, env)  # warms the page cache and writes the pyc; not counted
    timings = [_one_run(server, argv, expected, env) for _ in range(runs)]
    return {**labels, "runs": runs, "first_byte_ms": _figures([t[0] for t in timings]),
            "cpu_to_first_byte_ms": _figures([t[1] for t in timings]),
            "cpu_to_exit_ms": _figures([t[2] for t in timings])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=20, help="runs per row (1 to 1000)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    runs = max(1, min(args.runs, 1000))

    entries = {"python -m failover": [sys.executable, "-m", "failover"]}
    script = shutil.which("failover", path=str(Path(sys.executable).parent))
    if script:
        entries["failover script"] = [script]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="failover-cli-bench-") as tmp:
        workdir = Path(tmp)
        sock_path = workdir / "agent.sock"
        config = _cluster_file(workdir, sock_path)
        base = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        base["FAILOVER_CLI_CACHE"] = str(workdir / "cli-cache")
        pyc = {**base, "PYTHONPYCACHEPREFIX": str(workdir / "pyc")}
        modes = {"pyc": pyc, "pyc, no cache": {**pyc, "FAILOVER_CLI_CACHE": ""},
                 "source": {**base, "PYTHONDONTWRITEBYTECODE": "1"}}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(sock_path))
            server.listen(4)
            server.settimeout(TIMEOUT_S)
            for mode, env in modes.items():
                floor = [sys.executable, "-c", FLOOR, str(sock_path)]
                results.append(_row(server, floor, 3, env, runs,
                                    mode=mode, entry="python floor", command="-"))
                for entry, prefix in entries.items():
                    for command, expected in EXPECTED_EXIT.items():
                        argv = [*prefix, command, "-c", str(config), "--node", "live"]
                        results.append(_row(server, argv, expected, env, runs,
                                            mode=mode, entry=entry, command=command))
    print(f"{runs} runs each; ms, min / median / max")
    columns = ("first_byte_ms", "cpu_to_first_byte_ms", "cpu_to_exit_ms")
    heads = ("exec -> first byte", "CPU to first byte", "CPU to exit")
    print(f"{'bytecode':<13} {'entry point':<19} {'command':<7}" + "".join(f" {h:>24}" for h in heads))
    for row in results:
        cells = "".join(f" {row[c]['min']:>6} / {row[c]['median']:>6} / {row[c]['max']:>6}" for c in columns)
        print(f"{row['mode']:<13} {row['entry']:<19} {row['command']:<7}{cells}")
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
