"""The Quick start's scripts as root, as a user with sudo, and as a user on a host without sudo.

The real scripts (copied, with scripts/lib/as-root.sh, to a directory an unprivileged user can read) run as
`nobody` through setpriv: with a stand-in `sudo` on PATH that records how it was called, and with no sudo
at all. Needs root, to become `nobody`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
SCRIPTS = ("rehearse", "test", "setup", "install")
TOOLS = ("bash", "id", "basename", "dirname", "readlink", "cat")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv (util-linux) to run the scripts as nobody")


@pytest.fixture
def checkout() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="failover-asroot-") as top:
        root = Path(top)
        (root / "scripts" / "lib").mkdir(parents=True)
        for name in SCRIPTS:
            shutil.copy(REPO / "scripts" / name, root / "scripts" / name)
        shutil.copy(REPO / "scripts" / "lib" / "as-root.sh", root / "scripts" / "lib" / "as-root.sh")
        # A PATH with the few tools the check uses and no sudo.
        bare = root / "bin-no-sudo"
        bare.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, tool
            (bare / tool).symlink_to(found)
        with_sudo = root / "bin-sudo"
        shutil.copytree(bare, with_sudo, symlinks=True)
        # Records its arguments, one per line, instead of asking for a password.
        (with_sudo / "sudo").write_text(f'#!{shutil.which("bash")}\nprintf "%s\\n" "$@" > "$SUDO_LOG"\n')
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o777 if path.name == "bin-sudo" else 0o755)
        yield root


def _as_nobody(argv: list[str], path: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "--", str(path / "bash"), *argv],
        env={"PATH": str(path), **env}, cwd=cwd, capture_output=True, text=True, timeout=30,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_sudo_a_user_is_told_in_one_line_to_run_it_as_root(checkout: Path, script: str) -> None:
    done = _as_nobody([f"scripts/{script}", "--json"], checkout / "bin-no-sudo", checkout)
    assert done.returncode == 2
    assert done.stderr == f"scripts/{script}: needs root, and sudo is not installed: run it as root\n"
    assert done.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_user_with_sudo_runs_the_same_script_again_under_sudo(checkout: Path, script: str) -> None:
    log = checkout / "bin-sudo" / "sudo.log"
    done = _as_nobody([f"scripts/{script}", "-k", "two words"], checkout / "bin-sudo", checkout,
                      SUDO_LOG=str(log))
    assert done.returncode == 0, done.stderr
    again = ["--", "bash", str(checkout / "scripts" / script), "-k", "two words"]
    assert log.read_text().splitlines() == again


def test_as_root_the_check_does_nothing(tmp_path: Path) -> None:
    probe = tmp_path / "scripts" / "probe"
    (probe.parent / "lib").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "lib" / "as-root.sh", probe.parent / "lib" / "as-root.sh")
    probe.write_text('set -euo pipefail\n. "$(dirname "$0")/lib/as-root.sh"\necho "uid $(id -u):" "$@"\n')
    done = subprocess.run(["bash", str(probe), "a", "b c"], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"]})
    assert (done.returncode, done.stdout) == (0, "uid 0: a b c\n"), done.stderr
