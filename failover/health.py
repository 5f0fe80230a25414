"""HTTP as the agents speak it: a node's health check, and the canary that proves a quiet move.

Every request the agents make carries `USER_AGENT`, so the access-log proof never counts it.

http.client, not urllib.request: the agent makes one kind of request, a GET it sends straight to the
host (never through a proxy), and urllib.request's openers and handlers are imported for nothing else
(one lab agent's smaps: 42.7 -> 42.2 MiB; an A/B of both agents: within the ~0.3 MiB noise; issue 15).
Redirects are followed as urllib did.
"""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Any

from failover import __version__, lean

USER_AGENT = f"failover/{__version__}"
CANARY_PARAM = "failover-canary"


MAX_REDIRECTS = 10  # as urllib.request's
REDIRECTS = (301, 302, 303, 307, 308)


def check_health(url: str, timeout: float) -> tuple[bool, str]:
    """GET a health URL; healthy means a 2xx answer (after redirects). Blocking: run it in a thread."""
    asked = url  # the URL asked last: a redirect's target, once there was one
    try:
        status = _get(url, timeout)
        for _ in range(MAX_REDIRECTS):
            if not isinstance(status, str):
                break
            asked = status
            status = _get(status, timeout)
    except (OSError, ValueError) as err:
        return False, f"{url}{_via(url, asked)}: {err}"
    except Exception as err:  # BadStatusLine, too many headers, ...: a backend that answers garbage
        return False, " ".join(f"{url}{_via(url, asked)}: {type(err).__name__}: {err}".split())[:300]
    if isinstance(status, str):
        return False, f"{url}: more than {MAX_REDIRECTS} redirects (the last to {status})"
    return (200 <= status < 300), f"HTTP {status} from {url}{_via(url, asked)}"


def _via(url: str, asked: str) -> str:
    """Where the answer came from, when a redirect led away from the URL configured."""
    return "" if asked == url else f" (redirected to {asked})"


def _get(url: str, timeout: float) -> int | str:
    """One GET: the answer's status, or the absolute URL a redirect points to."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    # https: also in an agent started without ssl (no health URL was https), as when a redirect leads there.
    kind = lean.https_connection() if parts.scheme == "https" else http.client.HTTPConnection
    # The port always given: without one, http.client reads an IPv6 literal's last group as the port.
    conn = kind(parts.hostname, service_port(url), timeout=timeout)
    try:
        path = parts.path or "/"
        conn.request("GET", f"{path}?{parts.query}" if parts.query else path,
                     headers={"User-Agent": USER_AGENT})  # marked: our own requests never prove a move
        resp = conn.getresponse()
        location = resp.getheader("Location")
        # The body is never read (as before): a backend that drips it cannot hold the check up.
        if resp.status in REDIRECTS and location:
            return urllib.parse.urljoin(url, location)
        return int(resp.status)
    finally:
        conn.close()


def canary_token(cluster: str, epoch: int) -> str:
    return f"{cluster}-{epoch}"


def canary_url(health_url: str, vip: Any, token: str) -> str:
    """The target's health URL aimed at the VIP, marked so its log line is recognised."""
    parts = urllib.parse.urlsplit(health_url)
    host = f"[{vip}]" if ":" in str(vip) else str(vip)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    query = f"{parts.query}&" if parts.query else ""
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path or "/", f"{query}{CANARY_PARAM}={token}", "")
    )


def service_port(url: str) -> int:
    """The port a node's service answers on, as its health_url says: what the kernel witness watches."""
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)
