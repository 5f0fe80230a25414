"""The few pyroute2 names the agent uses, imported from their own submodules, without pyroute2's package
``__init__``.

``import pyroute2`` (and so ``from pyroute2.iproute.linux import ...``, which runs the package first)
imports every API the library has: IPDB, NDB, conntrack, nftables, IPVS, nl80211, WireGuard, plan9 and
more, some 160 modules and ~4 MiB resident in every agent, for the address calls and the one sock_diag
dump we make (measured: an agent's imports at 45.6 MiB with the package's ``__init__``, 41.8 without).

So before the first pyroute2 import, ``pyroute2`` is put in ``sys.modules`` as its own package module
(the spec the import system would use, the same ``__path__``) whose ``__init__`` has not run yet. Every
submodule then imports as usual, and ``from pyroute2 import config`` inside them finds the submodule.
The first time anyone asks the package itself for a name that is not a submodule (``from pyroute2 import
IPRoute`` in a test or tool, ``pyroute2.NDB``), the real ``__init__`` runs on that same module object, once,
and the name is there: nothing that expects the whole package ever sees less. If pyroute2 is already
imported, nothing changes. The one thing the ``__init__`` sets up besides its names, the ``pyroute2``
logger (``pyroute2.config.log``), is imported here too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

from failover import lean

PACKAGE = "pyroute2"


def defer_package_init(name: str) -> None:
    """Make `name` importable submodule by submodule, its ``__init__`` run only when first needed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a package we can load by parts: the ordinary import happens below
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def init_on_first_use(attr: str) -> Any:
        # Called only for names the module does not have yet (PEP 562).
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # a submodule: no need for the package
        if package.__dict__.pop("__getattr__", None) is None:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        loader.exec_module(package)  # the real __init__, once, on this same module object
        return getattr(package, attr)

    package.__dict__["__getattr__"] = init_on_first_use
    sys.modules[name] = package


def _import() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    defer_package_init(PACKAGE)
    # Before the stand-ins: asyncio must see a withheld ssl as missing, not as the stand-in.
    importlib.import_module("asyncio")
    # What pyroute2 imports but the agent never calls on (ssl, unittest.mock): `failover.lean`.
    with lean.pyroute2_stand_ins():
        importlib.import_module("pyroute2.config.log")
        return (
            importlib.import_module("pyroute2.iproute.linux"),
            importlib.import_module("pyroute2.netlink.exceptions"),
            importlib.import_module("pyroute2.netlink.rtnl"),
            importlib.import_module("pyroute2.netlink.diag"),
        )


_linux, _exceptions, _rtnl, _diag = _import()

AsyncIPRoute: Any = _linux.AsyncIPRoute
NetlinkError: Any = _exceptions.NetlinkError
RTMGRP_IPV4_IFADDR: int = _rtnl.RTMGRP_IPV4_IFADDR
RTMGRP_IPV6_IFADDR: int = _rtnl.RTMGRP_IPV6_IFADDR
DiagSocket: Any = _diag.DiagSocket

__all__ = ["RTMGRP_IPV4_IFADDR", "RTMGRP_IPV6_IFADDR", "AsyncIPRoute", "DiagSocket", "NetlinkError"]
