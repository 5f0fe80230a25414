"""Operator commands: `failover agent|swap|unswap|status|check|history|announce|probe|keygen|reference|lab`.

Owns their human and `--json` output and exit codes; their grammar is argparse's, in `failover.cliparser`.

Exit codes: 0 done; 1 the move failed or was refused (the VIP is left on a working holder and the
reason is printed); 2 bad usage or a bad cluster file; 3 the local agent could not be reached.

Each command imports only what it needs. `swap`, `unswap` and `status` must reach the agent fast, so they
find its socket with `failover.agentsocket` and leave the whole cluster file to the full loader: here when
the agent cannot be reached (a bad file is reported first, exit 2, as always) or after `status` and dry
runs answered (exit 2 on a bad file, nothing else printed), and in the agent, which has the loader
loaded, before a move: a bad file refuses the move with nothing changed, exit 2. Never imported on that
path: the full loader, the host checks, the lab, netlink (pyroute2), frames (scapy), structlog; and until
the request is sent, not even argparse, `socket` or `json` (a plain line is read by
`agent_command_line`, the request written by `failover.controlclient`): ~4 ms of every start each here.
"""

from __future__ import annotations

import os
import sys

from failover import controlclient as control
from failover.localnode import is_local, own_node

TYPE_CHECKING = False  # typing's own flag without importing typing, a few ms of every start (mypy knows it)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence
    from pathlib import Path
    from typing import Any

    from failover.check import Finding
    from failover.config import ClusterConfig, NodeConfig

# Text, not Path: `swap|unswap|status` never import pathlib (~3 ms of their start here).
DEFAULT_CONFIG = os.environ.get("FAILOVER_CONFIG", "/etc/failover/cluster.yaml")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
AGENT_COMMANDS = ("swap", "unswap", "status")
MOVES = ("swap", "unswap")


class AgentCommandLine:
    """A `swap|unswap|status` command line, read: what `_to_agent` needs of it."""

    __slots__ = ("command", "config", "dry_run", "json", "node", "reason", "timeout", "wait_drained")

    def __init__(self, command: str) -> None:
        # Also argparse's defaults (failover.cliparser takes them from here).
        self.command = command
        self.config = DEFAULT_CONFIG
        self.node: str | None = None
        self.json = False
        self.timeout = 60.0
        self.reason = ""
        self.wait_drained = True
        self.dry_run = False

    def fields(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def of(cls, args: argparse.Namespace) -> AgentCommandLine:
        line = cls(args.command)
        for name in cls.__slots__:
            if hasattr(args, name):
                setattr(line, name, getattr(args, name))
        return line


# What the quick reader takes: options that a value follows, by the attribute they set; flags, by the
# attribute and the value they set. Those of the moves only for swap and unswap, as in failover.cliparser.
_VALUED = {"-c": "config", "--config": "config", "--node": "node"}
_MOVE_VALUED = {"--timeout": "timeout", "--reason": "reason"}
_FLAGS: dict[str, tuple[str, bool]] = {"--json": ("json", True)}
_MOVE_FLAGS = {"--wait-drained": ("wait_drained", True), "--no-wait-drained": ("wait_drained", False),
               "--dry-run": ("dry_run", True)}


def agent_command_line(words: Sequence[str]) -> AgentCommandLine | None:
    """A plain `swap|unswap|status` line read as argparse reads it, without importing argparse (~4 ms with
    `re` and `gettext`); None for any line it is not sure of (help, abbreviations, attached short
    values, a value that starts with "-", a bad number, anything unknown), which argparse then reads and,
    where it must, refuses with its usual message."""
    if not words or words[0] not in AGENT_COMMANDS:
        return None
    line = AgentCommandLine(words[0])
    move = words[0] in MOVES
    valued = {**_VALUED, **_MOVE_VALUED} if move else _VALUED
    flags = {**_FLAGS, **_MOVE_FLAGS} if move else _FLAGS
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if word in flags:
            name, value = flags[word]
            setattr(line, name, value)
            continue
        option, equals, attached = word.partition("=")
        if not option.startswith("--"):
            equals = ""  # `-c=x`, `-cx`: a short option's attached value is left to argparse
            option = word
        if option not in valued:
            return None
        if equals:
            text = attached
        elif rest and not rest[0].startswith("-"):
            text = rest.pop(0)
        else:
            return None
        name = valued[option]
        if name == "timeout":
            seconds = timeout_seconds(text)  # as argparse's type= reads it (failover.cliparser)
            if seconds is None:
                return None
            setattr(line, name, seconds)
        else:
            setattr(line, name, text)
    return line


MAX_TIMEOUT_S = 1e9  # what a socket's timeout can hold here (1e10 overflows time_t's conversion)


def timeout_seconds(text: str) -> float | None:
    """`--timeout`'s value: a number of seconds above 0 and at most MAX_TIMEOUT_S, or None (a usage
    error: before, -1, nan or inf got as far as the socket and ended in a traceback)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= MAX_TIMEOUT_S else None  # nan compares false: refused too


def _parser(*, agent_commands_only: bool = False) -> argparse.ArgumentParser:
    from failover.cliparser import parser

    return parser(agent_commands_only=agent_commands_only)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    line = agent_command_line(words)
    args = None
    if line is None:
        args = _parser(agent_commands_only=bool(words) and words[0] in AGENT_COMMANDS).parse_args(words)
        if args.command in AGENT_COMMANDS:
            line = AgentCommandLine.of(args)
    try:
        if line is not None:
            return _to_agent(line)
        assert args is not None
        return _other_command(args)
    except control.ControlError as err:
        print(f"failover: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        # Here, not at the top: importing the full loader is what the fast commands avoid.
        from failover.config import ConfigError

        if not isinstance(err, ConfigError):
            raise
        if args is not None and args.command == "check":
            from failover import check

            # `check` reports a bad file like every other finding, in the format asked for.
            return _report([check.Finding("cluster file", check.FAIL, str(err))], args.json)
        print(f"failover: {err}", file=sys.stderr)
        return EXIT_USAGE


def _other_command(args: argparse.Namespace) -> int:
    if args.command == "lab":
        from failover.lab.commands import run

        return run(args)
    if args.command == "keygen":
        from failover.keygen import run as keygen

        return keygen(args.path)
    if args.command == "reference":
        from failover.reference import render

        print(render(), end="")
        return EXIT_OK
    from failover.config import load_config

    config = load_config(args.config)
    if args.command == "agent":
        return _agent(config, args)
    node = own_node(config, args.node)
    if args.command == "check":
        return _check(config, node, args.json)
    if args.command == "history":
        return _history(node, args.json, args.n)
    return _one_shot(args.command, config, node, args.json)


class _Agent:
    """This node's agent as the fast commands reach it, and the full check of the cluster file they owe."""

    def __init__(self, config: str, node: str | None) -> None:
        self.config = config
        self.node = node
        self.answered = False
        self._checked: NodeConfig | None = None
        found = _fast_socket(config, node)
        # None: the file is not plainly readable or names no single local node: the full loader says why.
        self.socket: str | Path = self.check_file().control_socket if found is None else found

    def check_file(self) -> NodeConfig:
        """The whole cluster file through the full loader (once); raises ConfigError for a bad one."""
        from failover.config import load_config

        if self._checked is None:
            self._checked = own_node(load_config(self.config), self.node)
        return self._checked

    def request(self, req: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
        for reply in control.request(self.socket, req, timeout=timeout):
            self.answered = True
            yield reply


def _fast_socket(config: str, name: str | None) -> str | None:
    from failover.agentsocket import node_sockets

    nodes = node_sockets(config)
    if nodes is None:
        return None
    if name:
        return next((n.control_socket for n in nodes if n.name == name), None)
    local = [n for n in nodes if is_local(n.family, n.address)]
    return local[0].control_socket if len(local) == 1 else None


def _to_agent(args: AgentCommandLine) -> int:
    agent = _Agent(args.config, args.node)
    read_only = args.command == "status" or args.dry_run
    try:
        if args.command == "status":
            return _status(agent, args.json)
        if args.dry_run:
            return _dry_run(args.command, agent, args.json, args.timeout)
        return _move(args.command, agent, args.json, args.timeout, args.reason, args.wait_drained)
    except control.ControlError:
        # Read-only, or nothing reached the agent: a bad cluster file comes first (exit 2), as it always did.
        if read_only or not agent.answered:
            agent.check_file()
        raise


def _agent(config: ClusterConfig, args: argparse.Namespace) -> int:
    from failover import lean

    # Before the agent's modules: what they import and never use stays out of its memory.
    lean.lean_agent((node.health_url for node in config.nodes), metrics=config.metrics.listen is not None)
    from failover import logs
    from failover.agent import AgentError, run_agent

    logs.configure(json_output=args.log_json)
    try:
        run_agent(config, args.node)
    except AgentError as err:
        print(f"failover: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _status(agent: _Agent, as_json: bool) -> int:
    final = _last(agent.request({"cmd": "status"}, timeout=5.0))
    agent.check_file()  # a bad cluster file: exit 2 and nothing else, as if the agent had not been asked
    st = final["status"]
    if as_json:
        import json  # after the request: see failover.controlclient
        print(json.dumps(st, indent=2))
        return EXIT_OK
    peer = st["peer"]
    holder = (st["node"] if st["holds_vip_netlink"] else
              peer["name"] if peer["holds_vip"] else "nobody")
    print(f"cluster {st['cluster']}: VIP {st['vip']} held by {holder}")
    print(f"  {st['node']:<10} (this host)  holds VIP: {_yes(st['holds_vip_netlink'])} (netlink)  "
          f"epoch {st['epoch']}")
    age = peer["heartbeat_age_ms"]
    print(f"  {peer['name']:<10} (peer)       holds VIP: {_yes(peer['holds_vip'])} (its netlink)  "
          f"heartbeat {'never' if age is None else f'{age:.0f} ms ago'}"
          f"{'' if peer['alive'] else '  NOT ALIVE'}")
    equal = st["digests_equal"]
    print(f"  cluster files: {'equal' if equal else 'unknown' if equal is None else 'DIFFERENT'}")
    last = st["last_move"]
    if last:
        verdict = "ok" if last["ok"] else f"failed: {last['reason']}"
        print(f"  last move: {last['move']} {last['source']} -> {last['target']} (epoch {last['epoch']}) "
              f"{verdict}")
    draining = st.get("draining")
    if draining:
        oldest = f", oldest open {draining['oldest_s']:.1f} s" if draining.get("oldest_s") else ""
        print(f"  DRAINING (epoch {draining['epoch']}): {draining['open']} connections to the VIP open "
              f"after {draining['for_ms'] / 1000:.1f} s{oldest}; ends at the latest in "
              f"{draining['ends_at_latest_in_ms'] / 1000:.1f} s: do not take this host down yet")
    elif st.get("last_drain"):
        print(f"  last drain: {drained_line(st['last_drain'])}")
    takeover = st.get("last_takeover")
    if takeover:
        print(f"  last takeover: {'done' if takeover['ok'] else 'not done'}: {takeover['reason']}"
              f" (probe: {takeover.get('probe')}, fence: {takeover.get('fence')})")
    if not st["self_check"]["healthy"]:
        print(f"  self check: FAILING ({st['self_check']['fails_in_a_row']} in a row)")
    if st["rejected"]:
        print(f"  rejected datagrams: {st['rejected']}")
    return EXIT_OK


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def _operator() -> str:
    """Who asked: the user behind sudo if any, else the login name, else the uid."""
    for var in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(var):
            return os.environ[var]
    return f"uid {os.getuid()}"


def _move(
    move: str, agent: _Agent, as_json: bool, timeout: float, reason: str = "", wait_drained: bool = True
) -> int:
    steps: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    # The agent loads this file before it moves anything: a bad one refuses the move, nothing changed.
    req = {
        "cmd": move, "operator": _operator(), "reason": reason, "config": str(agent.config),
        "wait_drained": wait_drained,
    }
    for reply in agent.request(req, timeout=timeout):
        if reply["type"] == "progress":
            steps.append(reply)
            if not as_json:
                print(f"  {reply['step']:<22} {reply['ms']:>9.1f} ms", flush=True)
        else:
            final = reply
    if final.get("type") == "error" and final.get("config_error"):
        print(f"failover: {final['error']}", file=sys.stderr)
        return EXIT_USAGE
    if final.get("type") == "error":
        print(f"failover: agent refused: {final['error']}", file=sys.stderr)
        return EXIT_FAILED
    outcome = final["outcome"]
    came_from = final.get("came_from")
    if as_json:
        import json  # after the request: see failover.controlclient
        print(json.dumps({**outcome, "came_from": came_from} if move == "unswap" else outcome, indent=2))
        return EXIT_OK if outcome["ok"] else EXIT_FAILED
    if came_from:
        print(f"  undoing: {came_from.get('kind')} {came_from.get('source')} -> {came_from.get('target')} "
              f"(epoch {came_from.get('epoch')}) at {_when(came_from.get('at'))}"
              f"{_by(came_from)}")
    elif move == "unswap":
        print("  undoing: nothing in this node's journal says how the VIP got here")
    if outcome["ok"]:
        unserved = outcome["unserved_ms"]
        extra = "" if unserved is None else f", VIP on no host for ~{unserved:.2f} ms"
        print(f"{move} done: VIP on {outcome['holder']} (epoch {outcome['epoch']}) "
              f"in {outcome['duration_ms']:.1f} ms{extra}")
        if outcome.get("confirmed"):
            evidence = outcome.get("evidence") or {}
            clients = ", ".join(evidence.get("clients", []))
            print(f"  confirmed: {evidence.get('requests')} requests in {outcome['holder']}'s access log "
                  f"{outcome['confirm_ms']:.1f} ms after the claim, from {clients}")
            if (proof := _proof(evidence)) is not None:
                print(proof)
        elif outcome.get("confirmed") is None:
            print("  NOT confirmed: confirmation is off (confirm.mode: none); "
                  "check the new holder's access log")
        for straggler in outcome.get("stragglers") or []:
            verdict = "moved after a targeted ARP request" if straggler["moved"] else "DID NOT MOVE"
            print(f"  straggler {straggler['ip']} ({straggler['mac']}): {verdict}")
    else:
        print(f"{move} FAILED: {outcome['reason']}; VIP on {outcome['holder'] or 'unknown'}", file=sys.stderr)
        if (proof := _proof(outcome.get("evidence"))) is not None:
            print(proof, file=sys.stderr)
    if outcome.get("handoff_error"):
        print(f"  connection handoff UNAVAILABLE ({outcome['handoff_error']}): connections open on "
              f"{outcome['source']} at the move may have been reset", file=sys.stderr)
    if outcome.get("drain"):
        print(f"  {drained_line(outcome['drain'])}", file=sys.stdout if outcome["ok"] else sys.stderr)
    return EXIT_OK if outcome["ok"] else EXIT_FAILED


def _proof(evidence: dict[str, Any] | None) -> str | None:
    """How the new holder judged the move, in one line; None when its agent did not say."""
    if not evidence or evidence.get("deadline_ms") is None:
        return None
    what = "canary requests" if evidence.get("canary") else "requests"
    how = evidence.get("destination") or "no access-log line since the claim"
    return (f"  proof: {evidence.get('requests')} {what} to {evidence.get('to')} counted ({how}); deadline "
            f"{evidence['deadline_ms']:.0f} ms: {evidence.get('deadline_why')}")


def drained_line(drain: dict[str, Any]) -> str:
    """The old holder's drain in one line: may it go down now?"""
    host = drain.get("host")
    if drain.get("skipped"):
        skipped = drain["skipped"]
        return f"{host} did not drain ({skipped}): connections open there at the move may have been reset"
    if drain.get("pending"):
        return f"{host} is still draining: see `failover status` there before taking it down"
    left, after = drain.get("left"), drain.get("after_s")
    if drain.get("how") == "claimed":
        return f"{host} holds the VIP again: its connections go on there"
    if left is None:
        why = drain.get("error") or "no report came"
        took = "?" if after is None else f"{after:.1f}"
        return f"{host} drained for {took} s; its connections were not counted ({why})"
    if left == 0:
        closing = drain.get("closing")
        tail = f" ({closing} closed by the server wait only for their client's FIN)" if closing else ""
        return f"{host} drained: 0 connections left after {after:.1f} s{tail}"
    return (f"{host} drained: {left} connections LEFT after {after:.1f} s (swap.drain_max_ms; oldest open "
            f"{drain.get('oldest_s') or 0:.1f} s): they were cut")


def _dry_run(move: str, agent: _Agent, as_json: bool, timeout: float) -> int:
    final = _last(agent.request({"cmd": move, "dry_run": True}, timeout=timeout))
    agent.check_file()  # as for status: a bad cluster file is exit 2 and nothing else
    plan = final["plan"]
    if as_json:
        import json  # after the request: see failover.controlclient
        print(json.dumps(plan, indent=2))
        return EXIT_OK if plan["ok"] else EXIT_FAILED
    source, target = plan["source"] or "?", plan["target"] or "?"
    print(f"dry run: {move} {source} -> {target}; nothing was changed")
    print("  checks")
    for c in plan["checks"]:
        print(f"    {c['level']:<5} {c['node']:<10} {c['check']:<40} {c['detail']}")
        if c["fix"] and c["level"] != "ok":
            print(f"{'':<10}fix: {c['fix']}")
    if plan["plan"]:
        print("  plan")
        for i, step in enumerate(plan["plan"], 1):
            print(f"    {i}. {step['step']:<15} {step['what']}")
    if plan["ok"]:
        print(f"all checks passed: `failover {move}` would go ahead now")
        return EXIT_OK
    failed = sum(1 for c in plan["checks"] if c["level"] == "FAIL")
    print(f"{move} would not go ahead: {failed} check(s) failed, first: {plan['reason']}", file=sys.stderr)
    return EXIT_FAILED


def _when(at: object) -> str:
    if not isinstance(at, int | float):
        return "?"
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _by(entry: dict[str, Any]) -> str:
    who = entry.get("operator")
    why = entry.get("operator_reason")
    return (f" by {who}" if who else "") + (f": {why}" if why else "")


def _check(config: ClusterConfig, node: NodeConfig, as_json: bool) -> int:
    from failover import check

    found = [check.Finding("cluster file", check.OK, f"{config.source}: valid, node {node.name}"),
             *check.host_checks(config, node)]
    return _report(found, as_json)


def _report(found: list[Finding], as_json: bool) -> int:
    from failover import check

    bad = check.failed(found)
    if as_json:
        import json
        print(json.dumps({"ok": not bad, "findings": [f.to_json() for f in found]}, indent=2))
    else:
        for f in found:
            print(f"{f.level:<5} {f.check:<40} {f.detail}")
            if f.fix and f.level != check.OK:
                print(f"{'':<6}fix: {f.fix}")
        problems = sum(1 for f in found if f.level == check.FAIL)
        print("all checks passed" if not bad else f"{problems} problem(s)")
    return EXIT_FAILED if bad else EXIT_OK


def _history(node: NodeConfig, as_json: bool, last: int) -> int:
    from failover import journal

    try:
        entries = journal.read(node.journal, last=max(last, 0))
    except journal.JournalError as err:
        print(f"failover: {err}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        import json
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    if not entries:
        print(f"no entries in {node.journal}")
    for e in entries:
        verdict = "ok" if e.get("ok") else "FAILED"
        duration = e.get("duration_ms")
        took = "" if duration is None else f" in {duration:.0f} ms"
        print(f"{_when(e.get('at'))}  {e.get('kind', '?'):<8} {e.get('source') or '?'} -> "
              f"{e.get('target') or '?'}  epoch {e.get('epoch')}  {verdict}{took}{_by(e)}")
        if e.get("reason"):
            print(f"{'':<21}{e['reason']}")
    return EXIT_OK


def _one_shot(tool: str, config: ClusterConfig, node: NodeConfig, as_json: bool) -> int:
    # scapy is slow to import: only these two commands pay for it.
    import json
    from pathlib import Path

    from failover import announce, prober

    mac = Path(f"/sys/class/net/{node.interface}/address").read_text().strip()
    try:
        if tool == "announce":
            announcer = announce.Announcer(node.interface, config.vip.ip, mac)
            try:
                sent = announcer.announce()
            finally:
                announcer.close()
            result: dict[str, Any] = {"vip": str(config.vip.ip), "interface": node.interface,
                                      "mac": mac, "frames_sent": sent}
            text = f"sent {sent} gratuitous frames for {config.vip.ip} from {mac} on {node.interface}"
        else:
            import time
            started = time.monotonic()
            t = config.takeover
            macs = prober.probe(node.interface, config.vip.ip, mac, count=t.probe_count,
                                  interval_ms=t.probe_interval_ms, wait_ms=t.probe_wait_ms)
            took = (time.monotonic() - started) * 1000
            result = {"vip": str(config.vip.ip), "interface": node.interface, "answered_by": macs,
                      "probe_ms": round(took, 1), "at": round(time.time(), 3)}
            text = (f"{config.vip.ip}: answered by {', '.join(macs)}" if macs else
                    f"{config.vip.ip}: nobody answered") + f" ({took:.0f} ms of probing on {node.interface})"
    except announce.AnnounceError as err:
        print(f"failover: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2) if as_json else text)
    return EXIT_OK


def _last(replies: Iterator[dict[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for reply in replies:
        final = reply
    if final.get("type") == "error":
        raise control.ControlError(f"agent answered: {final['error']}")
    return final
