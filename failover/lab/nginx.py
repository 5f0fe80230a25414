"""A real nginx inside one lab host's namespace, answering every request with the host's name.

Owns the config, the files under ``workdir/<host>/`` and the process's life. Every path nginx uses,
temp directories included, lives under that directory so the system's /var/lib/nginx is never touched.
It listens on the wildcard address, so it serves a VIP as soon as the VIP is on the host. It logs in
nginx's own ``combined`` format, as an untouched nginx does, unless told ``combined_server``: then with
the very ``log_format`` line `failover check` tells an operator to add (``$server_addr`` appended).

It also serves one long download, ``DOWNLOAD_PATH``: ``DOWNLOAD_BYTES`` of fixed pseudo-random bytes
(the same on every host, ``download_body()``) at ``limit_rate`` ``DOWNLOAD_RATE`` bytes/s, so it takes
about ``DOWNLOAD_BYTES / DOWNLOAD_RATE`` seconds (20); the response names its host in ``X-Served-By``.
"""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import time
from pathlib import Path

from failover.accesslog import NGINX_COMBINED_SERVER
from failover.lab.netns import Lab, LabError, stop_group

START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
PROBE_USER_AGENT = "failover-lab-probe"
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
DOWNLOAD_PATH = "/download/blob"
DOWNLOAD_RATE = 100 * 1024  # bytes/s, nginx's limit_rate for that location
DOWNLOAD_BYTES = 20 * DOWNLOAD_RATE
_DOWNLOAD_SEED = 14
LOG_FORMATS = ("combined", "combined_server")  # nginx's built-in one, and the one with the server address


@functools.cache
def download_body() -> bytes:
    """The download's bytes: fixed, so a checksum tells a whole download from a damaged one."""
    return random.Random(_DOWNLOAD_SEED).randbytes(DOWNLOAD_BYTES)


def render_config(host: str, root: Path, log_format: str = "combined") -> str:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"lab nginx log format {log_format!r}: not one of {', '.join(LOG_FORMATS)}")
    temp = {name: root / "tmp" / name for name in _TEMP_DIRS}
    return f"""\
user root;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} notice;
events {{ worker_connections 4096; }}
http {{
    {NGINX_COMBINED_SERVER}
    access_log {root / "access.log"} {log_format};
    keepalive_timeout 75s;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen 80 default_server;
        listen [::]:80 default_server;
        location / {{
            default_type text/plain;
            return 200 "{host}\\n";
        }}
        location = {DOWNLOAD_PATH} {{
            root {root / "www"};
            default_type application/octet-stream;
            limit_rate {DOWNLOAD_RATE};
            add_header X-Served-By {host};
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground (``daemon off``), tracked by the lab so down() kills it too."""

    def __init__(self, lab: Lab, host: str, workdir: Path, log_format: str = "combined") -> None:
        self.lab = lab
        self.host = host
        self.log_format = log_format  # read at each start(): see LOG_FORMATS
        self.root = Path(workdir).resolve() / host
        self.config = self.root / "nginx.conf"
        self.access_log = self.root / "access.log"
        self.error_log = self.root / "error.log"
        self.pid_file = self.root / "nginx.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running():
            return
        for name in _TEMP_DIRS:
            (self.root / "tmp" / name).mkdir(parents=True, exist_ok=True)
        self.config.write_text(render_config(self.host, self.root, self.log_format))
        self._write_download()
        # -p and -e keep nginx off its compiled-in prefix and log paths before it has read the config.
        self._log_offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        argv = ["nginx", "-p", f"{self.root}/", "-e", str(self.error_log), "-c", str(self.config)]
        self._proc = self.lab.popen(
            self.host, [*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not self._wait_answering(START_TIMEOUT):
            self.stop()
            raise LabError(
                f"nginx on {self.host} did not answer within {START_TIMEOUT}s:\n{self.error_tail()}"
            )

    def _write_download(self) -> None:
        blob = self.root / "www" / DOWNLOAD_PATH.lstrip("/")
        body = download_body()
        if not blob.exists() or blob.read_bytes() != body:
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(body)

    def _wait_answering(self, timeout: float) -> bool:
        url = f"http://{self.lab.host(self.host).address}/"
        # A distinct user agent lets access-log readers tell this probe from client traffic.
        curl = ["curl", "-s", "-A", PROBE_USER_AGENT, "--max-time", "1", "-o", "/dev/null"]
        curl += ["-w", "%{http_code}", url]
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.02) + 1):
            if not self.running() or time.monotonic() >= deadline or self._emerg_logged():
                return False
            # nginx writes its pid file only after binding, so this tells our instance from another one
            # that already answers on the same address.
            if self._pid_file_is_ours():
                answer = self.lab.run(self.host, curl, check=False, timeout=2)
                if answer.stdout.strip() == "200":
                    return True
            time.sleep(0.02)
        return False

    def _emerg_logged(self) -> bool:
        """A fatal error since this start (nginx would otherwise retry a failed bind for 2.5 s)."""
        try:
            with self.error_log.open("rb") as log:
                log.seek(self._log_offset)
                return b"[emerg]" in log.read()
        except OSError:
            return False

    def _pid_file_is_ours(self) -> bool:
        try:
            return self._proc is not None and int(self.pid_file.read_text().strip()) == self._proc.pid
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Graceful quit (SIGQUIT), then SIGTERM, then SIGKILL the group; each step bounded. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_group(proc, (signal.SIGQUIT, signal.SIGTERM), STOP_TIMEOUT / 2)

    def error_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no error log: {exc})"
