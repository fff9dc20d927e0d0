"""Every YAML example in docs/policy.md loads, so the reference cannot drift from the code.

Conventions in the document (HTML comments, invisible when rendered):

- a ```yaml block is a policy: it is loaded as ``policy.yaml`` and must be valid;
- ``<!-- policy-test: errors=N -->`` before a block: it is broken on purpose
  and must give exactly N errors;
- ``<!-- policy-test: name=PATH -->`` before a block (yaml or text): the block
  is a file the examples of the same section use (an included file, a prefix
  file), written to PATH next to ``policy.yaml`` rather than loaded itself.

A section is what lies between two headings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.policy import load_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
_OPTS = re.compile(r"^<!--\s*policy-test:(?P<opts>.*?)-->\s*$")


@dataclass
class Example:
    section: str
    line: int
    body: str
    expect_errors: int  # 0: must be valid; n: must have exactly n errors
    files: dict[str, str] = field(default_factory=dict)


def examples() -> list[Example]:
    """Scan the document line by line (headings inside code blocks are not headings)."""
    found: list[Example] = []
    section = "?"
    files: dict[str, str] = {}
    pending: list[Example] = []
    opts: dict[str, str] = {}
    fence: tuple[str, int, list[str]] | None = None  # (language, first line, body lines)

    def close_section() -> None:
        for example in pending:
            example.files = dict(files)
        found.extend(pending)

    for number, line in enumerate(DOC.read_text().splitlines(keepends=True), 1):
        if fence is not None:
            if line.startswith("```"):
                lang, first, body = fence
                if "name" in opts:
                    files[opts["name"]] = "".join(body)
                elif lang == "yaml":
                    errors = int(opts.get("errors", "0"))
                    pending.append(Example(section, first, "".join(body), errors))
                fence, opts = None, {}
            else:
                fence[2].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), number + 1, [])
        elif line.startswith("#"):
            close_section()
            section, files, pending = line.lstrip("# ").strip(), {}, []
        elif (match := _OPTS.match(line)) is not None:
            opts = dict(re.findall(r"(\w+)=(\S+)", match["opts"]))
    close_section()
    return found


EXAMPLES = examples()


def test_the_document_has_examples_of_every_kind() -> None:
    assert len(EXAMPLES) >= 12
    assert any(e.expect_errors for e in EXAMPLES)
    assert any(e.files for e in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line {e.line}: {e.section}" for e in EXAMPLES])
def test_doc_example(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, body in example.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    (tmp_path / "policy.yaml").write_text(example.body)
    monkeypatch.chdir(tmp_path)
    result = load_policy("policy.yaml")
    if example.expect_errors:
        assert result.policy is None
        assert len(result.errors) == example.expect_errors, "\n".join(str(e) for e in result.errors)
    else:
        assert result.errors == [], "\n".join(str(e) for e in result.errors)
        assert result.policy is not None
        # The examples show clean policies: no warnings either, unless they are the point.
        assert result.warnings == [], "\n".join(str(w) for w in result.warnings)
