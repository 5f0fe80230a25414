"""pyroute2 by parts: the agent's netlink names without the package's __init__, and the whole package for
whoever asks it for more."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from failover.pyroute2_parts import defer_package_init


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"deferred_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text(textwrap.dedent(f"""
        import sys
        INIT_RUNS = getattr(sys.modules[{name!r}], "INIT_RUNS", 0) + 1
        from {name}.sub.leaf import VALUE as EVERYTHING
    """))
    (root / "sub" / "__init__.py").write_text(f"from {name} import helper\n")  # a submodule, by name
    (root / "sub" / "leaf.py").write_text("VALUE = 42\n")
    (root / "helper.py").write_text("HELPED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[mod]


def test_submodules_import_without_the_package_init(package: str) -> None:
    defer_package_init(package)
    leaf = __import__(f"{package}.sub.leaf", fromlist=["VALUE"])
    assert leaf.VALUE == 42
    pkg = sys.modules[package]
    assert "INIT_RUNS" not in vars(pkg)  # `from pkg import helper` found the submodule, ran no __init__
    assert sys.modules[f"{package}.helper"].HELPED


def test_a_name_of_the_package_itself_runs_its_init_once(package: str) -> None:
    defer_package_init(package)
    __import__(f"{package}.sub.leaf")
    pkg = sys.modules[package]
    assert pkg.EVERYTHING == 42
    assert pkg.INIT_RUNS == 1
    assert pkg.EVERYTHING == 42 and pkg.INIT_RUNS == 1  # once
    with pytest.raises(AttributeError):
        _ = pkg.no_such_name


def test_an_imported_package_is_left_alone(package: str) -> None:
    __import__(package)
    before = sys.modules[package]
    defer_package_init(package)
    assert sys.modules[package] is before and before.INIT_RUNS == 1


def test_the_agent_loads_no_more_of_pyroute2_than_it_uses() -> None:
    code = textwrap.dedent("""
        import sys
        import failover.agent
        loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
        assert "pyroute2.iproute.linux" in loaded and "pyroute2.netlink.diag" in loaded, loaded
        for unused in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.nftables",
                       "pyroute2.netlink.nl80211", "pyroute2.plan9"):
            assert unused not in sys.modules, unused
        import pyroute2
        from pyroute2 import NDB, IPRoute  # whoever wants the whole package still gets it
        assert pyroute2.AsyncIPRoute is sys.modules["failover.pyroute2_parts"].AsyncIPRoute
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

