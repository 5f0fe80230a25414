"""YAML text in, plain dicts and lists out that remember the line of every key, value and item.

Also bounds what aliases may expand to, turns every PyYAML error into a one-line `ConfigError` with a
line number, and describes a value in the words an error message uses (`kind`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from failover.config.schema import ConfigError


def kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        # A long string may be a key pasted in the wrong place: its length says enough.
        return f"string {value!r}" if len(value) <= 24 else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class LineMapping(dict[str, Any]):
    """A YAML mapping that remembers the 1-based line of each key and value, and any repeated keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}
        self.value_lines: dict[str, int] = {}
        # (key, line of the repeat, line of the first occurrence); reported when the path is known.
        self.duplicates: list[tuple[str, int, int]] = []


class LineSequence(list[Any]):
    """A YAML sequence that remembers the 1-based line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _key(node: yaml.Node) -> str:
    # Keys are taken as written: under YAML 1.1 a node called `on` or `no` would otherwise become a bool.
    if not isinstance(node, yaml.ScalarNode):
        raise ConstructorError(None, None, "mapping keys must be plain strings", node.start_mark)
    return str(node.value)


class LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers, so every error can cite a line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:  # PyYAML's own constructors fail loosely, e.g. `!!int abc`, `!!timestamp x`
            raise ConstructorError(None, None, f"cannot read {node.tag} value: {e}", node.start_mark) from e


def _construct_map(loader: LineLoader, node: yaml.Node) -> Iterator[LineMapping]:
    if not isinstance(node, yaml.MappingNode):
        raise ConstructorError(None, None, "expected a mapping", node.start_mark)
    data = LineMapping(_line(node))
    yield data
    first: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = _key(key_node)
        if key in first:
            data.duplicates.append((key, _line(key_node), first[key]))
        else:
            first[key] = _line(key_node)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = _key(key_node)
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = _line(key_node)
        data.value_lines[key] = _line(value_node)


def _construct_seq(loader: LineLoader, node: yaml.Node) -> Iterator[LineSequence]:
    if not isinstance(node, yaml.SequenceNode):
        raise ConstructorError(None, None, "expected a sequence", node.start_mark)
    data = LineSequence(_line(node))
    yield data
    for item in node.value:
        data.append(loader.construct_object(item))
        data.item_lines.append(_line(item))


LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _bound_aliases(root: yaml.Node, shown: str, limit: int = 10_000) -> None:
    """Refuse a document whose aliases make it larger than any cluster file (a billion laughs) before a
    single value is built; counted once per node, so the count itself costs no more than the text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to a value that contains it", file=shown, line=_line(node))
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > limit:
            problem = f"YAML aliases expand to more than {limit} values"
            raise ConfigError(problem, file=shown, line=_line(root))
        sizes[key] = total
        return total

    size(root)


def parse_yaml(text: str, shown: str) -> Any:
    loader: LineLoader | None = None
    try:
        loader = LineLoader(text)  # checks for unprintable characters up front
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("top level must be a mapping, got an empty document", file=shown, line=1)
        _bound_aliases(node, shown)
        data = loader.construct_document(node)
        if not isinstance(data, LineMapping):
            raise ConfigError(f"top level must be a mapping, got {kind(data)}", file=shown, line=_line(node))
        return data
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = ": ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        raise ConfigError(problem, file=shown, line=mark.line + 1 if mark else 1) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(e.position, 0)) + 1
        raise ConfigError(f"character {chr(e.character)!r}: {e.reason}", file=shown, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=shown, line=1) from None
    except RecursionError:
        raise ConfigError("nested too deeply", file=shown, line=1) from None
    finally:
        if loader is not None:
            loader.dispose()

