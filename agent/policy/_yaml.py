"""YAML → a tree of nodes that remember where they were written.

PyYAML's ``safe_load`` throws positions away, yet every policy error must name
file:line:column. So we stop one step earlier, at the composed node graph
(libyaml's C composer when available — a large policy parses several times
faster), and build our own light tree: each node keeps its ``Loc``; mappings keep
the location of each key too, so an unknown key can be pointed at precisely.

Building the mappings ourselves also lets us reject duplicate keys, which
``safe_load`` silently resolves to the last one — in a policy, a second
``udp:`` that overwrites the first is a bug the operator never sees. YAML merge
keys (``<<: *defaults``) are honoured, with explicit keys winning, because
templates of thresholds are how people write a thousand similar groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.policy._issues import KeyPath, Loc, PolicyIssue
from agent.policy._regular import MAX_POLICY_BYTES, FileKindError, read_regular

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"})

#: Aliases can expand exponentially ("billion laughs"). A policy never needs this many nodes
#: (prefix lists go in prefix files); a million are built in about a second, well inside the
#: daemon's watchdog.
MAX_NODES = 1_000_000


@dataclass(slots=True)
class Scalar:
    """A leaf value as YAML 1.1 resolves it (str, int, float, bool, None, …)."""

    value: object
    loc: Loc


@dataclass(slots=True)
class Seq:
    """A YAML sequence."""

    items: list[Node]
    loc: Loc


@dataclass(slots=True)
class Entry:
    """One ``key: value`` pair: the key's location and the value node."""

    key_loc: Loc
    value: Node


@dataclass(slots=True)
class Map:
    """A YAML mapping with string keys, in the order written."""

    entries: dict[str, Entry]
    loc: Loc


@dataclass(slots=True)
class Raw:
    """A value computed by the loader (e.g. parsed prefixes) that the model takes as is."""

    value: object
    loc: Loc


Node = Scalar | Seq | Map | Raw


class YamlFileError(Exception):
    """A file that cannot be read or parsed at all; carries the place and a message."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(f"{loc}: {message}")
        self.loc = loc
        self.message = message


@dataclass
class _Builder:
    """Turns a composed PyYAML node graph into our located tree, collecting issues."""

    display: str
    loader: yaml.SafeLoader
    issues: list[PolicyIssue] = field(default_factory=list)
    count: int = 0
    _active: set[int] = field(default_factory=set)

    def loc(self, node: yaml.Node) -> Loc:
        mark = node.start_mark
        return Loc(self.display, mark.line + 1, mark.column + 1)

    def build(self, node: yaml.Node, path: KeyPath) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlFileError(self.loc(node), f"more than {MAX_NODES:,} values (runaway aliases?)")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:
                return Scalar(node.value, self.loc(node))
            try:
                return Scalar(self.loader.construct_object(node), self.loc(node))
            except yaml.MarkedYAMLError:
                raise
            except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # e.g. `!!int abc`, a bad date
                raise YamlFileError(self.loc(node), f"YAML value error: {exc}") from None
        if node.tag not in _COLLECTION_TAGS:
            raise YamlFileError(self.loc(node), f"the tag {node.tag!r} has no meaning in a policy: remove it")
        if id(node) in self._active:
            raise YamlFileError(self.loc(node), "an alias refers to the mapping or list that contains it")
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return Seq(
                    [self.build(item, (*path, i)) for i, item in enumerate(node.value)], self.loc(node)
                )
            assert isinstance(node, yaml.MappingNode), node
            return self.mapping(node, path)
        finally:
            self._active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> Map:
        entries: dict[str, Entry] = {}
        merged: dict[str, Entry] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._merge_into(merged, value_node, path)
                continue
            key_loc = self.loc(key_node)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                raw = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a mapping or list"
                resolved = (
                    self.loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                )
                self.issues.append(
                    PolicyIssue.at(
                        key_loc,
                        path,
                        f"key {raw} is read by YAML as {_kind(resolved)}, not as text; put it in quotes"
                        if isinstance(key_node, yaml.ScalarNode)
                        else "a key must be text, not a mapping or list",
                    )
                )
                continue
            key = key_node.value
            if key in entries:
                first = entries[key].key_loc
                self.issues.append(
                    PolicyIssue.at(
                        key_loc,
                        (*path, key),
                        f"duplicate key; '{key}' is already set at line {first.line} of this mapping",
                    )
                )
                continue
            entries[key] = Entry(key_loc, self.build(value_node, (*path, key)))
        for key, entry in merged.items():
            entries.setdefault(key, entry)
        return Map(entries, self.loc(node))

    def _merge_into(self, merged: dict[str, Entry], value: yaml.Node, path: KeyPath) -> None:
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.issues.append(PolicyIssue.at(self.loc(source), path, "'<<' merges mappings only"))
                continue
            built = self.build(source, path)
            assert isinstance(built, Map)
            for key, entry in built.entries.items():
                merged.setdefault(key, entry)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a {type(value).__name__}"


def _loader_class() -> type[yaml.SafeLoader]:
    """libyaml's loader when PyYAML was built with it, the pure-Python one otherwise."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path, display: str) -> tuple[Node | None, list[PolicyIssue]]:
    """Parse one YAML file into a located tree.

    Returns ``(None, issues)`` for an empty file (only comments or blank), and
    raises ``YamlFileError`` when the file cannot be read or is not valid YAML.
    Duplicate keys and non-text keys come back as issues next to the tree.
    """
    start = Loc(display, 1, 1)
    try:
        data = read_regular(path, MAX_POLICY_BYTES)
    except FileNotFoundError:
        raise YamlFileError(start, "no such file") from None
    except IsADirectoryError:
        raise YamlFileError(start, "is a directory, not a file") from None
    except PermissionError:
        raise YamlFileError(start, "permission denied: the file is not readable by this user") from None
    except FileKindError as exc:
        raise YamlFileError(start, str(exc.strerror)) from None
    except OSError as exc:
        raise YamlFileError(start, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlFileError(Loc(display, line, column), "not valid UTF-8 text") from None
    loader = _loader_class()(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(display, exc, text) from None
        except yaml.YAMLError as exc:
            raise YamlFileError(start, f"YAML syntax error: {exc}") from None
        if root is None:
            return None, []
        builder = _Builder(display, loader)
        try:
            tree = builder.build(root, ())
        except yaml.MarkedYAMLError as exc:  # e.g. an unknown tag such as `!foo`, met while building
            raise _syntax_error(display, exc, text) from None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # e.g. a date such as 2024-13-45
            raise YamlFileError(start, f"YAML value error: {exc}") from None
        return tree, builder.issues
    finally:
        loader.dispose()


def _syntax_error(display: str, exc: yaml.MarkedYAMLError, text: str) -> YamlFileError:
    mark = exc.problem_mark or exc.context_mark
    loc = Loc(display, mark.line + 1, mark.column + 1) if mark is not None else Loc(display, 1, 1)
    problem = exc.problem or "invalid YAML"
    context = f" ({exc.context})" if exc.context else ""
    hint = ""
    if mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t":
        hint = "; YAML indents with spaces, never tabs"
    elif "mapping values are not allowed" in problem:
        hint = "; a value that contains ': ' must be quoted, or the indentation is off"
    return YamlFileError(loc, f"YAML syntax error: {problem}{context}{hint}")
