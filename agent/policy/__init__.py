"""Policy: YAML files → a validated, typed ``Policy`` (pure: no kernel access).

Public API:

- ``load_policy(path) -> LoadResult`` — every error and warning at once, with file:line:col
- ``load_policy_or_raise(path) -> Policy`` — raises ``PolicyError`` (``.issues``)
- ``Policy`` and its parts (``agent.policy.model``), ``restart_required(old, new)``
- ``PolicyIssue`` — ``file, line, column, path, message, severity``
- ``run_check(path, out, err)`` and ``json_schema()`` in ``agent.policy.check``
- ``PolicyWatcher`` in ``agent.policy.watch`` — inotify reload watcher
"""

from agent.policy._fields import PrefixEntry
from agent.policy._issues import PolicyIssue
from agent.policy.load import LoadResult, PolicyError, load_policy, load_policy_or_raise
from agent.policy.model import CLASSES, Group, Policy, PolicySummary, restart_required

__all__ = [
    "CLASSES",
    "Group",
    "LoadResult",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicySummary",
    "PrefixEntry",
    "load_policy",
    "load_policy_or_raise",
    "restart_required",
]
