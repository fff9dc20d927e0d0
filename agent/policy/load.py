"""Load a policy: read files and includes, parse prefixes, validate, cross-check.

The one entry point the daemon, ``check`` and the reload path share, so that
all three agree on what is valid. Nothing stops at the first problem: each
stage reports what it can and the next stage still runs on what is left, so an
operator fixes a broken policy in one round, not one error at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from agent.policy._checks import check_overlaps, check_policy
from agent.policy._errors import Marks, flatten, translate
from agent.policy._include import read_tree
from agent.policy._issues import PolicyIssue
from agent.policy._prefix_files import resolve_prefixes
from agent.policy._yaml import Map, Scalar
from agent.policy.model import Policy


@dataclass
class LoadResult:
    """What ``load_policy`` found.

    ``policy`` is ``None`` exactly when there are errors. ``files`` lists every
    file that was read or looked for (the policy, its includes, prefix files),
    as absolute paths, and ``include_globs`` the absolute include patterns —
    together what a reload watcher must watch, even after a failed load.
    """

    policy: Policy | None
    errors: list[PolicyIssue] = field(default_factory=list)
    warnings: list[PolicyIssue] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    include_globs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.policy is not None


class PolicyError(Exception):
    """A policy that does not validate; ``.issues`` holds every error (warnings are not errors)."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        lines = "\n".join(str(issue) for issue in issues)
        super().__init__(f"{len(issues)} error{'s' if len(issues) != 1 else ''} in policy:\n{lines}")


def _allow_monitor(tree: Map) -> bool:
    allow = tree.entries.get("allow")
    monitor = allow.value.entries.get("monitor") if allow is not None and isinstance(allow.value, Map) else None
    return monitor is not None and isinstance(monitor.value, Scalar) and monitor.value.value is True


def load_policy(path: str | Path) -> LoadResult:
    """Read, validate and cross-check the policy at ``path`` and everything it includes."""
    path = Path(path)
    tree, sources = read_tree(path)
    issues = sources.issues
    policy: Policy | None = None
    if tree is not None:
        sections = resolve_prefixes(tree, sources.files, issues)
        check_overlaps(sections, issues, allow_monitor=_allow_monitor(tree))
        marks = Marks()
        data = flatten(tree, marks)
        try:
            policy = Policy.model_validate(data)
        except ValidationError as exc:
            issues.extend(translate(exc, Policy, marks))
        else:
            check_policy(policy, marks, issues)
    order = {name: i for i, name in enumerate(sources.order)}

    def place(issue: PolicyIssue) -> tuple[int, str, int, int]:
        return (order.get(issue.file, len(order)), issue.file, issue.line, issue.column)

    errors = sorted((i for i in issues if i.severity == "error"), key=place)
    warnings = sorted((i for i in issues if i.severity == "warning"), key=place)
    return LoadResult(
        policy=None if errors else policy,
        errors=errors,
        warnings=warnings,
        files=list(dict.fromkeys(sources.files)),
        include_globs=sources.globs,
    )


def load_policy_or_raise(path: str | Path) -> Policy:
    """``load_policy`` for callers that want the policy or an exception (``PolicyError``)."""
    result = load_policy(path)
    if result.policy is None:
        raise PolicyError(result.errors)
    return result.policy
