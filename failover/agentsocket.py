"""Where each node's agent listens, read straight from the cluster file: the CLI's fast way to its agent.

`failover swap|unswap|status` need one fact from the cluster file before they can speak to the agent: the
node's control socket. The full loader (`failover.config`: the schema and every check) costs more to
import than everything else these commands do, so they read just `cluster` and `nodes` here, with
libyaml, and the whole file is checked by the full loader anyway: before the request when the agent
cannot be reached, after its answer otherwise (see `failover.cli`).

Importing PyYAML alone takes about as long as Python's own start (~14 ms here: it compiles its regular
expressions at import), so what was read is remembered in a small cache (`CACHE`, root's, in /run): the
exact bytes of the file and the sockets they name. A file whose bytes differ in any way is read again;
a cache that is not plainly ours (owner, mode) or not plainly readable is ignored, never trusted.
The cache is NUL-separated text, read with a split: JSON would cost `json` and `re` (~4 ms) before
the request is sent.

Nothing here imports `socket` (its enum classes: ~4 ms): `_socket`, the C module it wraps, has what this
needs.

This module judges nothing: whatever it cannot read plainly it returns as unknown (None), and the full
loader, the one authority on the file, says what is wrong. The one rule it shares with the loader, where
the socket is when the file does not say, lives here and the loader uses it.
"""

from __future__ import annotations

import _socket
import os
import stat

TYPE_CHECKING = False  # typing's own flag without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

# $FAILOVER_CLI_CACHE names another file (the tests' own); an empty value turns the cache off.
CACHE = os.environ.get("FAILOVER_CLI_CACHE", "/run/failover/cli-cache.v2")
_CACHE_ENTRIES = 16  # cluster files remembered; the oldest is forgotten first
_CACHE_FORMAT = b"failover cli cache 2"  # 1 was JSON, at another path
_CACHE_FIELDS = 8
_CACHE_MAX = 1 << 20  # bytes read of it at most


def default_control_socket(cluster: str) -> Path:
    """The control socket of a node whose entry in the cluster file names none."""
    from pathlib import Path  # here: the fast commands use the path as text (pathlib costs ~3 ms to import)

    return Path(_default_socket(cluster))


def _default_socket(cluster: str) -> str:
    return f"/run/failover/{cluster}.sock"


class NodeSocket:
    """One node as the fast commands need it: name, address (as written) and control socket."""

    __slots__ = ("address", "control_socket", "family", "name")

    def __init__(self, name: str, family: int, address: str, control_socket: str) -> None:
        self.name = name
        self.family = family  # AF_INET or AF_INET6, from the address as written
        self.address = address
        self.control_socket = control_socket

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeSocket) and self._row() == other._row()

    def __hash__(self) -> int:
        return hash(self._row())

    def __repr__(self) -> str:
        return f"NodeSocket{self._row()!r}"

    def _row(self) -> tuple[str, int, str, str]:
        return self.name, self.family, self.address, self.control_socket


def _family(address: str) -> int | None:
    # inet_pton, not bind() or getaddrinfo(): a name in the address field must never reach a resolver.
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, address)
        except OSError:
            continue
        return family
    return None


def node_sockets(path: str | Path) -> tuple[NodeSocket, ...] | None:
    """Each node's name, address and control socket; None when the file does not plainly say."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # utf-8-sig's reading, without importing its codec (~1 ms of a CLI start here).
        text = raw.removeprefix(b"\xef\xbb\xbf").decode()
    except (OSError, ValueError):
        return None
    key = os.path.abspath(path)
    entries = _read_cache()
    found = _from_cache(entries.get(key), text)
    if found is None:
        found = _from_yaml(text)
        if found is not None:
            _write_cache(entries, key, text, found)
    return found


def _from_yaml(text: str) -> tuple[NodeSocket, ...] | None:
    import yaml  # here, not at the top: a cached file never pays for it

    try:
        # libyaml when PyYAML was built with it: a tenth of the pure-Python parser's time.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (ValueError, yaml.YAMLError, RecursionError):
        return None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict) or len(nodes) != 2:
        return None
    cluster = data.get("cluster")
    found: list[NodeSocket] = []
    for name, node in nodes.items():
        if not isinstance(name, str) or not isinstance(node, dict):
            return None
        address = node.get("address")
        family = _family(address) if isinstance(address, str) else None
        if not isinstance(address, str) or family is None:
            return None
        if "control_socket" in node:
            written = node["control_socket"]
            # A relative path would name a different socket in every working directory.
            if not isinstance(written, str) or not written.startswith("/"):
                return None
            # As the loader's Path would spell it, or the loader says: a trailing "/", "//" or "/./"
            # names the same socket to the agent but another file to connect().
            if os.path.normpath(written) != written:
                return None
            sock = written
        elif isinstance(cluster, str) and cluster:
            sock = _default_socket(cluster)
        else:
            return None
        found.append(NodeSocket(name, family, address, sock))
    return tuple(found)


# --- the cache ------------------------------------------------------------------------------------------


def _ours(st: os.stat_result) -> bool:
    # Whoever else can write it could send our commands to a socket of their choosing.
    return st.st_uid == os.geteuid() and not stat.S_IMODE(st.st_mode) & 0o022


def _read_cache() -> dict[str, Any]:
    """The cache's entries by absolute path of the cluster file; empty when there is no trustworthy one."""
    if not CACHE:
        return {}
    try:
        fd = os.open(CACHE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _ours(st) or not _ours(os.stat(os.path.dirname(CACHE))):
            return {}
        data = os.read(fd, _CACHE_MAX)
    except OSError:
        return {}
    finally:
        os.close(fd)
    return _decoded(data)


def _decoded(data: bytes) -> dict[str, Any]:
    """The entries a cache file holds: NUL-separated fields after a first one naming the format, each
    entry a path, the file's text and the two nodes' name, address and socket; empty if any of it is
    not so. (No parser is imported for it: `json` would bring `re`, ~4 ms; `marshal` sizes its lists by
    what the file says, so a damaged file could ask for gigabytes.)"""
    fields = data.split(b"\0")
    if fields[0] != _CACHE_FORMAT or fields[-1] != b"" or (len(fields) - 2) % _CACHE_FIELDS:
        return {}
    try:
        words = [raw.decode("utf-8", "surrogateescape") for raw in fields[1:-1]]
    except UnicodeDecodeError:
        return {}
    entries: dict[str, Any] = {}
    for at in range(0, len(words), _CACHE_FIELDS):
        path, text, *nodes = words[at:at + _CACHE_FIELDS]
        entries[path] = {"text": text, "nodes": [nodes[:3], nodes[3:]]}
    return entries


def _encoded(entries: dict[str, Any]) -> bytes | None:
    """What `_decoded` reads back as `entries`; None when a field holds a NUL (no cache then)."""
    words: list[str] = []
    for path, entry in entries.items():
        words += [path, entry["text"], *entry["nodes"][0], *entry["nodes"][1]]
    if any("\0" in word for word in words):
        return None
    return b"\0".join([_CACHE_FORMAT, *(w.encode("utf-8", "surrogateescape") for w in words), b""])


def _from_cache(entry: object, text: str) -> tuple[NodeSocket, ...] | None:
    # Only for the very bytes that were read: any edit, even one of a comment, reads the file again.
    if not isinstance(entry, dict) or entry.get("text") != text:
        return None
    rows = entry.get("nodes")
    if not isinstance(rows, list) or len(rows) != 2:
        return None
    found = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(v, str) for v in row)
                and row[2].startswith("/") and os.path.normpath(row[2]) == row[2]):
            return None
        name, address, sock = row
        family = _family(address)
        if family is None:
            return None
        found.append(NodeSocket(name, family, address, sock))
    return tuple(found)


def _write_cache(entries: dict[str, Any], key: str, text: str, found: tuple[NodeSocket, ...]) -> None:
    """Remember `found` for `text`; quietly nothing where the cache cannot be written (not root, no /run)."""
    if not CACHE:
        return
    entries.pop(key, None)
    entries[key] = {"text": text, "nodes": [[n.name, n.address, n.control_socket] for n in found]}
    kept = dict(list(entries.items())[-_CACHE_ENTRIES:])
    data = _encoded(kept)
    if data is None or len(data) > _CACHE_MAX:
        return
    folder = os.path.dirname(CACHE)
    tmp = f"{CACHE}.{os.getpid()}.tmp"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _ours(os.stat(folder)):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, CACHE)  # readers see the old cache or the new one, never half of one
    except OSError:
        import contextlib  # here: a cache written is a file read with PyYAML, this is nothing beside it

        with contextlib.suppress(OSError):
            os.unlink(tmp)
