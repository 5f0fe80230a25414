"""Tests for failover.reference: the README's reference section cannot drift from the code.

The key table must name exactly the keys the loader accepts (read from the loader itself, by recording
every section it validates), each documented default must be what the loader fills in, each required key
must really be required, every command and option must have help text, and the README must hold exactly
what `render()` draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from failover import cli, config, reference
from failover.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
EXAMPLE = REPO / "configs" / "cluster.example.yaml"

# Only what the loader requires; everything else takes its default.
MINIMAL: dict[str, Any] = {
    "cluster": "web",
    "vip": {"address": "203.0.113.10/24", "interface": "eth0"},
    "auth": {"key_file": "/etc/failover/web.key"},
    "nodes": {
        "web1": {
            "address": "203.0.113.11",
            "home": True,
            "health_url": "http://203.0.113.11/",
            "access_log": "/var/log/nginx/access.log",
        },
        "web2": {
            "address": "203.0.113.12",
            "health_url": "http://203.0.113.12/",
            "access_log": "/var/log/nginx/access.log",
        },
    },
}


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _accepted_keys(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> set[str]:
    """Every leaf key the loader accepts, dotted, as seen by the loader's own section checks."""
    seen: dict[str, set[str]] = {}
    original = config._Section.__init__

    def recording(self: Any, file: str, path: str, data: Any, line: int,
                  required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> None:
        parts = path.split(".") if path else []
        if len(parts) == 2 and parts[0] == "nodes":
            parts[1] = "<name>"  # node names are free
        if required or optional:
            seen.setdefault(".".join(parts), set()).update(required, optional)
        original(self, file, path, data, line, required, optional)

    monkeypatch.setattr(config._Section, "__init__", recording)
    for path in paths:
        load_config(path)
    monkeypatch.undo()
    keys = {f"{section}.{key}" if section else key for section, names in seen.items() for key in names}
    sections = set(seen) | {"nodes"}
    return keys - sections


def test_the_key_table_names_exactly_the_keys_the_loader_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = _accepted_keys(monkeypatch, _write(tmp_path, MINIMAL), EXAMPLE)
    documented = [k.key for k in reference.KEYS]
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert set(documented) - accepted == set(), "documented, but the loader does not accept it"
    assert accepted - set(documented) == set(), "the loader accepts it, but reference.KEYS lacks it"
    # Sanity: the recording saw the nested and per-node sections.
    assert {"health.self_check.fails", "nodes.<name>.journal", "cluster"} <= accepted


def _resolve(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_documented_defaults_are_what_the_loader_fills_in(tmp_path: Path) -> None:
    loaded = load_config(_write(tmp_path, MINIMAL))
    node = loaded.node("web2")  # says nothing but the required keys
    checked = 0
    for key in reference.KEYS:
        if key.default == reference.REQUIRED:
            continue
        assert key.attr is not None, key
        if reference.node_field(key):
            value = reference.show(_resolve(node, key.attr))
            expected = (key.default or "").strip("`")
            expected = expected.replace("vip.interface", loaded.vip.interface)
            expected = expected.replace("<cluster>", loaded.cluster)
            expected = expected.replace("<state_dir>", str(node.state_dir))
        else:
            value = reference.show(_resolve(loaded, key.attr))
            expected = reference.default_text(key).strip("`")
        assert value == expected, key.key
        checked += 1
    assert checked >= 30


def test_required_keys_are_really_required(tmp_path: Path) -> None:
    for key in reference.KEYS:
        if key.default != reference.REQUIRED:
            continue
        doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(MINIMAL))
        parts = key.key.replace("<name>", "web2").split(".")
        parent = doc
        for part in parts[:-1]:
            parent = parent[part]
        del parent[parts[-1]]
        with pytest.raises(ConfigError) as err:
            load_config(_write(tmp_path, doc))
        assert err.value.field == ".".join(parts), (key.key, str(err.value))
        assert "missing required key" in err.value.problem


def test_defaults_come_from_the_dataclasses() -> None:
    assert reference.default_text(next(k for k in reference.KEYS if k.key == "heartbeat.port")) == (
        f"`{config.HeartbeatConfig.port}`"
    )
    assert reference.show((0, 200)) == "[0, 200]"
    assert reference.show(10.0) == "10" and reference.show(None) == "none" and reference.show(True) == "true"
    with pytest.raises(LookupError):
        reference.field_default("nodes")


def test_every_command_and_option_has_help_and_is_in_the_reference() -> None:
    text = reference.render()
    commands = list(reference._subcommands(cli._parser()))
    assert {"agent", "swap", "unswap", "status", "check", "history", "announce", "probe", "keygen",
            "reference", "lab rehearse", "lab bench", "lab up", "lab down",
            "lab exec"} == {n for n, _, _ in commands}
    for name, help_text, parser in commands:
        assert help_text, f"`failover {name}` has no help"
        assert f"| `failover {name}" in text
        for action in reference._options(parser):
            assert action.help, f"`failover {name}` {action.option_strings or action.dest} has no help"
    assert "/etc/failover/cluster.yaml" in text


def test_the_reference_does_not_depend_on_failover_config(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = reference.render()
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", "/tmp/elsewhere.yaml")
    swap = next(p for name, _, p in reference._subcommands(cli._parser()) if name == "swap")
    config_action = next(a for a in reference._options(swap) if "--config" in a.option_strings)
    assert "/tmp/elsewhere.yaml" in (config_action.help or "")
    assert reference.render() == expected


def test_readme_reference_section_is_the_generated_one() -> None:
    assert reference.section_of(README.read_text()) == reference.render(), (
        "README.md is out of date: run python -m failover.reference --update README.md"
    )
    assert reference.main(["--check", str(README)]) == 0


def test_update_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{reference.START}\nold\n{reference.END}\n\nafter\n")
    assert reference.main(["--check", str(readme)]) == 1
    assert reference.main(["--update", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith(f"{reference.END}\n\nafter\n")
    assert reference.section_of(text) == reference.render()
    assert reference.main(["--check", str(readme)]) == 0
    readme.write_text("no markers\n")
    assert reference.main(["--check", str(readme)]) == 2


def test_failover_reference_prints_the_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["reference"]) == 0
    assert capsys.readouterr().out == reference.render()
