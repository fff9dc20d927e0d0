"""``floodguard check`` (exit codes and output) and ``floodguard schema`` (a valid JSON Schema)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent.policy.check import json_schema, run_check

REPO = Path(__file__).resolve().parents[2]


def check(path: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_check(path, out, err)
    return code, out.getvalue(), err.getvalue()


def test_errors_exit_1_and_print_every_error_and_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("policy.yaml").write_text(
        "interfaces: [eth0]\n"
        "allow: {prefixes: [192.0.2.0/24]}\n"
        "deny: {prefixes: [192.0.2.0/25]}\n"
        "limits: {udp: {pps: 2G}}\n"
        "detection: {tik: 1s}\n"
    )
    code, out, err = check("policy.yaml")
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "policy.yaml:4:21: limits.udp.pps: 2G is above the maximum of 1G packets/s",
        "policy.yaml:5:13: detection.tik: unknown key; did you mean 'tick'?",
        ("policy.yaml:3:19: deny.prefixes[0]: warning: deny 192.0.2.0/25 overlaps allow 192.0.2.0/24 "
        "(policy.yaml:2); allow wins, so this entry has no effect"),
        "policy.yaml: 2 errors, 1 warning; the policy is not valid",
    ]


def test_valid_policy_exits_0_with_warnings_and_one_summary_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("deny.txt").write_text("".join(f"10.{i // 256}.{i % 256}.0/24\n" for i in range(1204)))
    Path("policy.yaml").write_text(
        "interfaces: [eth0]\n"
        "allow: {prefixes: [192.0.2.0/28, 192.0.2.16/28, 10.0.0.0/24]}\n"
        "deny: {files: [deny.txt]}\n"
        "protect:\n"
        "  - {name: web, prefixes: [203.0.113.0/24]}\n"
        "  - {name: dns, prefixes: [198.51.100.0/24]}\n"
    )
    code, out, err = check("policy.yaml")
    assert code == 0
    assert out == (
        "policy.yaml: ok — 3 allow, 1,204 deny, 0 infrastructure, 2 protected prefixes in 2 groups, "
        "6 default limits\n"
    )
    assert err == (
        "deny.txt:1:1: deny.files[0]: warning: deny 10.0.0.0/24 overlaps allow 10.0.0.0/24 "
        "(policy.yaml:2); allow wins, so this entry has no effect\n"
    )


def test_a_policy_without_interfaces_passes_with_a_note(tmp_path: Path) -> None:
    policy = tmp_path / "fragment.yaml"
    policy.write_text("limits: {udp: {pps: 1k}}\n")
    code, out, err = check(str(policy))
    assert code == 0
    assert out.startswith(f"{policy}: ok — ")
    assert "note: no interfaces" in err and "the daemon will refuse to run it" in err


def test_a_missing_file_exits_1(tmp_path: Path) -> None:
    code, out, err = check(str(tmp_path / "nope.yaml"))
    assert code == 1 and out == ""
    assert err.splitlines()[0] == f"{tmp_path / 'nope.yaml'}:1:1: no such file"


def test_the_schema_is_valid_json_schema() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(json.dumps(schema)) == schema  # plain JSON, printable by `floodguard schema`
    assert schema["additionalProperties"] is False
    # Unit fields take numbers and unit strings, with a description of the syntax.
    udp = schema["$defs"]["RateLimit"]["properties"]["bps"]
    assert {"integer", "string"} == {branch["type"] for branch in udp["anyOf"]}
    assert "bits per second" in udp["description"]


@pytest.mark.parametrize("name", ["policy.yaml", "lab-policy.yaml"])
def test_the_schema_accepts_the_shipped_policies(name: str) -> None:
    document = yaml.safe_load((REPO / "etc" / name).read_text())
    jsonschema.Draft202012Validator(json_schema()).validate(document)


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"interfaces": ["eth0"], "treshold": 1}, "Additional properties"),
        ({"limits": {"udp": {"pps": "fast"}}}, "fast"),
        ({"interfaces": [{"name": "eth0", "mode": "turbo"}]}, "turbo"),
        ({"allow": {"prefixes": [{"prefix": "10.0.0.0/8", "why": "x"}]}}, "why"),
    ],
)
def test_the_schema_rejects_what_check_rejects(document: dict[str, object], complaint: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=complaint):
        jsonschema.Draft202012Validator(json_schema()).validate(document)
