"""agent/daemon/verbs.py: the control socket's verb table validates every request before a handler runs."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import cast

import pytest

from agent.daemon.api import RequestError
from agent.daemon.mapviews import PolicyIndex
from agent.daemon.parts import Parts
from agent.daemon.state import Capture
from agent.daemon.verbs import (
    AttacksArgs,
    BanArgs,
    BansArgs,
    ExplainArgs,
    NoArgs,
    TopArgs,
    Verb,
    Verbs,
    VerbTable,
    parse_args,
)
from agent.policy import load_policy

#: Every verb the CLI sends (agent/cli.py), with the arguments it sends.
CLI_REQUESTS = {
    "status": {},
    "bans": {"origin": "operator"},
    "ban": {"prefix": "198.51.100.7/32", "ttl": 600.0, "reason": "scanner", "force": True},
    "unban": {"prefix": "198.51.100.7/32"},
    "explain": {"ip": "192.0.2.1"},
    "attacks": {"recent": 20},
    "top": {"n": 10},
    "reload": {},
    "detach": {},
    "upstream": {},
}


class FakeActions:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reload(self, trigger: str) -> dict[str, object]:
        self.calls.append(f"reload:{trigger}")
        return {"ok": True}

    def detach(self) -> dict[str, object]:
        self.calls.append("detach")
        return {"interfaces": []}


def _no_capture() -> Capture:
    raise AssertionError("no verb here saves state")


def real_table(actions: FakeActions | None = None) -> VerbTable:
    """The agent's own table; no handler that reads the parts runs in these tests."""
    return Verbs(cast(Parts, None), actions or FakeActions(), _no_capture).table(threading.RLock())


def refused(table: VerbTable, verb: str, args: dict[str, object]) -> str:
    with pytest.raises(RequestError) as e:
        table.serve(verb, args)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg  # one sentence
    return msg


def test_the_table_serves_every_verb_the_cli_sends() -> None:
    table = real_table()
    assert set(table.verbs) == set(CLI_REQUESTS)
    for verb, args in CLI_REQUESTS.items():
        found = table.verbs[verb]
        parse_args(verb, found.args, args)  # what the CLI sends is valid


def test_unknown_verb_is_one_sentence_naming_the_verbs() -> None:
    msg = refused(real_table(), "shutdown", {})
    assert msg.startswith("unknown verb 'shutdown'") and "ban, bans" in msg and "status" in msg


@pytest.mark.parametrize(("verb", "args", "expected"), [
    ("ban", {"prefix": 198}, "ban: prefix must be a string, not a number"),
    ("ban", {"prefix": "198.51.100.7", "ttl": "10m"}, "ban: ttl must be a number, not a string"),
    ("ban", {"prefix": "198.51.100.7", "ttl": True}, "ban: ttl must be a number, not a boolean"),
    ("ban", {"prefix": "198.51.100.7", "reason": ["a"]}, "ban: reason must be a string, not an array"),
    ("top", {"n": 2.5}, "top: n must be an integer, not a number"),
    ("top", {"n": False}, "top: n must be an integer, not a boolean"),
    ("attacks", {"recent": {"x": 1}}, "attacks: recent must be an integer, not an object"),
    ("explain", {"ip": None}, "explain: ip must be a string, not null"),
    ("ban", {"prefix": "198.51.100.7", "ttl": float("inf")}, "ban: ttl must be a number, not NaN or infinity"),
])
def test_wrong_types_are_refused(verb: str, args: dict[str, object], expected: str) -> None:
    assert refused(real_table(), verb, args) == expected


def test_unknown_and_missing_arguments_are_refused() -> None:
    table = real_table()
    assert refused(table, "ban", {"prefix": "198.51.100.7", "tll": 60}) == \
        "ban does not take 'tll'; it takes prefix, ttl, reason, force"
    assert refused(table, "status", {"verbose": True}) == "status takes no arguments, not 'verbose'"
    assert refused(table, "detach", {"force": 1}) == "detach takes no arguments, not 'force'"
    assert refused(table, "ban", {}) == "ban needs prefix"
    assert refused(table, "explain", {}) == "explain needs ip"


def test_values_are_checked_where_they_are_parsed() -> None:
    table = real_table()
    assert "did you mean 192.0.2.0/24" in refused(table, "ban", {"prefix": "192.0.2.1/24"})
    assert "not an IP address or prefix" in refused(table, "unban", {"prefix": "300.1.2.3"})
    assert "not an IP address" in refused(table, "explain", {"ip": "nope"})
    assert "--ttl must be positive" in refused(table, "ban", {"prefix": "192.0.2.1", "ttl": 0})
    # A ttl past a year overflowed the kernel's expiry and poisoned the address model.
    assert "longer than a year" in refused(table, "ban", {"prefix": "10.0.0.0/8", "ttl": 1e11})
    # Reasons are saved with every ban and shown in tables: bounded.
    assert "at most 200 are kept" in refused(table, "ban", {"prefix": "192.0.2.1", "reason": "x" * 201})
    assert "origin must be one of policy, operator, auto" in refused(table, "bans", {"origin": "me"})
    assert "n must be 1 or more" in refused(table, "top", {"n": 0})
    assert "recent must be 0 or more" in refused(table, "attacks", {"recent": -1})


def test_handlers_get_typed_arguments() -> None:
    ban = parse_args("ban", BanArgs, {"prefix": "2001:db8::/48", "ttl": 60})
    assert ban.ttl == 60.0 and isinstance(ban.ttl, float) and ban.reason is None
    assert ban.network == ipaddress.ip_network("2001:db8::/48")
    assert parse_args("explain", ExplainArgs, {"ip": "192.0.2.9"}).address == ipaddress.ip_address("192.0.2.9")
    assert parse_args("bans", BansArgs, {}).origin is None
    assert parse_args("bans", BansArgs, {"origin": None}).origin is None
    assert parse_args("top", TopArgs, {}).n == 10 and parse_args("attacks", AttacksArgs, {}).recent == 20
    # derived fields are not arguments
    with pytest.raises(RequestError, match="does not take 'network'"):
        parse_args("ban", BanArgs, {"prefix": "192.0.2.1", "network": "192.0.2.0/24"})


def test_a_refused_request_never_reaches_its_handler_and_a_valid_one_runs_under_the_lock() -> None:
    lock = threading.RLock()
    seen: list[TopArgs] = []

    def top(a: TopArgs) -> dict[str, object]:
        assert lock._is_owned()  # type: ignore[attr-defined]
        seen.append(a)
        return {"n": a.n}

    table = VerbTable([Verb.of("top", TopArgs, top, "busiest")], lock)
    with pytest.raises(RequestError):
        table.serve("top", {"n": "5"})
    with pytest.raises(RequestError):
        table.serve("top", {"rows": 5})
    assert seen == []
    assert table.serve("top", {"n": 5}) == {"n": 5}
    assert seen == [TopArgs(n=5)]


def test_reload_and_detach_go_to_the_supervisor() -> None:
    actions = FakeActions()
    table = real_table(actions)
    assert table.serve("reload", {}) == {"ok": True}
    assert table.serve("detach", {}) == {"interfaces": []}
    assert actions.calls == ["reload:control socket", "detach"]
    assert parse_args("reload", NoArgs, {}) == NoArgs()


def test_policy_entries_are_indexed_once_per_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("interfaces: [eth0]\n"
                    "deny:\n  prefixes: [{prefix: 198.51.100.0/24, reason: flooder}, 203.0.113.0/24]\n"
                    "allow:\n  prefixes: [{prefix: 198.51.100.0/24, reason: partner}, 192.0.2.0/24]\n"
                    "infrastructure:\n  prefixes: [{prefix: 10.0.0.1/32, reason: router}]\n")
    first = load_policy(path).policy
    assert first is not None
    index = PolicyIndex()
    entries = index.entries(first)
    assert index.entries(first) is entries
    assert entries[(4, int(ipaddress.ip_address("198.51.100.0")), 24)].reason == "flooder"  # deny named it first
    assert "policy.yaml:5" in str(entries[(4, int(ipaddress.ip_address("192.0.2.0")), 24)].source)
    assert entries[(4, int(ipaddress.ip_address("10.0.0.1")), 32)].reason == "router"
    assert len(entries) == 4
    second = load_policy(path).policy
    assert index.entries(second) is not entries and index.entries(second) == entries
    assert index.entries(None) == {}
