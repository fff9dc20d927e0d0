"""Rules that span fields or the whole policy: overlaps, capacities, orderings.

Overlaps are found with one sort and a sweep, not by comparing every pair:
prefixes are laminar (two prefixes are either nested or disjoint), so after
sorting by (family, start, length) a stack of the currently open prefixes is a
chain of containers, and each prefix only needs to look at the innermost open
one of each kind. A million deny entries against a few thousand allow entries
then costs a sort, not a billion comparisons.

Overlap rules (documented in docs/policy.md):
- allow overlapping deny: warning, allow wins;
- the same prefix in two protected groups: error (a destination belongs to one group);
- a protected prefix nested in another group's prefix: warning, the longest prefix wins;
- a deny or infrastructure prefix covering a protected prefix: warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from agent.policy._errors import Marks
from agent.policy._fields import PrefixEntry
from agent.policy._issues import KeyPath, PolicyIssue, Severity, format_path
from agent.policy._prefix_files import Section
from agent.policy._units import format_duration
from agent.policy._upstream import check_upstream
from agent.policy.model import Policy

#: Individual overlap warnings per rule before the rest are summarised.
MAX_REPORTED = 20


# Labels of the four kinds of list in one sweep.
ALLOW, DENY, INFRA, PROTECT = range(4)
_LABELS = {"allow": ALLOW, "deny": DENY, "infrastructure": INFRA, "protect": PROTECT}

#: (family, first address, prefix length, last address, label, section number, index in section)
_Item = tuple[int, int, int, int, int, int, int]


def sweep(
    sections: Sequence[tuple[int, Section]], labels: int
) -> Iterator[tuple[_Item, tuple[_Item | None, ...]]]:
    """Yield each prefix with the innermost earlier prefix of each label that contains (or equals) it.

    The sort key is one integer (family, address, length, then position so equal
    prefixes keep the order written): at a million entries, sorting tuples or
    objects costs several times more than the sweep itself.
    """
    keys: list[int] = []
    where: list[tuple[int, int, int]] = []  # position → (label, section number, index)
    for number, (label, section) in enumerate(sections):
        for index, e in enumerate(section.entries):
            keys.append((((e.version << 128 | e.address) << 8 | e.prefixlen) << 32) | len(where))
            where.append((label, number, index))
    keys.sort()
    stack: list[tuple[int, int, tuple[_Item | None, ...]]] = []
    empty: tuple[_Item | None, ...] = (None,) * labels
    for key in keys:
        label, number, index = where[key & 0xFFFFFFFF]
        prefix = key >> 32
        prefixlen = prefix & 0xFF
        version_address = prefix >> 8
        version = version_address >> 128
        first = version_address & ((1 << 128) - 1)
        last = first | ((1 << ((32 if version == 4 else 128) - prefixlen)) - 1)
        while stack and (stack[-1][0] != version or stack[-1][1] < first):
            stack.pop()
        enclosing = stack[-1][2] if stack else empty
        item = (version, first, prefixlen, last, label, number, index)
        yield item, enclosing
        nearest = list(enclosing)
        nearest[label] = item
        stack.append((version, last, tuple(nearest)))


class _Reporter:
    """Collects issues per rule, summarising beyond ``MAX_REPORTED`` so a big list stays readable."""

    def __init__(self, sections: list[Section], issues: list[PolicyIssue]) -> None:
        self.sections = sections
        self.issues = issues
        self.counts: dict[str, int] = {}
        self.first: dict[str, PolicyIssue] = {}

    def entry(self, item: _Item) -> PrefixEntry:
        return self.sections[item[5]].entries[item[6]]

    def section(self, item: _Item) -> Section:
        return self.sections[item[5]]

    def where(self, item: _Item) -> str:
        return self.entry(item).source or "an inline entry"

    def add(self, rule: str, item: _Item, message: str, severity: Severity = "warning") -> None:
        count = self.counts.get(rule, 0) + 1
        self.counts[rule] = count
        if count > MAX_REPORTED and severity == "warning":
            return
        entry = self.entry(item)
        path = format_path(self.section(item).path_of(item[6]))
        issue = PolicyIssue(
            entry.file or "<policy>", entry.line or 1, entry.column or 1, path, message, severity
        )
        if count == 1:
            self.first[rule] = issue
        self.issues.append(issue)

    def finish(self) -> None:
        for rule, count in self.counts.items():
            first = self.first[rule]
            if count > MAX_REPORTED and first.severity == "warning":
                self.issues.append(
                    PolicyIssue(
                        first.file,
                        first.line,
                        first.column,
                        first.path,
                        f"{count - MAX_REPORTED:,} more like this ({rule}) not shown",
                        "warning",
                    )
                )


def check_watch_sets(sections: list[Section], issues: list[PolicyIssue]) -> None:
    """A source prefix belongs to one watch set: the same prefix in two is an error (nested is fine)."""
    listed = [s for s in sections if s.kind == "watch" and s.entries]
    if len(listed) < 2:
        return
    report = _Reporter(listed, issues)
    for item, (outer,) in sweep([(0, s) for s in listed], 1):
        if outer is not None and outer[:3] == item[:3] and outer[5] != item[5]:
            report.add("prefix in two watch sets", item,
                       f"{report.entry(item).network} is already in {report.section(outer).name} at "
                       f"{report.where(outer)}; a source is counted in one watch set", "error")
    report.finish()


#: An allow entry wider than this (IPv4, IPv6) draws a warning: anyone can forge its addresses.
WIDE_ALLOW = {4: 24, 6: 48}


def check_wide_allows(sections: list[Section], issues: list[PolicyIssue]) -> None:
    """A wide allow entry is a hole: a flood forged from its addresses passes every limit unseen."""
    listed = [s for s in sections if s.kind == "allow" and s.entries]
    report = _Reporter(listed, issues)
    for number, section in enumerate(listed):
        for index, e in enumerate(section.entries):
            if e.prefixlen < WIDE_ALLOW[e.version]:
                size = 1 << ((32 if e.version == 4 else 128) - e.prefixlen)
                what = f"{size:,} addresses" if e.version == 4 else f"{size >> 64:,} /64s"
                report.add("wide allow", (e.version, e.address, e.prefixlen, 0, ALLOW, number, index),
                           f"allow {e.network} passes {what} past every limit, SYN check and ban; a flood "
                           "with forged sources inside it cannot be mitigated. For sources that must only "
                           "never be banned (monitoring, resolvers), use infrastructure instead")
    report.finish()


def check_overlaps(sections: list[Section], issues: list[PolicyIssue], *, allow_monitor: bool = False) -> None:
    """Report overlapping prefixes by the rules in the module docstring, in one sort and one sweep.

    ``allow_monitor``: the allow list only counts (``allow.monitor``), so a wide entry is no hole.
    """
    check_watch_sets(sections, issues)
    if not allow_monitor:
        check_wide_allows(sections, issues)
    sections = [s for s in sections if s.kind in _LABELS]
    present = {section.kind for section in sections if section.entries}
    wanted = ({"allow", "deny"} <= present) or ("protect" in present)
    if not wanted:
        return
    listed = [s for s in sections if s.entries]
    report = _Reporter(listed, issues)
    net = report.entry
    for item, (in_allow, in_deny, in_infra, in_protect) in sweep([(_LABELS[s.kind], s) for s in listed], 4):
        label = item[4]
        if label == ALLOW and in_deny is not None:
            report.add(
                "allow inside deny",
                item,
                f"allow {net(item)} overlaps deny {net(in_deny)} ({report.where(in_deny)}); allow wins",
            )
        elif label == DENY and in_allow is not None:
            report.add(
                "deny inside allow",
                item,
                f"deny {net(item)} overlaps allow {net(in_allow)} ({report.where(in_allow)}); "
                "allow wins, so this entry has no effect",
            )
        elif label == PROTECT:
            group = report.section(item).name
            if in_protect is not None:
                outer_group = report.section(in_protect).name
                same_section = in_protect[5] == item[5]
                if in_protect[:3] == item[:3]:
                    if same_section:
                        report.add(
                            "duplicate protected prefix",
                            item,
                            f"{net(item)} is listed twice in {group} (also at {report.where(in_protect)})",
                        )
                    else:
                        report.add(
                            "protected prefix in two groups",
                            item,
                            f"{net(item)} is already protected by {outer_group} "
                            f"at {report.where(in_protect)}; a destination belongs to one group",
                            "error",
                        )
                elif not same_section:
                    report.add(
                        "nested protected prefix",
                        item,
                        f"{net(item)} of {group} lies inside {net(in_protect)} of {outer_group} "
                        f"({report.where(in_protect)}); the longest prefix wins, so {group} applies to it",
                    )
            if in_deny is not None:
                report.add(
                    "deny covers protected",
                    item,
                    f"protected {net(item)} ({group}) is covered by deny {net(in_deny)} "
                    f"({report.where(in_deny)}): its hosts cannot send",
                )
            if in_infra is not None:
                report.add(
                    "infrastructure covers protected",
                    item,
                    f"protected {net(item)} ({group}) is covered by infrastructure {net(in_infra)} "
                    f"({report.where(in_infra)}): its hosts are never banned automatically",
                )
    report.finish()


def check_policy(policy: Policy, marks: Marks, issues: list[PolicyIssue]) -> None:
    """Cross-field rules on a validated policy, each reported at the field it concerns."""

    def at(path: KeyPath, message: str, severity: Severity = "error") -> None:
        _, loc = marks.nearest(path)
        issues.append(PolicyIssue.at(loc, path, message, severity))

    detection = policy.detection
    if detection.hold_down < detection.tick:
        at(
            ("detection", "hold_down"),
            f"{format_duration(detection.hold_down)} is shorter than one tick "
            f"({format_duration(detection.tick)})",
        )

    if policy.mitigation.ban_ttl_max < policy.mitigation.ban_ttl:
        at(
            ("mitigation", "ban_ttl_max"),
            f"{format_duration(policy.mitigation.ban_ttl_max)} is shorter than ban_ttl "
            f"({format_duration(policy.mitigation.ban_ttl)})",
        )
    for i, group in enumerate(policy.protect):
        effective = policy.group_mitigation(group)
        if effective.ban_ttl_max < effective.ban_ttl and (
            group.mitigation.ban_ttl is not None or group.mitigation.ban_ttl_max is not None
        ):
            field = "ban_ttl" if group.mitigation.ban_ttl is not None else "ban_ttl_max"
            at(
                ("protect", i, "mitigation", field),
                f"ban_ttl {format_duration(effective.ban_ttl)} is longer than ban_ttl_max "
                f"{format_duration(effective.ban_ttl_max)}",
            )
        if not group.prefixes:
            at(("protect", i), f"group '{group.name}' protects no prefixes", "warning")

    capacity = policy.capacity
    if len(policy.protect) + 1 > capacity.groups:
        at(
            ("capacity", "groups"),
            f"{len(policy.protect):,} groups need capacity.groups of at least {len(policy.protect) + 1:,} "
            f"(group 0 is the default); it is {capacity.groups:,}",
        )
    listed = len(policy.allow.prefixes) + len(policy.deny.prefixes)
    if listed > capacity.prefixes:
        at(
            ("capacity", "prefixes"),
            f"{listed:,} allow and deny prefixes do not fit in capacity.prefixes ({capacity.prefixes:,}); "
            f"raise it to at least {listed + policy.mitigation.max_bans:,}",
        )
    elif listed + policy.mitigation.max_bans > capacity.prefixes:
        at(
            ("capacity", "prefixes"),
            f"{listed:,} allow and deny prefixes leave room for {capacity.prefixes - listed:,} bans, "
            f"fewer than mitigation.max_bans ({policy.mitigation.max_bans:,})",
            "warning",
        )

    hook = policy.mitigation.hook
    if hook is not None and not (hook.is_file() and os.access(hook, os.X_OK)):
        at(("mitigation", "hook"), f"{hook} is not an executable file on this machine", "warning")
    check_upstream(policy.upstream, [g.name for g in policy.protect], at)
