"""The client load from the lab side: a process in one lab host's namespace, started until it says it is
ready, stopped by its stop file, its results read back (``start_reporting`` serves the download too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failover.lab.client_records import Request, load_records, load_rsts
from failover.lab.netns import stop_group

if TYPE_CHECKING:
    from failover.lab.netns import Lab


def start_reporting(
    lab: Lab, host: str, argv: Sequence[str], stderr_path: Path, word: str, timeout: float
) -> tuple[subprocess.Popen[bytes], float | None]:
    """Start ``argv`` (a module of this package) in host's namespace and wait, at most ``timeout``, for
    its first line ``<word> <monotonic time>``; returns the process and that time (None if it never came:
    the caller stops the process and says why)."""
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with stderr_path.open("wb") as err:
        proc = lab.popen(host, argv, stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    buf = b""
    for _ in range(int(timeout / 0.01) + 1):
        with contextlib.suppress(BlockingIOError):
            buf += proc.stdout.read() or b""
        if b"\n" in buf:
            said, _, stamp = buf.split(b"\n", 1)[0].decode().partition(" ")
            return proc, float(stamp) if said == word else None
        if proc.poll() is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return proc, None


class ClientLoad:
    """The load as a process in one lab host's namespace; its files live in a fresh dir under workdir."""

    def __init__(
        self,
        lab: Lab,
        host: str,
        target: str,
        workdir: Path,
        *,
        port: int = 80,
        interval_ms: float = 5.0,
        timeout_ms: float = 2000.0,
        duration_s: float = 30.0,
        max_requests: int = 20_000,
        keepalive_interval_ms: float | Sequence[float] = 50.0,
        rsts_from: Sequence[str] | None = None,
    ) -> None:
        """``keepalive_interval_ms``: one keep-alive connection per value (``()``: none); ``rsts_from``: the
        addresses whose RSTs the load counts in its namespace (None: the target; empty: none)."""
        self.lab = lab
        self.host = host
        self.target = target
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"load-{host}-", dir=workdir)).resolve()
        self.out = self.dir / "load.json"
        self.stop_file = self.dir / "stop"
        self.stderr_path = self.dir / "stderr.log"
        self.timeout_s = timeout_ms / 1000.0
        self.argv = [
            sys.executable, "-m", "failover.lab.client",
            "--target", target, "--port", str(port),
            "--interval-ms", str(interval_ms), "--timeout-ms", str(timeout_ms),
            "--duration-s", str(duration_s), "--max-requests", str(max_requests),
            "--out", str(self.out), "--stop-file", str(self.stop_file),
        ]  # fmt: skip
        intervals = (
            [keepalive_interval_ms]
            if isinstance(keepalive_interval_ms, float | int)
            else keepalive_interval_ms
        )
        for ms in intervals:
            self.argv += ["--keepalive-interval-ms", str(ms)]
        if not intervals:
            self.argv.append("--no-keepalive")
        sources = [target] if rsts_from is None else list(rsts_from)
        self.argv += [arg for source in sources for arg in ("--rsts-from", source)] or ["--no-rst-count"]
        self.started_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 10.0) -> float:
        """Start the load and return once it is issuing requests; returns its monotonic start time."""
        proc, stamp = start_reporting(
            self.lab, self.host, self.argv, self.stderr_path, "ready", ready_timeout
        )
        if stamp is None:
            self._reap(proc, ())
            raise RuntimeError(f"client load on {self.host} did not start:\n{self._stderr_tail()}")
        self._proc, self.started_at = proc, stamp
        return stamp

    def stop(self) -> Path:
        """Touch the stop file, wait (bounded) for the results, return the out path."""
        self.stop_file.touch()
        proc, self._proc = self._proc, None
        if proc is not None:
            # In-flight requests may take up to the timeout after the stop file is seen.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.timeout_s + 5.0)
            self._reap(proc, (signal.SIGTERM,))
        if not self.out.exists():
            raise RuntimeError(f"client load on {self.host} wrote no results:\n{self._stderr_tail()}")
        return self.out

    def records(self) -> list[Request]:
        return load_records(self.out)[0]

    def keepalive(self) -> dict[str, int]:
        return load_records(self.out)[1]

    def keepalive_by_interval(self) -> dict[str, dict[str, int]]:
        data = json.loads(self.out.read_text())
        by_interval: dict[str, dict[str, int]] = data.get("keepalive_by_interval", {})
        return by_interval

    def rsts(self) -> dict[str, Any]:
        return load_rsts(self.out)

    def _reap(self, proc: subprocess.Popen[bytes], signals: Sequence[signal.Signals]) -> None:
        stop_group(proc, signals, self.timeout_s + 3.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def _stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no stderr: {exc})"
