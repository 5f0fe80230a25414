"""HTTP as the agents speak it: a node's health check, and the canary that proves a quiet move.

Every request the agents make carries `USER_AGENT`, so the access-log proof never counts it.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from failover import __version__

USER_AGENT = f"failover/{__version__}"
CANARY_PARAM = "failover-canary"


def check_health(url: str, timeout: float) -> tuple[bool, str]:
    """GET a health URL; healthy means a 2xx answer. Blocking: run it in a thread."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    opener.addheaders = [("User-Agent", USER_AGENT)]  # marked: our own requests never prove a move
    try:
        with opener.open(url, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as err:
        return False, f"HTTP {err.code} from {url}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return False, f"{url}: {reason}"
    except Exception as err:  # BadStatusLine, too many headers, ...: a backend that answers garbage
        return False, " ".join(f"{url}: {type(err).__name__}: {err}".split())[:300]
    return (200 <= status < 300), f"HTTP {status} from {url}"


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
