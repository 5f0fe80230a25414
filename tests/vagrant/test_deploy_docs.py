"""The README's deploy steps ("Put it on your two servers") and the Vagrant provisioner cannot drift apart.

Pure text and parsing, no Vagrant: the provisioner (vagrant/provision/machine.sh) runs steps by name from
the README (vagrant/provision/deploy_steps.py reads them), and names every other step with its lab
stand-in. These tests check that together they cover the README's steps exactly and in order, that every
`failover` command in the steps is one the CLI accepts, that the sysctl step sets what `failover check`
asks for, and that the Quick start is the two commands CI runs.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from failover import cli, sysctl

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PROVISIONER = REPO / "vagrant" / "provision" / "machine.sh"
# What issue 16 asks the section to hold, in this order (other steps may sit between them).
REQUIRED_ORDER = ("install", "key", "copy", "sysctl", "check", "start", "status", "dry-run", "swap",
                  "upgrade", "unswap")


def _load_deploy_steps() -> ModuleType:
    path = REPO / "vagrant" / "provision" / "deploy_steps.py"
    spec = importlib.util.spec_from_file_location("deploy_steps", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_steps"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


deploy_steps = _load_deploy_steps()


def _provisioner() -> tuple[list[str], list[str]]:
    """(steps it runs with run_step, in order; steps it names in STEPS_DONE_ELSEWHERE)."""
    text = PROVISIONER.read_text()
    run = re.findall(r"^\s*run_step ([a-z][a-z-]*)\s*$", text, flags=re.M)
    block = re.search(r"^STEPS_DONE_ELSEWHERE=\((.*?)^\)", text, flags=re.M | re.S)
    assert block, "machine.sh must list the README steps it does not run in STEPS_DONE_ELSEWHERE=( ... )"
    elsewhere = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return run, [name for name in elsewhere if name]


def test_the_readme_has_every_deploy_step_in_order() -> None:
    names = [s.name for s in deploy_steps.steps(README)]
    positions = [names.index(n) for n in REQUIRED_ORDER if n in names]
    assert [n for n in REQUIRED_ORDER if n not in names] == []
    assert positions == sorted(positions), names


def test_the_provisioner_runs_or_names_each_readme_step_exactly_once() -> None:
    readme = deploy_steps.steps(README)
    names = [s.name for s in readme]
    run, elsewhere = _provisioner()
    assert len(run) == len(set(run)) and len(elsewhere) == len(set(elsewhere))
    assert set(run) & set(elsewhere) == set(), "a step is both run and said to be done elsewhere"
    assert set(run) | set(elsewhere) == set(names), (
        f"README steps not in machine.sh: {set(names) - set(run) - set(elsewhere)}; "
        f"in machine.sh but not in the README: {(set(run) | set(elsewhere)) - set(names)}"
    )
    assert run == [n for n in names if n in run], "machine.sh runs the README's steps out of order"
    # It runs them on each server, so each must be a step for both hosts.
    on = {s.name: s.on for s in readme}
    assert {n: on[n] for n in run if on[n] != "both"} == {}
    assert {"install", "sysctl", "check", "start", "status"} <= set(run)


def test_the_provisioner_reads_the_steps_from_the_readme_in_the_guest() -> None:
    text = PROVISIONER.read_text()
    assert 'deploy_steps.py" "$SRC/README.md" "$step"' in text
    assert 'bash -euo pipefail -c "$commands"' in text


def _command_lines() -> list[tuple[str, list[str]]]:
    found = []
    for step in deploy_steps.steps(README):
        for line in step.commands.splitlines():
            for part in re.split(r"&&|;", line):
                argv = shlex.split(part, comments=True)
                if argv:
                    found.append((step.name, argv))
    return found


def test_every_failover_command_in_the_steps_is_one_the_cli_accepts() -> None:
    seen = set()
    for step, argv in _command_lines():
        if argv[0] != "failover":
            continue
        try:
            args = cli._parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"README deploy step {step}: `{shlex.join(argv)}` is not a valid failover command")
        seen.add(args.command)
    assert {"keygen", "check", "status", "swap", "unswap"} <= seen


def test_scripts_and_files_the_steps_name_exist() -> None:
    for step, argv in _command_lines():
        for word in argv:
            if word.startswith(("scripts/", "configs/")):
                assert (REPO / word).is_file(), f"README deploy step {step} names {word}, which is missing"
    start = deploy_steps.step(README, "start").commands
    unit = re.search(r"enable --now (\S+)", start)
    assert unit, start
    unit_file = REPO / "configs" / f"{unit.group(1).removesuffix('.service')}.service"
    assert "ExecStart=/usr/local/bin/failover agent -c /etc/failover/cluster.yaml " in unit_file.read_text()


def test_the_key_and_the_cluster_file_go_where_the_example_and_the_unit_expect() -> None:
    example = yaml.safe_load((REPO / "configs" / "cluster.example.yaml").read_text())
    key_file = example["auth"]["key_file"]
    assert deploy_steps.step(README, "key").commands == f"failover keygen {key_file}\n"
    copy = deploy_steps.step(README, "copy").commands
    assert key_file in copy and "/etc/failover/cluster.yaml" in copy and "scp -p " in copy
    assert "/etc/failover/cluster.yaml" in deploy_steps.step(README, "cluster-file").commands


def test_the_sysctl_step_sets_what_failover_check_asks_for(tmp_path: Path) -> None:
    commands = deploy_steps.step(README, "sysctl").commands
    settings = dict(re.findall(r"^(net\.[\w.]+) = (\d+)$", commands, flags=re.M))
    assert settings, commands
    proc = tmp_path / "net"
    # A host as Debian leaves it, then the step's settings on top.
    defaults = {"ipv4/conf/all/arp_ignore": 0, "ipv4/conf/all/arp_announce": 0,
                "ipv4/conf/all/promote_secondaries": 0, "ipv4/conf/eth0/arp_ignore": 0,
                "ipv4/conf/eth0/arp_announce": 0, "ipv4/conf/eth0/promote_secondaries": 0,
                "ipv4/ip_nonlocal_bind": 0}
    for name, value in defaults.items():
        (proc / name).parent.mkdir(parents=True, exist_ok=True)
        (proc / name).write_text(f"{value}\n")
    assert not all(f.ok for f in sysctl.judge("eth0", 4, drain=True, vip_bound=False, proc=proc))
    for name, value in settings.items():
        path = proc.joinpath(*name.split(".")[1:])
        assert path.exists(), f"{name}: not a setting failover check reads"
        path.write_text(f"{value}\n")
    judged = sysctl.judge("eth0", 4, drain=True, vip_bound=False, proc=proc)
    assert [f for f in judged if not f.ok] == []
    assert "sysctl -q -p /etc/sysctl.d/90-failover.conf" in commands


def test_the_quick_start_is_two_commands_without_sudo() -> None:
    text = README.read_text()
    quick = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    block = re.search(r"^```\n(.*?)^```$", quick, flags=re.M | re.S)
    assert block, quick
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/rehearse", "bash scripts/test"]
    assert "sudo bash scripts/" not in text
    assert "bash scripts/test" in (REPO / ".ci" / "run").read_text()
    for script in ("rehearse", "test", "setup", "install"):
        assert '. "$(dirname "$0")/lib/as-root.sh"' in (REPO / "scripts" / script).read_text(), script


def test_a_malformed_marker_or_a_missing_step_is_one_line_naming_the_file(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("1. x\n   <!-- deploy:ok on=both -->\n   ```sh\n   echo a\n     echo b\n   ```\n")
    (only,) = deploy_steps.steps(readme)
    assert (only.name, only.on, only.commands, only.line) == ("ok", "both", "echo a\n  echo b\n", 2)
    with pytest.raises(deploy_steps.StepError, match=r"no deploy step 'other'"):
        deploy_steps.step(readme, "other")
    assert deploy_steps.main([str(readme), "other"]) == 2
    readme.write_text("<!-- deploy:bad on=everywhere -->\n```sh\ntrue\n```\n")
    with pytest.raises(deploy_steps.StepError, match=rf"^{re.escape(str(readme))}:1: a deploy marker"):
        deploy_steps.steps(readme)
    readme.write_text("<!-- deploy:a on=live -->\n```sh\ntrue\n")
    with pytest.raises(deploy_steps.StepError, match="never closed"):
        deploy_steps.steps(readme)
    readme.write_text("<!-- deploy:a on=live -->\n```sh\ntrue\n```\n<!-- deploy:a on=live -->\n```sh\n```\n")
    with pytest.raises(deploy_steps.StepError, match="appears twice"):
        deploy_steps.steps(readme)
