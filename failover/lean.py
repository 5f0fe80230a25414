"""What the agent's libraries import but the agent never uses, kept out of its memory (issue 15).

Measured on this machine kind (VmRSS of a bare interpreter, then the import): ``ssl`` is ~4.4 MiB of
what ``import asyncio`` costs (10.8 MiB with it, 6.4 without: OpenSSL's libraries mapped and set up), and
pyroute2's ``iprsocket`` imports ``unittest.mock`` (with ``unittest``, ~1.6 MiB) for one class attribute
of its synchronous socket: a ``Mock()`` used as a sink that swallows every call.

- ``withhold_tls``: asyncio and http.client are written for a Python without ssl (each imports it in a
  ``try`` and does without), so with ``None`` in ``sys.modules["ssl"]`` they import as they would there.
  The agent speaks TLS only for an ``https://`` health URL, so the agent command withholds ssl only when
  no node's health URL is one. Nothing here is needed for correctness: an agent that keeps ssl works the
  same, it is only larger.
- ``pyroute2_stand_ins``: while pyroute2 is imported (``failover.pyroute2_parts``), the names it
  imports but never calls on our path get stand-ins: ``ssl`` if it is withheld (``probe_msg`` imports it
  for the network probe command, which the agent never sends), and ``unittest.mock`` in an agent whose
  imports are lean. Afterwards ``sys.modules`` is as it was, so a later ``import unittest.mock`` (a
  test, a tool) gets the real module; only the modules pyroute2 already bound keep the stand-ins.

Measured in the lab (``bench/agent_cost.py``, both agents): 41.0 / 41.2 MiB VmRSS before, 39.5 / 39.7
with both left out.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

# Set by `lean_agent`: the stand-ins are for an agent process only, never for a test or tool that
# imports the agent's modules.
_LEAN = {"on": False}


def withhold_tls(health_urls: Iterable[str]) -> bool:
    """Make ``import ssl`` fail, as on a Python built without it, unless a URL needs TLS or ssl is
    already in. True if withheld."""
    if "ssl" in sys.modules or any(url.strip().lower().startswith("https:") for url in health_urls):
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # the import system's own "not available"
    return True


def lean_agent(health_urls: Iterable[str]) -> None:
    """Called once by `failover agent`, before the agent's modules are imported."""
    withhold_tls(health_urls)
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
    """A module imported but withheld: any use of it says so."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{self.__name__} is withheld from this agent (failover.lean): no {name}")


def _pyroute2_stand_ins() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
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
