"""Prefix lists: inline entries and prefix files, parsed fast with exact locations.

A deny list may have a million lines, so this is a tight loop over
``inet_pton`` — no pydantic object per prefix, no YAML — producing
``PrefixEntry`` tuples that already know their file and line. The model then
takes them as they are (see ``_fields.PrefixList``).

Prefix file format: one prefix per line; blank lines and lines starting with
``#`` are ignored; text after the prefix is the entry's reason, with a leading
``#`` dropped (so ``10.0.0.0/8 scanners`` and ``10.0.0.0/8  # scanners`` both
give the reason "scanners").
"""

from __future__ import annotations

import bisect
import difflib
import io
import socket
from dataclasses import dataclass, field
from pathlib import Path

from agent.policy._fields import PrefixEntry, parse_prefix
from agent.policy._issues import KeyPath, PolicyIssue, format_path
from agent.policy._regular import MAX_PREFIX_FILE_BYTES, open_regular
from agent.policy._units import describe
from agent.policy._yaml import Entry, Map, Node, Raw, Scalar, Seq

#: Errors reported per prefix file before the rest are summarised in one line.
MAX_FILE_ERRORS = 50


def read_prefix_file(path: Path, display: str, keypath: str) -> tuple[list[PrefixEntry], list[PolicyIssue]]:
    """Parse one prefix file. ``OSError`` propagates: the caller reports it where the file is named.

    The common case (``a.b.c.d/len``, IPv6 likewise) is parsed inline with
    ``inet_pton``; anything else goes through ``parse_prefix`` for the exact
    rules and message. This loop is the whole cost of a million-line deny file.
    """
    entries: list[PrefixEntry] = []
    issues: list[PolicyIssue] = []
    bad = 0
    append, entry, parse = entries.append, PrefixEntry, parse_prefix
    pton, from_bytes, inet, inet6 = socket.inet_pton, int.from_bytes, socket.AF_INET, socket.AF_INET6
    # errors="replace": a stray byte makes that one line's prefix invalid, reported with its line.
    with io.TextIOWrapper(open_regular(path, MAX_PREFIX_FILE_BYTES), encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            text = line.strip()
            if not text or text[0] == "#":
                continue
            token, *more = text.split(None, 1)
            reason: str | None = more[0] if more else None
            if "#" in token:
                token, _, after = token.partition("#")
                reason = (after + " " + (reason or "")).strip()
            if reason is not None and reason[0] == "#":
                reason = reason.lstrip("#").strip() or None
            column = 1 if line[0] not in " \t" else len(line) - len(line.lstrip()) + 1
            addr, slash, length = token.partition("/")
            try:
                if ":" in addr:
                    version, bits, address = 6, 128, from_bytes(pton(inet6, addr), "big")
                else:
                    version, bits, address = 4, 32, from_bytes(pton(inet, addr), "big")
                if not slash:
                    prefixlen = bits
                elif length.isdigit() and len(length) <= 3 and length.isascii():
                    prefixlen = int(length)
                else:
                    raise ValueError
                if prefixlen > bits or address & ((1 << (bits - prefixlen)) - 1):
                    raise ValueError
            except (OSError, ValueError):
                try:
                    version, address, prefixlen = parse(token)
                except ValueError as exc:
                    bad += 1
                    if bad <= MAX_FILE_ERRORS:
                        issues.append(PolicyIssue(display, lineno, column, keypath, str(exc)))
                    continue
            append(entry(version, address, prefixlen, reason, display, lineno, column))
    if bad > MAX_FILE_ERRORS:
        issues.append(
            PolicyIssue(
                display, 1, 1, keypath, f"{bad - MAX_FILE_ERRORS:,} more invalid lines in this file not shown"
            )
        )
    return entries, issues


@dataclass
class Section:
    """The prefixes of one list (allow, deny, infrastructure or one protected group)."""

    kind: str  # "allow" | "deny" | "infrastructure" | "protect"
    path: KeyPath
    name: str  # for messages: "allow", "group 'web'"
    entries: list[PrefixEntry] = field(default_factory=list)
    # (first index, key path) runs: which inline item or files[i] each entry came from.
    spans: list[tuple[int, KeyPath]] = field(default_factory=list)

    def path_of(self, index: int) -> KeyPath:
        """The key path of ``entries[index]``: ``protect[2].prefixes[5]`` or ``deny.files[0]``."""
        at = bisect.bisect_right(self.spans, index, key=lambda span: span[0]) - 1
        return self.spans[at][1] if at >= 0 else self.path


def _inline_item(item: Node, loc_path: KeyPath, issues: list[PolicyIssue]) -> PrefixEntry | None:
    if isinstance(item, Scalar):
        if not isinstance(item.value, str):
            issues.append(
                PolicyIssue.at(
                    item.loc,
                    loc_path,
                    f"expected a prefix written as text, e.g. 192.0.2.0/24, got {describe(item.value)}",
                )
            )
            return None
        try:
            version, address, prefixlen = parse_prefix(item.value.strip())
        except ValueError as exc:
            issues.append(PolicyIssue.at(item.loc, loc_path, str(exc)))
            return None
        return PrefixEntry(version, address, prefixlen, None, item.loc.file, item.loc.line, item.loc.column)
    if isinstance(item, Map):
        ok = True
        for key, entry in item.entries.items():
            if key not in ("prefix", "reason"):
                close = difflib.get_close_matches(key, ["prefix", "reason"], n=1)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else "a prefix entry has only 'prefix' and 'reason'"
                )
                issues.append(PolicyIssue.at(entry.key_loc, (*loc_path, key), f"unknown key; {hint}"))
                ok = False
        prefix = item.entries.get("prefix")
        reason = item.entries.get("reason")
        if prefix is None:
            issues.append(PolicyIssue.at(item.loc, loc_path, "required key 'prefix' is missing"))
            return None
        reason_text: str | None = None
        if reason is not None:
            if isinstance(reason.value, Scalar) and isinstance(reason.value.value, str | int | float):
                reason_text = str(reason.value.value)
            elif not (isinstance(reason.value, Scalar) and reason.value.value is None):
                issues.append(PolicyIssue.at(reason.value.loc, (*loc_path, "reason"), "expected text"))
                ok = False
        parsed = _inline_item(prefix.value, (*loc_path, "prefix"), issues)
        if parsed is None or not ok:
            return None
        return parsed._replace(reason=reason_text)
    kind = "a list" if isinstance(item, Seq) else "a value"
    issues.append(PolicyIssue.at(item.loc, loc_path, f"expected a prefix like 192.0.2.0/24, got {kind}"))
    return None


def _resolve_section(node: Map, section: Section, files: list[Path], issues: list[PolicyIssue]) -> None:
    """Parse a section's inline prefixes and files, and swap them for parsed values in the tree."""
    prefixes = node.entries.get("prefixes")
    if prefixes is not None:
        value = prefixes.value
        if isinstance(value, Seq):
            for i, item in enumerate(value.items):
                parsed = _inline_item(item, (*section.path, "prefixes", i), issues)
                if parsed is not None:
                    section.spans.append((len(section.entries), (*section.path, "prefixes", i)))
                    section.entries.append(parsed)
        elif not (isinstance(value, Scalar) and value.value is None):
            issues.append(
                PolicyIssue.at(
                    value.loc, (*section.path, "prefixes"), "expected a list of prefixes, e.g. [192.0.2.0/24]"
                )
            )
    read: list[Path] = []
    file_list = node.entries.get("files")
    if file_list is not None:
        value = file_list.value
        if isinstance(value, Seq):
            for i, item in enumerate(value.items):
                keypath = format_path((*section.path, "files", i))
                if not (isinstance(item, Scalar) and isinstance(item.value, str) and item.value.strip()):
                    issues.append(PolicyIssue.at(item.loc, keypath, "expected a file path written as text"))
                    continue
                # Relative to the file that names it, like include globs.
                target = Path(item.loc.file).parent / Path(item.value.strip()).expanduser()
                display = str(target)
                files.append(target.absolute())
                read.append(target.absolute())
                try:
                    entries, file_issues = read_prefix_file(target, display, keypath)
                except FileNotFoundError:
                    issues.append(PolicyIssue.at(item.loc, keypath, f"{display}: no such file"))
                    continue
                except IsADirectoryError:
                    issues.append(
                        PolicyIssue.at(item.loc, keypath, f"{display} is a directory, not a prefix file")
                    )
                    continue
                except OSError as exc:
                    issues.append(PolicyIssue.at(item.loc, keypath, f"cannot read {display}: {exc.strerror}"))
                    continue
                section.spans.append((len(section.entries), (*section.path, "files", i)))
                section.entries.extend(entries)
                issues.extend(file_issues)
        elif not (isinstance(value, Scalar) and value.value is None):
            issues.append(
                PolicyIssue.at(
                    value.loc,
                    (*section.path, "files"),
                    "expected a list of file paths, e.g. [/etc/floodguard/deny.txt]",
                )
            )
    key_loc = prefixes.key_loc if prefixes is not None else node.loc
    node.entries["prefixes"] = Entry(key_loc, Raw(tuple(section.entries), key_loc))
    if file_list is not None:
        node.entries["files"] = Entry(file_list.key_loc, Raw(tuple(read), file_list.key_loc))


def resolve_prefixes(root: Map, files: list[Path], issues: list[PolicyIssue]) -> list[Section]:
    """Replace every prefix list in the merged tree by parsed entries; return them by section."""
    sections: list[Section] = []
    for kind in ("allow", "deny", "infrastructure"):
        entry = root.entries.get(kind)
        if entry is not None and isinstance(entry.value, Map):
            section = Section(kind, (kind,), kind)
            _resolve_section(entry.value, section, files, issues)
            sections.append(section)
    for kind, what in (("protect", "group"), ("watch", "watch set")):
        listed = root.entries.get(kind)
        if listed is None or not isinstance(listed.value, Seq):
            continue
        for i, item in enumerate(listed.value.items):
            if not isinstance(item, Map):
                continue
            name_entry = item.entries.get("name")
            name = name_entry.value.value if name_entry and isinstance(name_entry.value, Scalar) else None
            section = Section(kind, (kind, i), f"{what} '{name}'" if name else f"{kind}[{i}]")
            _resolve_section(item, section, files, issues)
            sections.append(section)
    return sections
