"""One long HTTP download from the lab's nginx, checked byte for byte: the test of a response in flight.

Run inside the client namespace: ``python -m failover.lab.download --target 203.0.113.10 --out FILE``.
It GETs ``nginx.DOWNLOAD_PATH`` on a connection of its own (``Connection: close``), prints
``started <monotonic>`` once the response head has arrived, hashes the body as it comes, and writes
``{"status", "served_by", "bytes", "content_length", "sha256", "error", "started", "first_byte_at",
"ended"}``. ``error`` is None only for a whole body (Content-Length bytes, then the server's FIN); a reset
is ``ConnectionResetError(...)``, an early end ``truncated``. Bounded: every read waits at most
``--read-timeout-s``, the whole download at most ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failover.lab.client import error_name, start_reporting
from failover.lab.netns import stop_group
from failover.lab.nginx import DOWNLOAD_PATH

if TYPE_CHECKING:
    from failover.lab.netns import Lab

MAX_TIMEOUT_S = 300.0
_CHUNK = 64 * 1024


def download(target: str, port: int, path: str, timeout_s: float, read_timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + min(timeout_s, MAX_TIMEOUT_S)
    result: dict[str, Any] = {
        "status": None, "served_by": None, "bytes": 0, "content_length": None, "sha256": None,
        "error": None, "started": started, "first_byte_at": None, "ended": None,
    }  # fmt: skip
    digest = hashlib.sha256()
    conn = http.client.HTTPConnection(target, port, timeout=read_timeout_s)
    try:
        conn.request("GET", path, headers={"Host": "lab", "Connection": "close"})
        response = conn.getresponse()
        result["first_byte_at"] = time.monotonic()
        result["status"] = response.status
        result["served_by"] = response.getheader("X-Served-By")
        length = response.getheader("Content-Length")
        result["content_length"] = None if length is None else int(length)
        print(f"started {result['first_byte_at']:.6f}", flush=True)
        while time.monotonic() < deadline:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            result["bytes"] += len(chunk)
        else:
            result["error"] = "timeout"
    except http.client.IncompleteRead:
        result["error"] = "truncated"
    except (OSError, http.client.HTTPException) as exc:
        result["error"] = error_name(exc)
    finally:
        conn.close()
    if result["error"] is None and result["bytes"] != result["content_length"]:
        result["error"] = "truncated"
    result["sha256"] = digest.hexdigest()
    result["ended"] = time.monotonic()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m failover.lab.download", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--path", default=DOWNLOAD_PATH)
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--read-timeout-s", type=float, default=5.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.timeout_s <= 0 or args.read_timeout_s <= 0:
        raise SystemExit("--timeout-s and --read-timeout-s must be > 0")
    result = download(args.target, args.port, args.path, args.timeout_s, args.read_timeout_s)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=args.out.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(result, out)
    os.replace(tmp, args.out)
    print(f"done bytes={result['bytes']} error={result['error']}", flush=True)
    return 0


class Download:
    """The download as a process in one lab host's namespace; its files live in a fresh dir under workdir."""

    def __init__(
        self, lab: Lab, host: str, target: str, workdir: Path, *, timeout_s: float = 60.0,
        read_timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        """``read_timeout_s``: the longest stall the download outlives (a stall is a broken transfer)."""
        self.lab, self.host, self.timeout_s = lab, host, min(timeout_s, MAX_TIMEOUT_S)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"download-{host}-", dir=workdir)).resolve()
        self.out = self.dir / "download.json"
        self.argv = [
            sys.executable, "-m", "failover.lab.download", "--target", target,
            "--timeout-s", str(self.timeout_s), "--read-timeout-s", str(read_timeout_s),
            "--out", str(self.out),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 10.0) -> float:
        """Start it and return once the response head has arrived: its monotonic time."""
        stderr = self.dir / "stderr.log"
        proc, stamp = start_reporting(self.lab, self.host, self.argv, stderr, "started", ready_timeout)
        if stamp is None:
            stop_group(proc)
            if proc.stdout is not None:
                proc.stdout.close()
            raise RuntimeError(f"download on {self.host} did not start: {stderr.read_text(errors='replace')}")
        self._proc = proc
        return stamp

    def wait(self) -> dict[str, Any]:
        """Wait (at most its timeout and a little) for the result; a download that did not end is stopped."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.timeout_s + 5.0)
            stop_group(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        if not self.out.exists():
            return {"error": "the download wrote no result", "bytes": 0, "sha256": None}
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


if __name__ == "__main__":
    raise SystemExit(main())
