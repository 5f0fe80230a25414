"""What the agent's libraries import but the agent never uses, kept out of its memory (issue 15).

Measured on this machine kind (VmRSS before and after the import, in a bare interpreter): ``ssl`` is
~3.2 MiB on top of hashlib (which maps libcrypto already), and pyroute2's ``iprsocket`` imports
``unittest.mock`` (with ``unittest``, ~1.6 MiB) for one class attribute of its synchronous socket: a
``Mock()`` used as a sink that swallows every call. In the agent's own imports both together are
1.3 MiB (39.2 -> 37.9 MiB), in the lab's running agents 41.0 / 41.2 -> 39.7 / 39.7 MiB.

- ``withhold_tls``: asyncio and http.client are written for a Python without ssl (each imports it in a
  ``try`` and does without), so with ``None`` in ``sys.modules["ssl"]`` they import as they would there.
  The agent command withholds it when no node's health URL is ``https://`` and metrics are off
  (prometheus_client imports ssl, and urllib.request's HTTPS handler, which it imports, exists only if
  http.client was imported with ssl). A health check that an http:// URL redirects to https:// gets
  TLS all the same (``https_connection``): ssl is imported then, in that agent only, and what was
  imported without it stays as it was.
- ``pyroute2_stand_ins``: while pyroute2 is imported (``failover.pyroute2_parts``), the names it
  imports but never calls on our path get stand-ins: ``ssl`` if it is withheld (``probe_msg`` imports it
  for the network probe command, which the agent never sends), and ``unittest.mock`` in an agent whose
  imports are lean. Afterwards ``sys.modules`` is as it was, so a later ``import unittest.mock`` (a
  test, a tool) gets the real module; only the modules pyroute2 already bound keep the stand-ins.
- ``scapy_without_vendor_tables``: while scapy.data is imported (``failover.announce``), tables nothing
  here reads are not built.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import http.client

# Set by `lean_agent`: the stand-ins are for an agent process only, never for a test or tool that
# imports the agent's modules.
_LEAN = {"on": False}


def withhold_tls(health_urls: Iterable[str], *, metrics: bool) -> bool:
    """Make ``import ssl`` fail, as on a Python built without it, unless a URL or the metrics server
    needs TLS or ssl is already in. True if withheld."""
    if metrics or "ssl" in sys.modules or any(u.strip().lower().startswith("https:") for u in health_urls):
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # the import system's own "not available"
    return True


def _tls_withheld() -> bool:
    return "ssl" in sys.modules and sys.modules["ssl"] is None


def _allow_tls() -> None:
    """From now on ``import ssl`` works again."""
    if _tls_withheld():
        del sys.modules["ssl"]


_HTTPS: dict[str, type[http.client.HTTPConnection]] = {}
_HTTPS_LOCK = threading.Lock()  # health checks run in threads: one copy of http.client, made once


def https_connection() -> type[http.client.HTTPConnection]:
    """http.client's HTTPSConnection, also where http.client was imported with ssl withheld (it then has
    none): ssl is imported, and a second copy of http.client, run with it, gives the class. ValueError
    on a Python built without ssl."""
    import http.client  # here: imported at the top, it would import ssl before `withhold_tls`

    found: type[http.client.HTTPConnection] | None = getattr(http.client, "HTTPSConnection", None)
    if found is not None:
        return found
    with _HTTPS_LOCK:
        if "class" not in _HTTPS:
            _allow_tls()
            spec = importlib.util.find_spec("http.client")
            assert spec is not None and spec.loader is not None
            client = importlib.util.module_from_spec(spec)  # not in sys.modules: http.client stays as is
            spec.loader.exec_module(client)
            https = getattr(client, "HTTPSConnection", None)
            if https is None:
                raise ValueError("https:// needs Python's ssl module, which this Python lacks")
            _HTTPS["class"] = https
        return _HTTPS["class"]


def lean_agent(health_urls: Iterable[str], *, metrics: bool = False) -> None:
    """Called once by `failover agent`, before the agent's modules are imported."""
    withhold_tls(health_urls, metrics=metrics)
    _LEAN["on"] = True


class _Sink:
    """What ``unittest.mock.Mock()`` is to pyroute2's ``NotLocal.msg_queue``: every attribute and every
    call answers itself, nothing happens."""

    def __getattr__(self, name: str) -> _Sink:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Sink:
        return self


class _Unavailable(ModuleType):
    """A module imported but withheld: any use of it says so (AttributeError, so ``hasattr`` and
    ``getattr(m, name, default)`` answer as for a name the module lacks)."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self.__name__} is withheld from this agent (failover.lean): no {name}")


def _pyroute2_stand_ins() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    if _tls_withheld():
        found["ssl"] = _Unavailable("ssl")
    if _LEAN["on"] and "unittest" not in sys.modules:
        mock = ModuleType("unittest.mock")
        mock.Mock = _Sink  # type: ignore[attr-defined]
        package = ModuleType("unittest")
        package.mock = mock  # type: ignore[attr-defined]
        found.update({"unittest": package, "unittest.mock": mock})
    return found


@contextlib.contextmanager
def _in_sys_modules(stand_ins: dict[str, ModuleType]) -> Iterator[None]:
    """`stand_ins` in ``sys.modules`` for the block; ``sys.modules`` as it was afterwards (a withheld
    ssl withheld again), on failure too."""
    missing = object()
    before = {name: sys.modules.get(name, missing) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in before.items():
            if module is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module  # type: ignore[assignment]


@contextlib.contextmanager
def pyroute2_stand_ins() -> Iterator[None]:
    """For the time of pyroute2's import."""
    with _in_sys_modules(_pyroute2_stand_ins()):
        yield


@contextlib.contextmanager
def scapy_without_vendor_tables() -> Iterator[None]:
    """For the time of ``import scapy.data``: its MAC vendor table (Wireshark's, ~50,000 prefixes) and
    Bluetooth company names are never built. ``failover.announce`` empties both after the import anyway
    (scapy consults them only to print names); built and dropped, they left ~1 MiB more resident in the
    agent than never built (measured after malloc_trim: 37.9 vs 36.9 MiB of imports). scapy's cache of
    them (~/.cache/scapy) is neither read nor written meanwhile, so no other scapy user on the host
    ever meets the empty tables. A host with Wireshark's own manuf file still has it read, then dropped."""
    if "scapy.data" in sys.modules:
        yield
        return
    import scapy.main

    manuf = ModuleType("scapy.libs.manuf")
    manuf.DATA = ""  # type: ignore[attr-defined]
    bluetooth = ModuleType("scapy.libs.bluetoothids")
    bluetooth.DATA = {}  # type: ignore[attr-defined]
    cache = scapy.main.SCAPY_CACHE_FOLDER
    scapy.main.SCAPY_CACHE_FOLDER = None  # read by scapy.data's loaders as they are defined
    try:
        with _in_sys_modules({manuf.__name__: manuf, bluetooth.__name__: bluetooth}):
            yield
    finally:
        scapy.main.SCAPY_CACHE_FOLDER = cache
