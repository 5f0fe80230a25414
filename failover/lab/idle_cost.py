"""The idle cost of a daemon: CPU and RSS of its process tree, read from /proc over a few seconds."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

IDLE_SAMPLE_S = 3.0


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    for _ in range(1000):
        if not todo:
            break
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sample_idle(pids: Mapping[str, int], seconds: float = IDLE_SAMPLE_S) -> dict[str, Any]:
    """CPU % (of one core) and RSS of each daemon and its children over `seconds` of idling."""
    tick = os.sysconf("SC_CLK_TCK")
    trees = {host: _process_tree(pid) for host, pid in pids.items()}

    def ticks() -> dict[str, int]:
        out = {}
        for host, tree in trees.items():
            total = 0
            for pid in tree:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += _cpu_ticks(pid)
            out[host] = total
        return out

    before, t0 = ticks(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = ticks(), time.monotonic() - t0
    result: dict[str, Any] = {}
    for host, tree in trees.items():
        rss = 0
        for pid in tree:
            with contextlib.suppress(OSError, ValueError):
                rss += _rss_kib(pid)
        result[host] = {
            "cpu_percent": round(100.0 * (after[host] - before[host]) / tick / elapsed, 2),
            "rss_mib": round(rss / 1024.0, 1),
            "processes": len(tree),
            "seconds": round(elapsed, 2),
        }
    return result
