"""One mapping of the cluster file being checked (`Section`): its keys, and each value's type and range.

Owns the wording of the loader's errors: every problem is blamed on the file, line and dotted field path
of the value at fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

from failover.config.schema import ConfigError, IPAddress
from failover.config.yamllines import LineMapping, LineSequence, kind

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class Section:
    """One mapping being validated: knows its field path and lines, so it can blame a field precisely."""

    def __init__(
        self,
        file: str,
        path: str,
        data: LineMapping,
        line: int,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> None:
        self.file = file
        self.path = path
        self.data = data
        self.line = line
        if data.duplicates:
            key, at, first = min(data.duplicates, key=lambda d: d[1])
            problem = f"duplicate key (first at line {first})"
            raise ConfigError(problem, file=file, line=at, field=self.field(key))
        if required or optional:
            allowed = set(required) | set(optional)
            unknown = sorted((k for k in data if k not in allowed), key=lambda k: data.key_lines[k])
            if unknown:
                key = unknown[0]
                raise ConfigError("unknown key", file=file, line=data.key_lines[key], field=self.field(key))
        missing = [k for k in required if k not in data]
        if len(missing) == 1:
            raise ConfigError("missing required key", file=file, line=line, field=self.field(missing[0]))
        if missing:
            raise ConfigError(
                f"missing required keys: {', '.join(missing)}", file=file, line=line, field=path or None
            )

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str, *, at_key: bool = False) -> ConfigError:
        # A problem with a whole list or mapping is blamed on its key, not on its first entry.
        at_key = at_key or isinstance(self.data.get(key), LineMapping | LineSequence)
        lines = self.data.key_lines if at_key else self.data.value_lines
        return ConfigError(problem, file=self.file, line=lines.get(key, self.line), field=self.field(key))

    def section(self, key: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> Section:
        value = self.data.get(key)
        if key not in self.data:
            value = LineMapping(self.line)
        elif not isinstance(value, LineMapping):
            raise self.error(key, f"expected a mapping, got {kind(value)}")
        line = self.data.key_lines.get(key, self.line)
        return Section(self.file, self.field(key), value, line, required, optional)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {kind(value)}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, key: str, default: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {kind(value)}")
        if not 0 < value <= high:  # also rejects NaN
            raise self.error(key, f"must be greater than 0 and at most {high:g}, got {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {kind(value)}")
        return value

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {kind(value)}")
        if not value:
            raise self.error(key, "must not be empty")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def name(self, key: str) -> str:
        value = self.string(key)
        check_name(value, lambda problem: self.error(key, problem))
        return value

    def filepath(self, key: str, default: Path | None = None) -> Path:
        if default is not None and key not in self.data:
            return default
        value = self.string(key)
        if "\0" in value:
            raise self.error(key, "must not contain a NUL character")
        if not value.startswith("/"):
            # Not shown: what goes where a key's path should may be the key itself.
            raise self.error(key, f"must be an absolute path (starting with /), got {kind(value)}")
        return Path(value)

    def interface(self, key: str, default: str | None = None) -> str:
        value = self.string(key, default)
        # Linux IFNAMSIZ is 16 including the NUL; '/', ':' and whitespace are never valid in a name.
        if len(value.encode()) > 15 or value in (".", "..") or any(c in value for c in "/:\0") or any(
            c.isspace() for c in value
        ):
            raise self.error(key, f"not a valid interface name: {value!r}")
        return value

    def ip(self, key: str) -> IPAddress:
        return parse_ip(self.data[key], lambda problem: self.error(key, problem))

    def sequence(self, key: str) -> LineSequence:
        value = self.data[key]
        if not isinstance(value, LineSequence):
            raise self.error(key, f"expected a list, got {kind(value)}")
        return value

    def item_error(self, key: str, seq: LineSequence, index: int, problem: str) -> ConfigError:
        return ConfigError(
            problem, file=self.file, line=seq.item_lines[index], field=f"{self.field(key)}[{index}]"
        )


def check_name(value: str, error: Callable[[str], ConfigError]) -> None:
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise error(f"must be 1-32 characters of A-Z a-z 0-9 _ . - (and not . or ..), got {value!r}")


def parse_ip(value: object, error: Callable[[str], ConfigError]) -> IPAddress:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads e.g. 2001:0:0:0:0:0:0:1 as a base-60 integer.
        raise error(f"expected an IP address, got {kind(value)} (quote the address)")
    if not isinstance(value, str):
        raise error(f"expected an IP address, got {kind(value)}")
    try:
        return ip_address(value)
    except ValueError:
        raise error(f"not an IP address: {value!r}") from None

