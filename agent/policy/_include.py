"""``include:`` globs and merging several policy files into one tree.

conf.d layouts are how Ansible and Salt deliver policy: one file per customer
or per team, dropped next to a main file. The merge rules are chosen so that no
file can silently undo another: collections (prefix lists, files, groups,
interfaces, includes) concatenate, mappings merge key by key, and a single
value written in two files is an error that names both places — the operator
must decide, not the load order.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.policy._issues import KeyPath, Loc, PolicyIssue, format_path
from agent.policy._yaml import Entry, Map, Node, Scalar, Seq, YamlFileError, load_yaml

#: Keys whose lists from several files are concatenated; any other list is one value.
CONCATENATED = frozenset({"include", "interfaces", "prefixes", "files", "protect"})


@dataclass
class Sources:
    """What reading a policy and its includes produced, besides the merged tree."""

    files: list[Path] = field(default_factory=list)
    globs: list[str] = field(default_factory=list)
    issues: list[PolicyIssue] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # display names, in the order read


@dataclass
class _Reader:
    sources: Sources
    stack: list[tuple[Path, str]] = field(default_factory=list)
    seen: dict[Path, Loc] = field(default_factory=dict)

    def read(self, path: Path, display: str, included_at: Loc | None, key: str = "include") -> list[Map]:
        """Read ``path`` and, depth-first, what it includes; return the trees in merge order."""
        resolved = path.resolve()
        chain = [p for p, _ in self.stack]
        if resolved in chain:
            names = [d for _, d in self.stack[chain.index(resolved) :]] + [display]
            assert included_at is not None
            self.sources.issues.append(
                PolicyIssue.at(included_at, key, f"include cycle: {' → '.join(names)}")
            )
            return []
        if resolved in self.seen:
            assert included_at is not None
            self.sources.issues.append(
                PolicyIssue.at(included_at, key, f"{display} is already included at {self.seen[resolved]}")
            )
            return []
        self.seen[resolved] = included_at or Loc(display, 1, 1)
        self.sources.files.append(path.absolute())
        self.sources.order.append(display)
        try:
            tree, issues = load_yaml(path, display)
        except YamlFileError as exc:
            if included_at is not None and exc.loc.line == 1 and exc.loc.column == 1 and not path.exists():
                self.sources.issues.append(PolicyIssue.at(included_at, key, f"{display}: no such file"))
            else:
                self.sources.issues.append(PolicyIssue.at(exc.loc, "", exc.message))
            return []
        self.sources.issues.extend(issues)
        if tree is None:
            if included_at is None:
                self.sources.issues.append(
                    PolicyIssue.at(
                        Loc(display, 1, 1), "", "the file is empty; a policy needs at least `interfaces:`"
                    )
                )
            else:
                self.sources.issues.append(
                    PolicyIssue.at(Loc(display, 1, 1), "", "the file is empty; nothing to include", "warning")
                )
            return []
        if not isinstance(tree, Map):
            kind = "a list" if isinstance(tree, Seq) else f"the single value {getattr(tree, 'value', '')!r}"
            self.sources.issues.append(
                PolicyIssue.at(
                    tree.loc,
                    "",
                    f"the top level must be a mapping of keys such as `interfaces:` and `protect:`, "
                    f"not {kind}",
                )
            )
            return []
        trees = [tree]
        self.stack.append((resolved, display))
        try:
            for i, (pattern, loc) in enumerate(self._include_patterns(tree)):
                for child, child_display in self._expand(path, pattern):
                    trees.extend(self.read(child, child_display, loc, f"include[{i}]"))
        finally:
            self.stack.pop()
        return trees

    def _include_patterns(self, tree: Map) -> list[tuple[str, Loc]]:
        entry = tree.entries.get("include")
        if entry is None:
            return []
        node = entry.value
        # A single glob may be written without a list; normalise so includes from
        # several files concatenate like the other collections.
        if isinstance(node, Scalar):
            node = Seq([node], node.loc)
            tree.entries["include"] = Entry(entry.key_loc, node)
        if not isinstance(node, Seq):
            self.sources.issues.append(PolicyIssue.at(node.loc, "include", "expected a list of file globs"))
            return []
        patterns = []
        for i, item in enumerate(node.items):
            if isinstance(item, Scalar) and isinstance(item.value, str) and item.value.strip():
                patterns.append((item.value.strip(), item.loc))
            else:
                self.sources.issues.append(
                    PolicyIssue.at(
                        item.loc, ("include", i), "expected a file glob written as text, e.g. conf.d/*.yaml"
                    )
                )
        return patterns

    def _expand(self, including: Path, pattern: str) -> list[tuple[Path, str]]:
        base = including.parent
        # Keep names as the operator would write them: "conf.d/a.yaml", not "./conf.d/a.yaml".
        pattern = os.path.expanduser(pattern)
        joined = pattern if str(base) == "." else os.path.join(base, pattern)
        if glob.has_magic(pattern):
            self.sources.globs.append(os.path.join(base.absolute(), pattern))
            # A glob that matches nothing is fine: conf.d may be empty. Directories are skipped.
            return [(Path(m), m) for m in sorted(glob.glob(joined)) if os.path.isfile(m)]
        return [(Path(joined), joined)]


def read_tree(path: Path) -> tuple[Map | None, Sources]:
    """Read a policy file and everything it includes, merged into one tree."""
    sources = Sources()
    trees = _Reader(sources).read(path, str(path), None)
    if not trees:
        return None, sources
    merged = trees[0]
    for tree in trees[1:]:
        merged = merge(merged, tree, (), sources.issues)
    check_unique_names(merged, sources.issues)
    return merged, sources


def merge(base: Map, other: Map, path: KeyPath, issues: list[PolicyIssue]) -> Map:
    """Merge ``other`` into a copy of ``base`` by the include rules, reporting conflicts."""
    entries = dict(base.entries)
    for key, entry in other.entries.items():
        first = entries.get(key)
        if first is None:
            entries[key] = entry
            continue
        a, b = first.value, entry.value
        # A key left empty (null: everything under it commented out) says nothing; the other file wins.
        if isinstance(b, Scalar) and b.value is None:
            continue
        if isinstance(a, Scalar) and a.value is None:
            entries[key] = entry
        elif isinstance(a, Map) and isinstance(b, Map):
            entries[key] = Entry(first.key_loc, merge(a, b, (*path, key), issues))
        elif isinstance(a, Seq) and isinstance(b, Seq) and key in CONCATENATED:
            entries[key] = Entry(first.key_loc, Seq(a.items + b.items, a.loc))
        else:
            issues.append(
                PolicyIssue.at(
                    entry.key_loc,
                    (*path, key),
                    f"already set at {first.key_loc}; a value may be set in one file only "
                    f"(lists of prefixes, files, groups and interfaces are joined, mappings merged by key)",
                )
            )
    return Map(entries, base.loc)


def _name_of(node: Node) -> tuple[str, Loc] | None:
    if isinstance(node, Scalar) and isinstance(node.value, str):
        return node.value, node.loc
    if isinstance(node, Map):
        entry = node.entries.get("name")
        if entry is not None and isinstance(entry.value, Scalar) and isinstance(entry.value.value, str):
            return entry.value.value, entry.value.loc
    return None


def check_unique_names(root: Map, issues: list[PolicyIssue]) -> None:
    """A group, watch set or interface named twice — in one file or across includes — is an error naming both."""
    for key, what in (("protect", "group"), ("watch", "watch set"), ("interfaces", "interface")):
        entry = root.entries.get(key)
        if entry is None or not isinstance(entry.value, Seq):
            continue
        first_seen: dict[str, Loc] = {}
        for i, item in enumerate(entry.value.items):
            named = _name_of(item)
            if named is None:
                continue
            name, loc = named
            if name in first_seen:
                path = format_path((key, i, "name")) if isinstance(item, Map) else format_path((key, i))
                issues.append(
                    PolicyIssue.at(loc, path, f"{what} '{name}' is already defined at {first_seen[name]}")
                )
            else:
                first_seen[name] = loc
