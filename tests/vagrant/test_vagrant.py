"""The Vagrant lab (vagrant/): the Vagrantfile validates for every provider, the systemd units verify,
and, as root, one whole rehearsal with the lxc provider: box (built if absent), up, swap under client
load, reboot of live, unswap, report, destroy. About 1.5 minutes with the box, 4 without.

Host tools come from Debian (vagrant/lxc/install-host installs what is missing). A test skips only when
something outside the project blocks it, and says what.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
BOX = "failover/debian12-lxc"
REHEARSAL_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def host_tools() -> None:
    tools = ("vagrant", "lxc-start", "debootstrap")
    plugins = ("vagrant-lxc", "vagrant-libvirt")
    have_plugins = shutil.which("vagrant") and all(
        p in subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120).stdout
        for p in plugins
    )
    if all(shutil.which(t) for t in tools) and have_plugins:
        return
    if os.geteuid() != 0:
        pytest.skip("vagrant, vagrant-lxc, vagrant-libvirt, lxc or debootstrap missing, and installing them "
                    "needs root")
    done = subprocess.run(["bash", str(VAGRANT_DIR / "lxc" / "install-host")], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        pytest.skip(f"could not install the host tools from Debian (apt-get): {done.stderr.strip()[-400:]}")


def _vagrant_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Its own state dir, so validating never writes a key into the checkout.
    return {**os.environ, "VAGRANT_CWD": str(VAGRANT_DIR), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
            "VAGRANT_CHECKPOINT_DISABLE": "1", **extra}


@pytest.mark.parametrize("provider", ["lxc", "libvirt", "virtualbox"])
def test_vagrantfile_validates(host_tools: None, tmp_path: Path, provider: str) -> None:
    env = _vagrant_env(tmp_path, VAGRANT_DEFAULT_PROVIDER=provider)
    if provider == "virtualbox":
        # VirtualBox itself cannot run here (no nested virtualisation); a VBoxManage that only tells its
        # version is enough for Vagrant to validate the virtualbox block.
        stub = tmp_path / "bin" / "VBoxManage"
        stub.parent.mkdir()
        stub.write_text("#!/bin/sh\necho 7.0.14r161095\n")
        stub.chmod(0o755)
        env["PATH"] = f"{stub.parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["vagrant", "validate"], env=env, cwd=VAGRANT_DIR, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout


@pytest.mark.parametrize("unit", ["failover-agent.service", "failover-agent@.service"])
def test_unit_verifies(tmp_path: Path, unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this host")
    venv_failover = REPO / ".venv" / "bin" / "failover"
    if not venv_failover.exists():
        pytest.skip("the project's .venv is missing (scripts/setup makes it)")
    text = (REPO / "configs" / unit).read_text()
    assert "ExecStart=/usr/local/bin/failover agent -c /etc/failover/" in text
    # The unit names the path a deployment installs to; here the binary lives in the venv.
    name = unit.replace("@.", "@web.")
    (tmp_path / name).write_text(text.replace("/usr/local/bin/failover", str(venv_failover)))
    done = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def _box_present() -> bool:
    listed = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True, timeout=120).stdout
    return any(line.split(" ", 1)[0] == BOX for line in listed.splitlines())


def _mirror_reachable() -> str:
    try:
        with urllib.request.urlopen("http://deb.debian.org/debian/dists/bookworm/Release", timeout=15):
            return ""
    except OSError as err:
        return str(err)


def _leftovers(prefix: str) -> list[str]:
    containers = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, timeout=60).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30).stdout
    bridges = [f"{prefix}-mg", f"{prefix}-lab"]
    return [c for c in containers if c.startswith(f"{prefix}-")] + [b for b in bridges if f" {b}:" in links]


def _sweep(prefix: str) -> None:
    for name in _leftovers(prefix):
        if name.endswith(("-mg", "-lab")):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
        else:
            subprocess.run(["lxc-stop", "-k", "-n", name], capture_output=True, timeout=60)
            subprocess.run(["lxc-destroy", "-f", "-n", name], capture_output=True, timeout=120)


@pytest.mark.root
@pytest.mark.slow
def test_rehearsal_with_lxc_machines(host_tools: None, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the lxc provider needs root (containers, host bridges)")
    if not _box_present() and (why := _mirror_reachable()):
        pytest.skip(f"no {BOX} box and the Debian mirror for building it is unreachable: {why}")
    prefix = f"fot{secrets.token_hex(3)}"
    out = tmp_path / "report.json"
    try:
        done = subprocess.run(
            [str(VAGRANT_DIR / "rehearse"), "--prefix", prefix, "--json", str(out)],
            capture_output=True, text=True, timeout=REHEARSAL_TIMEOUT_S,
        )
        left = _leftovers(prefix)
    finally:
        _sweep(prefix)
    progress = done.stderr + done.stdout
    assert out.exists(), progress
    report = json.loads(out.read_text())
    assert left == [], f"the driver left these behind: {left}"
    assert done.returncode == 0 and report["ok"], progress

    assert report["isolation"]["ok"], report["isolation"]
    for move, holder in (("swap", "backup"), ("unswap", "live")):
        m = report[move]
        assert m["ok"] and m["holder"] == holder and m["client_neighbour_moved"], m
        assert m["unserved_ms"] is not None and m["unserved_ms"] < 1000, m
        # access_log confirmation is being added to the agents (issue 3): checked once the outcome
        # reports it; None means confirmation is off (or not wired into the agent yet).
        if m.get("confirmed") is not None:
            assert m["confirmed"] is True, m
    assert report["client"]["failed"] == 0, report["client"]["failures"]
    assert report["served_by"]["live"] > 0 and report["served_by"]["backup"] > 0, report["served_by"]

    reboot = report["reboot"]
    assert reboot["ok"] and reboot["machine"] == "live", reboot
    assert reboot["pid1_started_before"] != reboot["pid1_started_after"] and reboot["run_marker_cleared"]
    assert reboot["client"]["requests"] > 0 and reboot["client"]["failed"] == 0, reboot
    steps = {s["step"]: s for s in report["timeline"]}
    assert steps["swap"]["to_s"] < steps["reboot live"]["from_s"] < steps["reboot live"]["to_s"] \
        < steps["unswap"]["from_s"], report["timeline"]
    assert report["timings"]["total_s"] < 600, report["timings"]
    shutil.rmtree(f"/var/tmp/failover-vagrant-{prefix}", ignore_errors=True)  # kept when a check fails
