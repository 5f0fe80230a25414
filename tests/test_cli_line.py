"""The quick reading of `swap|unswap|status` lines (`cli.agent_command_line`) is argparse's, or declines.

Every line the reader takes must give what argparse gives for it (`failover.cliparser`, the one grammar);
every line it declines goes to argparse, which reads or refuses it as it always did. Checked over hand-picked
lines (the ones operators type, and the corners of argparse's grammar) and over random lines made of the
commands' own words, real argparse on the other side each time. And the request line the CLI writes
without `json` (`controlclient.request_line`) is the one `json.dumps` writes.
"""

from __future__ import annotations

import json
import random

import pytest

from failover import cli, cliparser, controlclient


def argparse_reading(words: list[str]) -> dict[str, object] | None:
    """What argparse makes of the line (as the CLI uses it), or None where it refuses it or prints help."""
    try:
        args = cliparser.parser().parse_args(words)
    except SystemExit:
        return None
    return cli.AgentCommandLine.of(args).fields()


def read_alike(quick: cli.AgentCommandLine, words: list[str]) -> bool:
    # As text: a timeout of nan is read alike by both, yet nan != nan.
    return repr(quick.fields()) == repr(argparse_reading(words))


# Lines operators type: each must be taken by the quick reader (else it would be no quicker).
PLAIN = [
    ["swap"], ["unswap"], ["status"], ["status", "--json"], ["swap", "--json"],
    ["swap", "-c", "/etc/failover/cluster.yaml"], ["swap", "--config", "/x.yaml", "--node", "web1"],
    ["swap", "--config=/x.yaml", "--node=web2"], ["unswap", "--dry-run", "--json"],
    ["swap", "--reason", "kernel upgrade on web1"], ["swap", "--reason=", "--json"],
    ["swap", "--timeout", "90"], ["swap", "--timeout=2.5", "--no-wait-drained"],
    ["swap", "--no-wait-drained", "--wait-drained"], ["status", "--node", "backup", "-c", "/y.yaml"],
    ["swap", "--reason", "a", "--reason", "b"], ["swap", "--timeout", "1e3"], ["swap", "--timeout", " 7 "],
    ["swap", "--reason", "naïve \"quoted\" \\ back"], ["swap", "--reason", "x=y"], ["swap", "--config", ""],
]
# Corners of argparse's grammar: the reader declines them (argparse reads or refuses them), or reads them
# exactly as argparse does (a timeout of nan or inf, say).
CORNERS = [
    [], ["agent"], ["check"], ["swap", "-h"], ["swap", "--help"], ["status", "--help"], ["swap", "--jso"],
    ["swap", "--js"], ["swap", "--dry"], ["swap", "-cX"], ["swap", "-c=X"], ["swap", "-c"],
    ["swap", "--node"], ["swap", "--timeout", "soon"], ["swap", "--timeout", "-5"],
    ["swap", "--reason", "-x"],
    ["swap", "--reason", "--json"], ["swap", "--", "x"], ["swap", "extra"], ["status", "--dry-run"],
    ["status", "--timeout", "3"], ["status", "--reason", "r"], ["swap", "--json=1"], ["swap", "--dry-run=y"],
    ["swap", "--wait-drained=no"], ["swap", "-"], ["swap", "--config", "-"], ["swap", "--timeout", "nan"],
    ["swap", "--timeout", "inf"], ["swap", "--no-json"], ["swap", "-j"], ["unswap", "--timeout=", "--json"],
]


@pytest.mark.parametrize("words", PLAIN, ids=" ".join)
def test_plain_lines_are_read_quickly_and_as_argparse_reads_them(words: list[str]) -> None:
    quick = cli.agent_command_line(words)
    assert quick is not None
    assert read_alike(quick, words)


@pytest.mark.parametrize("words", CORNERS, ids=" ".join)
def test_a_corner_is_argparse_s_to_read(words: list[str]) -> None:
    quick = cli.agent_command_line(words)
    if quick is not None:  # taken after all: then exactly as argparse takes it
        assert read_alike(quick, words)


def test_random_lines_are_read_as_argparse_reads_them_or_declined() -> None:
    words = ["-c", "--config", "--config=/a", "--node", "--node=b", "--json", "--timeout", "--timeout=3",
             "--reason", "--reason=r r", "--wait-drained", "--no-wait-drained", "--dry-run", "/etc/c.yaml",
             "web1", "12", "-1", "", "-", "--", "--jso", "x=y", "-h", "0x10", "1_000", "nan"]
    rng = random.Random(15)
    taken = 0
    for _ in range(3000):
        line = [rng.choice(cli.AGENT_COMMANDS), *rng.choices(words, k=rng.randint(0, 6))]
        quick = cli.agent_command_line(line)
        if quick is not None:
            taken += 1
            assert read_alike(quick, line), line
    assert taken > 300  # the comparison ran on many lines, not only on declined ones


def test_a_declined_line_still_gets_argparse_s_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.agent_command_line(["swap", "--timeout", "soon"]) is None
    with pytest.raises(SystemExit) as exit_:
        cli.main(["swap", "--timeout", "soon"])
    assert exit_.value.code == cli.EXIT_USAGE
    assert "argument --timeout: invalid float value: 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "-0.0", "nan", "inf", "-inf", "1e10"])
def test_a_timeout_no_socket_can_wait_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, these reached settimeout and ended in a traceback, exit 1.
    assert cli.agent_command_line(["swap", "--timeout", value]) is None
    with pytest.raises(SystemExit) as exit_:
        cli.main(["swap", f"--timeout={value}"])
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()[-1]
    expected = f"argument --timeout: must be a number of seconds above 0 and at most 1e+09: '{value}'"
    assert err.endswith(expected)


@pytest.mark.parametrize("text", ["", "plain", 'a "quote"', "back\\slash", "new\nline\ttab\x00\x1f\x7f",
                                  "naïve \u2013 ünïcode ✓ 𝄞", "\udcff lone surrogate", "</script>"])
def test_the_request_line_is_json_s(text: str) -> None:
    req: dict[str, str | bool | float | int | None] = {
        "cmd": "swap", "operator": text, "reason": text, "config": "/etc/failover/cluster.yaml",
        "wait_drained": False, "dry_run": True, "n": 3, "t": 2.5, "none": None,
    }
    line = controlclient.request_line(req)
    assert line == json.dumps(req, separators=(",", ":")).encode() + b"\n"
    assert json.loads(line) == req


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1], {"a": 1}, b"bytes"])
def test_a_request_field_json_would_not_write_plainly_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="field"):
        controlclient.request_line({"cmd": "swap", "x": value})  # type: ignore[dict-item]
