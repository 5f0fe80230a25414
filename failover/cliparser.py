"""The command line's grammar: argparse's parser for every `failover` command, its help and examples.

`failover.cli` reads a plain `swap|unswap|status` line without it (`cli.agent_command_line`), so that
those commands reach the agent before argparse (with `re` and `gettext`, ~4 ms) is imported; every other
line, and any line that reader is not sure of, comes here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from failover import cli

EXAMPLES = """\
examples:
  failover agent -c /etc/failover/cluster.yaml          run the agent (systemd runs this)
  failover status                                       both nodes, who holds the VIP
  failover swap                                         move the VIP to the peer, prove it moved
  failover unswap                                       move it back home once home is healthy
  failover swap --json                                  the same, as one JSON document
  failover swap --reason "kernel upgrade on web1"       the reason goes to this node's journal
  failover swap --dry-run                               checks on both hosts and the plan; changes nothing
  failover unswap --dry-run --json                      the same for the way home, as JSON
  failover check -c /etc/failover/cluster.yaml          key, interface, access log, sysctls: each fix
  failover history -n 5                                 the last five moves and takeovers
  failover announce                                     send the gratuitous ARP/NA burst for the VIP now
  failover probe                                        who answers ARP/ND for the VIP right now
  failover keygen /etc/failover/web.key                 a new shared key, mode 0600; copy it to the peer
  failover reference                                    every command and cluster-file key, as markdown
  failover lab rehearse                                 rehearse swap + unswap in a namespace lab (root)
"""


def _timeout(text: str) -> float:
    seconds = cli.timeout_seconds(text)
    if seconds is None:
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None  # as type=float said
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {cli.MAX_TIMEOUT_S:.0e}: {text!r}")
    return seconds


def _as_path(text: str) -> Path:
    return Path(text)


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    # argparse makes a formatter at every add_argument; left to find its width itself, it imports shutil
    # (and with it bz2, lzma: ~2 ms of each command's start here). The width as shutil finds it.
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (OSError, ValueError):
            columns = 0
    return argparse.RawDescriptionHelpFormatter(prog, width=(columns if columns > 0 else 80) - 2)


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _help_formatter)
        super().__init__(**kwargs)


def parser(*, agent_commands_only: bool = False) -> argparse.ArgumentParser:
    """Every command; or, for a `swap|unswap|status` command line, only those (a quicker start)."""
    p = _Parser(prog="failover", description="Heartbeat-style IP failover for machine swaps.",
                epilog=EXAMPLES)
    # Subparsers do not inherit formatter_class.
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    default_config = cli.DEFAULT_CONFIG  # read now: $FAILOVER_CONFIG, or a test's
    # The agent commands' defaults are the quick reader's (cli.AgentCommandLine): one set of them.
    defaults = cli.AgentCommandLine("swap")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", default=default_config,
                        help=f"cluster file (default {default_config}, or $FAILOVER_CONFIG)")
        sp.add_argument("--node", help="the node this host plays (default: the one whose address is local)")

    if not agent_commands_only:
        agent = sub.add_parser("agent", help="run the agent daemon in the foreground")
        with_config(agent)
        agent.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                           help="JSON log lines (default: when stdout is not a terminal)")
    for move, text in (("swap", "move the VIP from its holder to the peer"),
                       ("unswap", "move the VIP back to its home node")):
        sp = sub.add_parser(move, help=text)
        with_config(sp)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.add_argument("--timeout", type=_timeout, default=defaults.timeout,
                        help="seconds to wait for the outcome")
        sp.add_argument("--reason", default=defaults.reason, help="why, in words: written to the journal")
        sp.add_argument("--wait-drained", action=argparse.BooleanOptionalAction,
                        default=defaults.wait_drained,
                        help="return once the old holder's connections to the VIP have ended (its drain), "
                             "so that it may go down (default); --no-wait-drained: once the move is done")
        sp.add_argument("--dry-run", action="store_true",
                        help="run every check on both hosts for real and print the plan; change nothing "
                             "(exit 0: all pass, 1: a check failed)")
    status = sub.add_parser("status", help="both nodes, who holds the VIP, heartbeat age, last move")
    with_config(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    if agent_commands_only:
        return p
    checks = sub.add_parser("check", help="check the cluster file and this host's settings; 1 on a problem")
    with_config(checks)
    checks.add_argument("--json", action="store_true", help="print one JSON document")
    history = sub.add_parser("history", help="the journal of swaps, unswaps and takeovers on this node")
    with_config(history)
    history.add_argument("--json", action="store_true", help="the entries as one JSON list")
    history.add_argument("-n", type=int, default=20, help="how many of the newest entries (default 20)")
    for tool, text in (("announce", "send one burst of gratuitous ARP / unsolicited NA for the VIP now"),
                       ("probe", "ask who answers for the VIP (ARP / ND probe): MACs and times")):
        sp = sub.add_parser(tool, help=text)
        with_config(sp)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
    keygen = sub.add_parser("keygen", help="write a new shared key to PATH (mode 0600, never overwrites)")
    keygen.add_argument("path", type=_as_path, metavar="PATH",
                        help="the new key file (/etc/failover/web.key)")
    sub.add_parser("reference", help="print the README's reference: every command and cluster-file key")

    lab = sub.add_parser("lab", help="the network-namespace lab (root)")
    labsub = lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND",
                                parser_class=_Parser)
    rehearse = labsub.add_parser(
        "rehearse", help="build a lab, swap and unswap under load, report, tear down"
    )
    rehearse.add_argument("--json", action="store_true", help="print the report as JSON")
    rehearse.add_argument("--keep-workdir", action="store_true", help="keep logs and configs afterwards")
    rehearse.add_argument("--ipv6", action="store_true",
                          help="an IPv6 VIP, agents and client load over IPv6 (2001:db8::/32)")
    rehearse.add_argument("--router", choices=("plain", "drop-garp"),
                          help="put the client behind a router namespace; drop-garp: one that ignores "
                               "gratuitous ARP and unsolicited neighbour advertisements")
    bench = labsub.add_parser("bench", help="N swap/unswap pairs under load; prints figures")
    bench.add_argument("-n", "--pairs", type=int, default=10, help="swap/unswap pairs to run")
    bench.add_argument("--json", type=_as_path, help="also write the figures to this JSON file")
    labsub.add_parser("up", help="build a lab and leave it running")
    labsub.add_parser("down", help="tear down the lab made by `lab up`")
    ex = labsub.add_parser("exec", help="run a command in a lab host's namespace")
    ex.add_argument("host", help="live, backup or client")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="the command and its arguments")
    return p
