"""From the located tree to the model, and from pydantic's errors to plain words.

The merged tree is flattened into plain data for pydantic while two tables
remember where every value and every key was written. Pydantic's error
``loc`` tuples are exactly those key paths, so each error finds its
file:line:column; its message is rewritten for an operator ("expected a
list, got a mapping") and unknown keys get a did-you-mean drawn from the
model's own field names.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agent.policy._issues import KeyPath, Loc, PolicyIssue
from agent.policy._units import describe
from agent.policy._yaml import Node, Raw, Scalar, Seq


@dataclass
class Marks:
    """Where each value (``values``) and each mapping key (``keys``) was written, by key path."""

    values: dict[KeyPath, Loc] = field(default_factory=dict)
    keys: dict[KeyPath, Loc] = field(default_factory=dict)

    def nearest(self, path: KeyPath) -> tuple[KeyPath, Loc]:
        """The location of ``path``, or of its closest ancestor that has one."""
        for end in range(len(path), -1, -1):
            loc = self.values.get(path[:end])
            if loc is not None:
                return path[:end], loc
        return (), Loc("<policy>", 1, 1)


def flatten(node: Node, marks: Marks, path: KeyPath = ()) -> object:
    """The tree as plain dicts/lists/scalars, recording every location in ``marks``."""
    marks.values[path] = node.loc
    if isinstance(node, Scalar | Raw):
        return node.value
    if isinstance(node, Seq):
        return [flatten(item, marks, (*path, i)) for i, item in enumerate(node.items)]
    out: dict[str, object] = {}
    for key, entry in node.entries.items():
        marks.keys[(*path, key)] = entry.key_loc
        out[key] = flatten(entry.value, marks, (*path, key))
    return out


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated, Optional and tuple[...] down to the type a key path steps into."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def model_at(root: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (for did-you-mean), if any."""
    current: Any = root
    for part in path:
        current = _unwrap(current)
        if isinstance(part, int):
            if typing.get_origin(current) in (tuple, list):
                current = typing.get_args(current)[0]
                continue
            return None
        if (
            not (isinstance(current, type) and issubclass(current, BaseModel))
            or part not in current.model_fields
        ):
            return None
        current = current.model_fields[part].annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_EXPECTED = {
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "dict_type": "a mapping (key: value lines)",
    "tuple_type": "a list",
    "list_type": "a list",
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "path_type": "a file path",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        listed = ", ".join(choices)
        if not isinstance(value, str):
            return f"expected one of: {listed}; got {describe(value)}"
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"'{value}' is not one of: {listed}{hint}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    return str(error["msg"])


def _unknown_key(root: type[BaseModel], path: KeyPath) -> str:
    parent = model_at(root, path[:-1])
    key = str(path[-1])
    if parent is None:
        return "unknown key"
    names = list(parent.model_fields)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; expected one of: {', '.join(names)}"


def translate(exc: ValidationError, root: type[BaseModel], marks: Marks) -> list[PolicyIssue]:
    """Every pydantic error as a ``PolicyIssue`` at the place it was written."""
    issues: list[PolicyIssue] = []
    for error in exc.errors(include_url=False):
        path: KeyPath = tuple(p for p in error["loc"] if isinstance(p, int | str))
        kind = error["type"]
        if kind == "extra_forbidden":
            loc = marks.keys.get(path) or marks.nearest(path)[1]
            issues.append(PolicyIssue.at(loc, path, _unknown_key(root, path)))
        elif kind == "missing":
            _, loc = marks.nearest(path[:-1])
            issues.append(PolicyIssue.at(loc, path[:-1], f"required key '{path[-1]}' is missing"))
        else:
            _, loc = marks.nearest(path)
            issues.append(PolicyIssue.at(loc, path, _message(error)))
    return issues
