"""Config fuzzing through the real commands: `python -m failover status|agent -c FILE`.

tests/test_config.py covers the loader in-process; here every bad file goes through the CLI as an
operator meets it. Every field of a complete cluster file is given a wrong type, an out-of-range value,
an unknown sibling, or (when required) is left out; then bad YAML, duplicate keys, and key files with the
wrong mode or size. Each must end with exit code 2 and exactly one line on stderr naming the file, the
line and the field, never a traceback. No lab needed: the files are rejected before anything binds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import package_env
from tests.test_config import BASE as CONFIG_BASE

pytestmark = [pytest.mark.chaos]

# The loader's own test file: one base cluster file for both suites, its key path made a placeholder.
BASE = CONFIG_BASE.replace("key_file: /etc/failover/web.key", "key_file: {key}")
REQUIRED = {"cluster", "vip.address", "vip.interface", "auth.key_file", "address", "health_url", "access_log"}
NUMBERS = ("-5", "4294967296000")


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    line: int | None  # the line the error must name (None: any line, or none for whole-file problems)
    field: str  # a word the error must name ("a|b": either)


def leaves(text: str) -> list[tuple[int, str, str, str]]:
    """(line number, indent, dotted key, value) for every `key: value` line of the base file."""
    found, stack = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        indent = len(raw) - len(raw.lstrip())
        key, _, value = raw.strip().partition(":")
        stack = [(i, k) for i, k in stack if i < indent]
        if value.strip():
            found.append((number, " " * indent, ".".join([k for _, k in stack] + [key]), value.strip()))
        else:
            stack.append((indent, key))
    return found


def cases(key: Path) -> list[Case]:
    base = BASE.format(key=key)
    lines = base.splitlines()
    out: list[Case] = []

    def with_line(number: int, new: str | None) -> str:
        edited = list(lines)
        if new is None:
            del edited[number - 1]
        else:
            edited[number - 1] = new
        return "\n".join(edited) + "\n"

    for number, indent, dotted, value in leaves(base):
        key_name = dotted.rsplit(".", 1)[-1]
        wrong = "{a: 1}" if value.startswith("[") else "[oops]"
        out.append(
            Case(f"{dotted}=wrong-type", with_line(number, f"{indent}{key_name}: {wrong}"), number, key_name)
        )
        if re.fullmatch(r"\d+", value) and key_name != "address":
            for bad in NUMBERS:
                out.append(
                    Case(f"{dotted}={bad}", with_line(number, f"{indent}{key_name}: {bad}"), number, key_name)
                )
        if value in ("true", "false"):
            out.append(
                Case(f"{dotted}=maybe", with_line(number, f"{indent}{key_name}: maybe"), number, key_name)
            )
        if key_name in REQUIRED or dotted in REQUIRED:
            # Left out: the key is named, or its section when that is left empty.
            out.append(
                Case(f"{dotted}=missing", with_line(number, None), None, f"{key_name}|{dotted.split('.')[0]}")
            )
        unknown = with_line(number, f"{lines[number - 1]}\n{indent}colour: blue")
        out.append(Case(f"{dotted}+unknown-sibling", unknown, number + 1, "colour"))
    out += [
        Case("yaml-unclosed-flow", base.replace("schedule_ms: [0, 200", "schedule_ms: [0, 200 ,,"), None, ""),
        Case("yaml-unterminated", base + "extra: [1, 2\n", None, ""),
        Case("yaml-tab-indent", base.replace("  interface: eth0", "\tinterface: eth0"), None, ""),
        Case("yaml-duplicate-key", base.replace("  port: 5405\n", "  port: 5405\n  port: 5406\n"), 9, "port"),
        Case("yaml-duplicate-top", base + "cluster: other\n", None, "cluster"),
        Case("yaml-top-list", "- cluster: web\n", None, ""),
        Case("yaml-empty", "", None, ""),
        Case("yaml-binary", "\x00\x01\xff garbage", None, ""),
        Case("yaml-alias-bomb", "a: &a [x, x]\nb: &b [*a, *a]\ncluster: *b\n", None, ""),
        Case("unknown-top-key", base + "colour: blue\n", len(lines) + 1, "colour"),
        Case("three-nodes", base + "  third:\n    address: 203.0.113.13\n", None, "nodes"),
    ]
    return out


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "web.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # In a throwaway network namespace of its own (gone with the process): should a file ever be
    # accepted, the agent still touches nothing of the host's.
    return subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "failover", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=package_env(),
        stdin=subprocess.DEVNULL,
    )


def check(done: subprocess.CompletedProcess[str], path: Path, case: Case) -> str:
    """'' when the command failed as it must, else what is wrong."""
    err = done.stderr
    if done.returncode != 2:
        return f"exit {done.returncode}: {err.strip()[:200]}"
    if "Traceback" in err or len(err.splitlines()) != 1 or not err.endswith("\n") or done.stdout:
        return f"not exactly one line: {err!r} / {done.stdout!r}"
    if str(path) not in err:
        return f"file not named: {err.strip()}"
    if case.line is not None and f"{path}:{case.line}:" not in err:
        return f"line {case.line} not named: {err.strip()}"
    if (
        case.line is None
        and case.name.startswith("yaml-")
        and case.name not in ("yaml-empty", "yaml-top-list")
        and not re.search(rf"{re.escape(str(path))}:\d+:", err)
    ):
        return f"no line: {err.strip()}"
    if case.field and not any(word in err for word in case.field.split("|")):
        return f"field {case.field} not named: {err.strip()}"
    return ""


def test_every_bad_field_is_one_line_with_file_line_field_exit_2(key: Path, tmp_path: Path) -> None:
    all_cases = cases(key)
    jobs = []
    for i, case in enumerate(all_cases):
        path = tmp_path / f"case{i:03d}.yaml"
        path.write_text(case.text, errors="surrogateescape")
        jobs.append((case, path, ["status", "-c", str(path)]))
        if i % 8 == 0:  # the daemon's own start-up path, on a sample
            jobs.append((case, path, ["agent", "-c", str(path), "--node", "live"]))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: (job, run(job[2])), jobs))
    problems = [
        f"{case.name} [{argv[0]}]: {why}"
        for (case, path, argv), done in results
        if (why := check(done, path, case))
    ]
    assert len(all_cases) > 100
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "mode", "content"),
    [
        ("group-readable", 0o640, os.urandom(32)),
        ("world-readable", 0o644, os.urandom(32)),
        ("too-short", 0o600, os.urandom(31)),
        ("empty", 0o600, b""),
        ("missing", None, None),
        ("directory", None, b"dir"),
    ],
)
def test_bad_key_file_is_one_line_exit_2(
    tmp_path: Path, name: str, mode: int | None, content: bytes | None
) -> None:
    key = tmp_path / "web.key"
    if content == b"dir":
        key.mkdir()
    elif content is not None:
        key.write_bytes(content)
        assert mode is not None
        key.chmod(mode)
    path = tmp_path / "cluster.yaml"
    path.write_text(BASE.format(key=key))
    # Only the agent reads the key; `status` needs nothing but the control socket's path.
    for argv in (["agent", "-c", str(path), "--node", "live"],):
        done = run(argv)
        assert done.returncode == 2, (argv, done.stderr)
        err = done.stderr
        assert "Traceback" not in err and len(err.splitlines()) == 1 and not done.stdout, err
        assert str(key) in err and "auth.key_file" in err, err
