"""The README's reference section: every command from the CLI's parser, every key of the cluster file.

Owns the one table of cluster-file keys with their one-line meanings, and the markdown drawn from it and
from `failover.cli`'s argparse parser. Defaults are read from the config dataclasses (the loader's own
defaults), never written twice; `tests/test_reference.py` checks the table against the keys the loader
accepts and the README against `render()`, so neither can drift.

`failover reference` prints the section; `python -m failover.reference --update README.md` rewrites the
README between the markers, `--check README.md` exits 1 when it is out of date.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from failover.config import ClusterConfig, NodeConfig

START: Final = "<!-- reference:start -->"
END: Final = "<!-- reference:end -->"
REQUIRED: Final = "required"
# `-c`'s help names the default, which $FAILOVER_CONFIG changes; the README shows the built-in one.
STANDARD_CONFIG: Final = "/etc/failover/cluster.yaml"


@dataclass(frozen=True)
class Key:
    """One key of the cluster file, dotted as written (`nodes.<name>.x` for a node's keys)."""

    key: str
    meaning: str
    # Where the loaded value lives, dotted from ClusterConfig (or from NodeConfig for `nodes.<name>.*`).
    # The default is that dataclass field's default unless `default` says otherwise.
    attr: str | None = None
    default: str | None = None


NODE: Final = "nodes.<name>."

KEYS: Final[tuple[Key, ...]] = (
    Key("cluster", "the cluster's name, 1-32 of `A-Za-z0-9_.-`", default=REQUIRED),
    Key("vip.address", "the VIP with its prefix length, IPv4 or IPv6 (`203.0.113.10/24`)", default=REQUIRED),
    Key("vip.interface", "the interface the VIP goes on (each node may override it)", default=REQUIRED),
    Key("auth.key_file", "shared HMAC-SHA256 key, at least 32 bytes, mode 0600 or stricter",
        default=REQUIRED),
    Key("auth.previous_key_file", "the old key, still accepted while the keys are rotated host by host",
        "auth.previous_key_file"),
    Key("heartbeat.port", "UDP port of the heartbeats between the nodes' own addresses", "heartbeat.port"),
    Key("heartbeat.interval_ms", "the holder sends a heartbeat every this many ms; the standby answers "
        "the holder's, and while no move or drain runs only one in round(50 / `interval_ms`) of them "
        "(5 at 10 ms; every one at 50 ms or more), saying so in each", "heartbeat.interval_ms"),
    Key("heartbeat.dead_after_ms", "the peer counts as silent after this long without a heartbeat "
        "(at least 2 x `interval_ms`); the holder gives a standby that may send one in N "
        "(N + 0.25) x this, at most this plus 3 x (N + 0.25) intervals", "heartbeat.dead_after_ms"),
    Key("announce.schedule_ms", "gratuitous ARP / unsolicited NA rounds, ms after a claim",
        "announce.schedule_ms"),
    Key("swap.step_timeout_ms", "each step of a swap; also the rollback timer", "swap.step_timeout_ms"),
    Key("swap.drain_ms", "the old holder keeps the VIP ARP-silent on `lo` at least this long after "
        "releasing, then until its last connection to the VIP ends (0: off)", "swap.drain_ms"),
    Key("swap.drain_max_ms", "the drain ends at the latest this long after the release; connections still "
        "open then are named in the outcome (at least `drain_ms`)", "swap.drain_max_ms"),
    Key("health.timeout_ms", "one check of a `health_url`", "health.timeout_ms"),
    Key("health.self_check.every_ms", "the holder checks its own `health_url` this often (0: never)",
        "health.self_check_every_ms"),
    Key("health.self_check.fails", "after this many failed self-checks in a row the holder hands the VIP "
        "to a healthy peer", "health.self_check_fails"),
    Key("confirm.mode", "what proves a move: `traffic` (client requests in the new holder's access log), "
        "`canary` (marked requests from the old holder) or `none`", "confirm.mode"),
    Key("confirm.requests", "this many client requests confirm a move", "confirm.requests"),
    Key("confirm.within_s", "the longest wait for proof; the deadline is ~20 of the source's request "
        "intervals, at least 300 ms, and canaries when the site is too quiet for that", "confirm.within_s"),
    Key("confirm.ignore_clients", "client addresses that do not count, besides the nodes, loopback and "
        "`failover/` user agents, which never do",
        "confirm.ignore_clients"),
    Key("confirm.log_format", "`combined`, `combined_server` (the server address appended: proof by log "
        "field), `common`, or a regex with named groups `client` and `time` (optional `server`, "
        "`user_agent`)",
        "confirm.log_format"),
    Key("confirm.straggler_window_ms", "how long the old holder looks for clients still sending to it "
        "(0: off)", "confirm.straggler_window_ms"),
    Key("failover.automatic", "take over when the holder goes silent (false: report only)",
        "takeover.automatic"),
    Key("failover.on_vip_lost", "the VIP removed from the holder behind its back: `report` it, or "
        "`reclaim` it", "takeover.on_vip_lost"),
    Key("failover.fence", "argv (absolute path, no shell) run before a takeover; non-zero exit: no takeover",
        "takeover.fence"),
    Key("failover.fence_timeout_ms", "the fence program's time limit", "takeover.fence_timeout_ms"),
    Key("probe.count", "RFC 5227 ARP probes (or ND solicitations) before a rollback or takeover claims",
        "takeover.probe_count"),
    Key("probe.interval_ms", "between two probes", "takeover.probe_interval_ms"),
    Key("probe.wait_ms", "listening for an answer after the last probe; any answer: no claim",
        "takeover.probe_wait_ms"),
    Key("probe.measure_every_ms", "how often each node times the peer kernel's answer to a who-has for the "
        "peer's own address (0: never); a takeover's probe window is the configured one shrunk to 3 x "
        "(median + spread) of the last 8 answers, at least 5 ms of listening",
        "takeover.probe_measure_every_ms"),
    Key("hooks.before_release", "argv lists (absolute path, no shell) run in order, with `FAILOVER_*` "
        "variables, on the holder before it releases; a failure aborts the swap with nothing changed",
        "hooks.before_release"),
    Key("hooks.after_claim", "argv lists run on the node that just claimed the VIP", "hooks.after_claim"),
    Key("hooks.confirmed", "argv lists run on the new holder once clients proved the move",
        "hooks.confirmed"),
    Key("hooks.rolled_back", "argv lists run on the node that took the VIP back after a failed move",
        "hooks.rolled_back"),
    Key("hooks.takeover", "argv lists run on the node that took over from a silent holder",
        "hooks.takeover"),
    Key("hooks.drain", "argv lists run on the old holder once it released, to close idle keep-alive "
        "connections in order (nginx: `nginx -s reload`)", "hooks.drain"),
    Key("hooks.timeout_ms", "each hook program's time limit; a timed-out `before_release` aborts the swap",
        "hooks.timeout_ms"),
    Key("metrics.listen", "`ADDRESS:PORT` (IPv6 in brackets) of a Prometheus endpoint: VIP held, role, "
        "heartbeats, rejections, moves by outcome, last move's duration and unserved window, GARP frames, "
        "stragglers",
        "metrics.listen"),
    Key(NODE + "address", "the node's own address, the heartbeats' source (exactly two nodes)",
        default=REQUIRED),
    Key(NODE + "health_url", "`http://` or `https://` URL that answers 2xx while the node can serve",
        default=REQUIRED),
    Key(NODE + "access_log", "the web server's access log, read to confirm a move", default=REQUIRED),
    Key(NODE + "home", "the VIP's home node, where `unswap` brings it back; exactly one node", "home",
        default="`false`"),
    Key(NODE + "interface", "this node's VIP interface", "interface", default="`vip.interface`"),
    Key(NODE + "control_socket", "the agent's Unix socket for the CLI (per-node paths: two lab agents "
        "share a filesystem)", "control_socket",
        default="`/run/failover/<cluster>.sock`"),
    Key(NODE + "state_dir", "the agent's state directory", "state_dir",
        default="`/var/lib/failover/<cluster>`"),
    Key(NODE + "journal", "the journal of moves and takeovers (fsynced JSON lines)", "journal",
        default="`<state_dir>/journal.jsonl`"),
)


# --- defaults, from the dataclasses ----------------------------------------------------------------


def show(value: object) -> str:
    """A value as it would be written in the cluster file."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def field_default(attr: str) -> object:
    """The dataclass default of a field named by its dotted path from ClusterConfig."""
    cls: Any = ClusterConfig
    *sections, name = attr.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            raise LookupError(f"{cls.__name__}.{name} has no default")
    raise LookupError(f"{cls.__name__} has no field {name!r}")


def default_text(key: Key) -> str:
    if key.default is not None:
        return key.default
    if key.attr is None:
        raise LookupError(f"{key.key}: neither a default nor a field to take it from")
    return f"`{show(field_default(key.attr))}`"


def node_field(key: Key) -> bool:
    """Whether the key's attr is a NodeConfig field (the `nodes.<name>.*` keys)."""
    return key.key.startswith(NODE) and key.attr in {f.name for f in dataclasses.fields(NodeConfig)}


# --- commands, from the parser -------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the parser's order, nested ones as `lab up`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = list(_subcommands(sub))
                if nested:
                    yield from ((f"{name} {n}", h, p) for n, h, p in nested)
                else:
                    yield name, helps.get(name, ""), sub


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    skip = (argparse._HelpAction, argparse._SubParsersAction)
    return [a for a in parser._actions if not isinstance(a, skip)]


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    return action.dest.upper()


def _spelling(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"{_metavar(action)}..." if action.nargs == argparse.REMAINDER else _metavar(action)
    if isinstance(action, argparse.BooleanOptionalAction):
        return " \\| ".join(action.option_strings)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    return ", ".join(f"{o} {_metavar(action)}" for o in action.option_strings)


def _usage(name: str, parser: argparse.ArgumentParser) -> str:
    parts = [f"failover {name}"]
    for action in _options(parser):
        if action.option_strings:
            short = action.option_strings[0]
            if isinstance(action, argparse.BooleanOptionalAction):
                parts.append(f"[{' | '.join(action.option_strings)}]")
            else:
                parts.append(f"[{short}]" if action.nargs == 0 else f"[{short} {_metavar(action)}]")
        elif action.nargs == argparse.REMAINDER:
            parts.append(f"-- {_metavar(action)}...")
        else:
            parts.append(_metavar(action))
    return " ".join(parts)


def _help(action: argparse.Action) -> str:
    text = (action.help or "").replace(_cli_default_config(), STANDARD_CONFIG)
    default = action.default
    if default not in (None, False, "", argparse.SUPPRESS) and "default" not in text:
        text += f" (default {show(default)})"
    return text


def _cli_default_config() -> str:
    from failover.cli import DEFAULT_CONFIG

    return DEFAULT_CONFIG  # as the help text spells it


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def commands_markdown(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["### Commands", "", "| command | what it does |", "|---|---|"]
    # One row per option, with every command that has it, when the option means the same everywhere.
    options: dict[tuple[str, str], list[str]] = {}
    for name, text, sub in _subcommands(parser):
        lines.append(f"| `{_cell(_usage(name, sub))}` | {_cell(text)} |")
        for action in _options(sub):
            options.setdefault((_spelling(action), _help(action)), []).append(name)
    lines += ["", "| option | of | meaning |", "|---|---|---|"]
    for (spelling, text), names in options.items():
        lines.append(f"| `{spelling}` | {', '.join(names)} | {_cell(text)} |")
    return lines


def keys_markdown() -> list[str]:
    lines = ["### Cluster file keys", "", "| key | default | meaning |", "|---|---|---|"]
    for key in KEYS:
        lines.append(f"| `{key.key}` | {default_text(key)} | {_cell(key.meaning)} |")
    return lines


def render() -> str:
    """The README's reference section, markers excluded."""
    from failover.cli import _parser

    lines = [
        "## Reference",
        "",
        "Generated by `failover reference` from the command-line parser and the cluster file's schema "
        "(`python -m failover.reference --update README.md`); do not edit by hand.",
        "",
        *commands_markdown(_parser()),
        "",
        *keys_markdown(),
    ]
    return "\n".join(lines) + "\n"


# --- the README ---------------------------------------------------------------------------------------


def section_of(text: str, start_marker: str = START, end_marker: str = END) -> str:
    """What a README has between the markers; ValueError when they are missing or out of order."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start or text.count(start_marker) != 1 or text.count(end_marker) != 1:
        raise ValueError(f"expected one {start_marker} followed by one {end_marker}")
    return text[start + len(start_marker) : end].strip("\n") + "\n"


def splice(text: str, section: str, start_marker: str = START, end_marker: str = END) -> str:
    """The README with section between the markers."""
    section_of(text, start_marker, end_marker)  # validates the markers
    head, rest = text.split(start_marker, 1)
    _, tail = rest.split(end_marker, 1)
    return f"{head}{start_marker}\n{section.rstrip(chr(10))}\n{end_marker}{tail}"


def section_main(
    argv: Sequence[str] | None, prog: str, doc: str, section: str, markers: tuple[str, str] = (START, END)
) -> int:
    """A generated README section's command: print it, `--update README`, or `--check README`."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--update", type=Path, metavar="README", help="rewrite the section in this file")
    group.add_argument("--check", type=Path, metavar="README", help="exit 1 if its section is out of date")
    args = p.parse_args(argv)
    if args.update is None and args.check is None:
        sys.stdout.write(section)
        return 0
    path: Path = args.update or args.check
    try:
        text = path.read_text()
        current = section_of(text, *markers)
    except (OSError, ValueError) as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 2
    if args.check is not None:
        if current != section:
            print(f"{path}: section {markers[0]} out of date; run {prog} --update {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(splice(text, section, *markers))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return section_main(argv, "python -m failover.reference", __doc__ or "", render())


if __name__ == "__main__":
    raise SystemExit(main())
