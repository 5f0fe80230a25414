"""The README's deploy steps ("Put it on your two servers"), read from the README itself.

Each step is a fenced `sh` block right after a marker `<!-- deploy:NAME on=both|live|backup -->`; the
block's text, unindented, is the step. The Vagrant provisioner runs steps by name from the README in the
guest, so what it runs is what the README says; tests/vagrant/test_deploy_docs.py checks the rest.

usage: python3 deploy_steps.py README.md NAME    print step NAME's commands (exit 2: no such step)
       python3 deploy_steps.py README.md         list the steps: NAME HOSTS, in order
Standard library only: the guest runs it before the project is installed.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^[ \t]*<!-- deploy:(?P<name>[a-z][a-z-]*) on=(?P<on>both|live|backup) -->$")
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)```sh$")


class StepError(Exception):
    """One line naming the README, the line and what is wrong with a step."""


@dataclass(frozen=True)
class Step:
    name: str
    on: str  # both, live or backup
    commands: str  # the block's text, unindented, ending in a newline
    line: int  # of the marker


def steps(readme: Path) -> list[Step]:
    """Every deploy step of the README, in order; a malformed or repeated marker is an error."""
    lines = readme.read_text().splitlines()
    found: list[Step] = []
    for i, text in enumerate(lines):
        if "<!-- deploy:" not in text:
            continue
        where = f"{readme}:{i + 1}"
        marker = MARKER.match(text)
        if marker is None:
            raise StepError(f"{where}: a deploy marker must read <!-- deploy:NAME on=both|live|backup -->")
        fence = FENCE_OPEN.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise StepError(f"{where}: the line after a deploy marker must open a ```sh block")
        indent = fence["indent"]
        try:
            end = next(j for j in range(i + 2, len(lines)) if lines[j] == f"{indent}```")
        except StopIteration:
            raise StepError(f"{where}: its ```sh block is never closed") from None
        body = [line.removeprefix(indent) for line in lines[i + 2 : end]]
        if any(step.name == marker["name"] for step in found):
            raise StepError(f"{where}: step {marker['name']!r} appears twice")
        found.append(Step(marker["name"], marker["on"], textwrap.dedent("\n".join(body)) + "\n", i + 1))
    return found


def step(readme: Path, name: str) -> Step:
    for s in steps(readme):
        if s.name == name:
            return s
    raise StepError(f"{readme}: no deploy step {name!r}")


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    try:
        if len(argv) == 2:
            print(step(Path(argv[0]), argv[1]).commands, end="")
        else:
            for s in steps(Path(argv[0])):
                print(s.name, s.on)
    except (StepError, OSError) as err:
        print(f"deploy_steps: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
