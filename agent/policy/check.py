"""``floodguard check FILE`` and ``floodguard schema``: the policy as an operator sees it.

``check`` behaves like ``nginx -t``: it is what systemd's ExecStartPre and
ExecReload run and what a CI job for a policy repository runs, so the exit code
is the contract (0 valid, 1 not) and the output is one line on success.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from agent.policy.load import load_policy
from agent.policy.model import Policy

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def run_check(path: str | Path, out: TextIO, err: TextIO) -> int:
    """Validate the policy at ``path``; print errors and warnings to ``err``, the verdict line to ``out``.

    Returns the process exit code: 1 if there is any error, else 0.
    """
    result = load_policy(path)
    for issue in [*result.errors, *result.warnings]:
        print(issue, file=err)
    if result.policy is None:
        print(
            f"{path}: {_plural(len(result.errors), 'error')}, {_plural(len(result.warnings), 'warning')}; "
            "the policy is not valid",
            file=err,
        )
        return 1
    for blocker in result.policy.run_blockers():
        print(f"{path}: note: {blocker} (valid for check; the daemon will refuse to run it)", file=err)
    print(f"{path}: ok — {result.policy.summary()}", file=out)
    return 0


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the policy file, for editors (``floodguard schema``).

    Unit fields accept both numbers and the unit strings (``50k``, ``1Gbit``,
    ``10m``). The schema cannot express cross-file rules (includes, overlaps),
    so ``floodguard check`` stays the authority.
    """
    schema = Policy.model_json_schema(mode="validation")
    _accept_shorthands(schema)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://floodguard.invalid/policy.schema.json",
        "title": "floodguard policy",
        "description": "floodguard policy file (see docs/policy.md); `floodguard check FILE` validates fully",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def _accept_shorthands(schema: dict[str, Any]) -> None:
    """Teach the schema the spellings that validators accept before the model sees them."""
    props = schema["properties"]
    props["include"] = {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": props["include"].get("description", ""),
    }
    interface = props["interfaces"]["items"]
    props["interfaces"]["items"] = {"anyOf": [{"type": "string", "description": "interface name"}, interface]}
    # YAML 1.1 reads a bare `off` as false, and the model takes it as "off".
    syn_auth = schema["$defs"]["Group"]["properties"]["syn_auth"]
    syn_auth["enum"] = [*syn_auth["enum"], False]
    syn_auth.pop("type", None)
