"""Loading valid policies: defaults, merging, prefix files, warnings and the public API."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from agent.policy import (
    CLASSES,
    Policy,
    PolicyError,
    PolicyIssue,
    load_policy,
    load_policy_or_raise,
    restart_required,
)
from agent.policy.compile import compile_policy
from agent.policy.model import Limits

REPO = Path(__file__).resolve().parents[2]


def write(tmp: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content).lstrip("\n"))


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_minimal_policy_gets_the_documented_defaults(here: Path) -> None:
    write(here, {"policy.yaml": "interfaces: [eth0]\n"})
    policy = load_policy_or_raise("policy.yaml")
    assert policy.interfaces[0].name == "eth0" and policy.interfaces[0].mode == "auto"
    assert policy.mode == "enforce" and policy.malformed == "drop"
    # No per-source limit unless the operator sets one: one address is often many people.
    for name in ("tcp_syn", "tcp_other", "udp", "icmp", "fragment", "other"):
        lim = policy.limits.rate(name)
        assert (lim.pps, lim.bps, lim.burst) == (0, 0, 0), name
    assert all(g.syn_auth == "on_attack" for g in policy.protect)
    assert policy.limits.ipv6_prefix == 64
    assert policy.detection.tick == 1.0 and policy.detection.hold_down == 30.0
    assert policy.mitigation.ladder == ("tighten", "rule", "ban")
    assert policy.mitigation.ban_ttl_max == 86400.0
    assert policy.capacity.groups >= 1001 and policy.capacity.prefixes >= 32_000
    assert policy.metrics.host == "127.0.0.1" and policy.metrics.port == 9470
    assert policy.run_blockers() == []


def test_the_shipped_policies_load_clean() -> None:
    for name in ("policy.yaml", "lab-policy.yaml"):
        result = load_policy(REPO / "etc" / name)
        assert result.errors == [] and result.warnings == [], [
            str(i) for i in result.errors + result.warnings
        ]
        assert result.policy is not None


def test_units_become_plain_numbers(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": """
        interfaces: [eth0]
        limits:
          udp: {pps: 1.5M, bps: 1.5Gbit}
          tcp_syn: {pps: 500}
        detection: {tick: 250ms, hold_down: 2m}
        mitigation: {ban_ttl: 1h30m, max_bans: 20k}
        """
        },
    )
    policy = load_policy_or_raise("policy.yaml")
    assert policy.limits.udp.pps == 1_500_000 and policy.limits.udp.bps == 1_500_000_000
    assert policy.limits.udp.burst == 3_000_000
    # A class written with only pps keeps its default bps and gets a burst that follows pps.
    assert (policy.limits.tcp_syn.bps, policy.limits.tcp_syn.burst) == (0, 1000), "bps stays unlimited"
    assert policy.detection.tick == 0.25 and policy.detection.hold_down == 120.0
    assert policy.mitigation.ban_ttl == 5400.0 and policy.mitigation.max_bans == 20_000


def test_syn_challenges_have_a_gateway_wide_cap(here: Path) -> None:
    # Per-group caps alone let N groups aim N x challenge_pps at one victim.
    write(here, {"policy.yaml": "interfaces: [eth0]\nsyn_auth: {challenge_pps: 5k}\n"})
    policy = load_policy_or_raise("policy.yaml")
    assert compile_policy(policy).desired.config.challenge_pps_total == 10_000, "default: twice challenge_pps"
    write(here, {"policy.yaml": "interfaces: [eth0]\nsyn_auth: {challenge_pps_total: 2k}\n"})
    policy = load_policy_or_raise("policy.yaml")
    assert compile_policy(policy).desired.config.challenge_pps_total == 2000


def test_group_overrides_resolve_field_by_field(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": """
        interfaces: [eth0]
        limits: {udp: {pps: 10k, bps: 100Mbit, burst: 15k}}
        mitigation: {ban_ttl: 10m, ban_ttl_max: 2h}
        protect:
          - name: web
            prefixes: [203.0.113.0/24]
            limits:
              udp: {pps: 1k}
              icmp: {bps: 64kbit}
            mitigation: {ban_ttl: 1h, ladder: [ban]}
            syn_auth: off
        """
        },
    )
    policy = load_policy_or_raise("policy.yaml")
    web = policy.group("web")
    limits = policy.group_limits(web)
    assert (limits.udp.pps, limits.udp.bps, limits.udp.burst) == (1000, 100_000_000, 2000)
    assert (limits.icmp.pps, limits.icmp.bps, limits.icmp.burst) == (0, 64_000, 0), "pps stays unlimited"
    assert limits.tcp_syn == policy.limits.tcp_syn
    mitigation = policy.group_mitigation(web)
    assert (mitigation.ban_ttl, mitigation.ban_ttl_max, mitigation.ladder) == (3600.0, 7200.0, ("ban",))
    assert web.syn_auth == "off"
    with pytest.raises(KeyError):
        policy.group("mail")


def test_includes_join_lists_and_merge_mappings(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": """
            include: "conf.d/*.yaml"
            interfaces: [eth0]
            allow: {prefixes: [192.0.2.0/28]}
            limits: {udp: {pps: 10k}}
            protect:
              - {name: web, prefixes: [203.0.113.0/25]}
            """,
            "conf.d/10-more.yaml": """
            allow: {prefixes: [{prefix: "2001:db8::/48", reason: NOC}]}
            limits: {icmp: {pps: 50}}
            interfaces: [{name: eth1, mode: generic}]
            include: [nested/*.yaml]
            """,
            "conf.d/nested/x.yaml": "protect:\n  - {name: dns, prefixes: [203.0.113.128/25]}\n",
            "conf.d/20-mail.yaml": "protect:\n  - {name: mail, prefixes: [198.51.100.0/24]}\n",
            "conf.d/README": "not yaml, not matched",
        },
    )
    result = load_policy("policy.yaml")
    assert result.errors == []
    policy = result.policy
    assert policy is not None
    # Depth first, sorted: policy.yaml, 10-more.yaml, its nested include, then 20-mail.yaml.
    assert [g.name for g in policy.protect] == ["web", "dns", "mail"]
    assert [i.name for i in policy.interfaces] == ["eth0", "eth1"]
    assert [str(e) for e in policy.allow.prefixes] == ["192.0.2.0/28", "2001:db8::/48"]
    assert policy.allow.prefixes[1].reason == "NOC"
    assert policy.limits.udp.pps == 10_000 and policy.limits.icmp.pps == 50
    assert policy.include == ("conf.d/*.yaml", "nested/*.yaml")
    assert {p.name for p in result.files} == {"policy.yaml", "10-more.yaml", "x.yaml", "20-mail.yaml"}
    assert all(p.is_absolute() for p in result.files)
    assert result.include_globs == [str(here / "conf.d/*.yaml"), str(here / "conf.d/nested/*.yaml")]


def test_a_glob_that_matches_nothing_is_fine_and_an_empty_include_warns(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": "include: [conf.d/*.yaml, empty.yaml]\ninterfaces: [eth0]\n",
            "empty.yaml": "# placeholder\n",
        },
    )
    result = load_policy("policy.yaml")
    assert result.policy is not None
    assert [str(w) for w in result.warnings] == [
        "empty.yaml:1:1: warning: the file is empty; nothing to include"
    ]


def test_prefix_files_keep_reasons_and_locations(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": "interfaces: [eth0]\ndeny:\n  prefixes: [192.0.2.66/32]\n"
            "  files: [lists/deny.txt]\n",
            "lists/deny.txt": """
            # feed of the day
            198.51.100.0/24   scanners
              198.51.100.0/24 # duplicate, commented
            2001:db8:bad::/48#inline
            203.0.113.7
            """,
        },
    )
    result = load_policy("policy.yaml")
    assert result.errors == [], [str(e) for e in result.errors]
    deny = result.policy.deny if result.policy else None
    assert deny is not None
    assert [(str(e), e.reason, e.source, e.column) for e in deny.prefixes] == [
        ("192.0.2.66/32", None, "policy.yaml:3", 14),
        ("198.51.100.0/24", "scanners", "lists/deny.txt:2", 1),
        ("198.51.100.0/24", "duplicate, commented", "lists/deny.txt:3", 3),
        ("2001:db8:bad::/48", "inline", "lists/deny.txt:4", 1),
        ("203.0.113.7/32", None, "lists/deny.txt:5", 1),
    ]
    assert deny.files == (here / "lists/deny.txt",)
    assert isinstance(deny.prefixes[3].network, ipaddress.IPv6Network)
    assert here / "lists/deny.txt" in result.files


def test_overlap_warnings_name_both_places(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": """
        interfaces: [eth0]
        allow:
          prefixes: [192.0.2.0/24]
        deny:
          prefixes: [192.0.2.128/25, 10.0.0.0/8]
        infrastructure:
          prefixes: [198.51.100.0/24]
        protect:
          - name: all
            prefixes: [203.0.113.0/24, 10.1.0.0/16]
          - name: web
            prefixes: [203.0.113.0/26, 198.51.100.0/28]
          - name: dup
            prefixes: [172.16.0.0/12, 172.16.0.0/12]
        """
        },
    )
    result = load_policy("policy.yaml")
    assert result.errors == []
    assert [str(w) for w in result.warnings] == [
        ("policy.yaml:5:14: deny.prefixes[0]: warning: deny 192.0.2.128/25 overlaps allow 192.0.2.0/24 "
        "(policy.yaml:3); allow wins, so this entry has no effect"),
        ("policy.yaml:10:32: protect[0].prefixes[1]: warning: protected 10.1.0.0/16 (group 'all') is covered "
        "by deny 10.0.0.0/8 (policy.yaml:5): its hosts cannot send"),
        ("policy.yaml:12:16: protect[1].prefixes[0]: warning: 203.0.113.0/26 of group 'web' lies inside "
        "203.0.113.0/24 of group 'all' (policy.yaml:10); the longest prefix wins, "
        "so group 'web' applies to it"),
        ("policy.yaml:12:32: protect[1].prefixes[1]: warning: protected 198.51.100.0/28 (group 'web') "
        "is covered by infrastructure 198.51.100.0/24 (policy.yaml:7): "
        "its hosts are never banned automatically"),
        ("policy.yaml:14:31: protect[2].prefixes[1]: warning: 172.16.0.0/12 is listed twice in group 'dup' "
        "(also at policy.yaml:14)"),
    ]


def test_many_overlaps_are_summarised(here: Path) -> None:
    allow = "".join(f"10.0.{i}.0/24\n" for i in range(30))
    write(
        here,
        {
            "policy.yaml": "interfaces: [eth0]\nallow: {files: [a.txt]}\ndeny: {prefixes: [10.0.0.0/16]}\n",
            "a.txt": allow,
        },
    )
    result = load_policy("policy.yaml")
    assert result.policy is not None
    assert len(result.warnings) == 21
    summaries = [str(w) for w in result.warnings if "more like this" in str(w)]
    assert summaries == [
        "a.txt:1:1: allow.files[0]: warning: 10 more like this (allow inside deny) not shown"
    ]


def test_a_warning_does_not_make_a_policy_invalid_but_an_error_does(here: Path) -> None:
    write(here, {"policy.yaml": "interfaces: [eth0]\nprotect:\n  - name: empty\n"})
    result = load_policy("policy.yaml")
    assert result.policy is not None
    assert [str(w) for w in result.warnings] == [
        "policy.yaml:3:5: protect[0]: warning: group 'empty' protects no prefixes"
    ]
    write(here, {"policy.yaml": "interfaces: [eth0]\nmode: enforcing\ndetection: {tick: 0}\n"})
    with pytest.raises(PolicyError) as caught:
        load_policy_or_raise("policy.yaml")
    assert [i.path for i in caught.value.issues] == ["mode", "detection.tick"]
    assert "2 errors in policy" in str(caught.value)


def test_issue_format() -> None:
    error = PolicyIssue("policy.yaml", 42, 9, "protect[3].limits.udp.pps", "too fast")
    assert str(error) == "policy.yaml:42:9: protect[3].limits.udp.pps: too fast"
    warning = PolicyIssue("policy.yaml", 1, 1, "", "empty", "warning")
    assert str(warning) == "policy.yaml:1:1: warning: empty"


def test_a_policy_without_interfaces_is_valid_but_cannot_run(here: Path) -> None:
    write(here, {"policy.yaml": "protect: [{name: web, prefixes: [203.0.113.0/24]}]\n"})
    policy = load_policy_or_raise("policy.yaml")
    assert policy.run_blockers() and "no interfaces" in policy.run_blockers()[0]


def test_restart_fields_and_messages() -> None:
    old = Policy.model_validate({"interfaces": ["eth0"]})
    new = Policy.model_validate(
        {
            "interfaces": [{"name": "eth0", "mode": "native"}],
            "capacity": {"sources": 2_097_152},
            "limits": {"udp": {"pps": 1}},
        }
    )
    assert old.restart_fields()["capacity.sources"] == 1_048_576
    assert restart_required(old, old) == []
    assert restart_required(old, new) == [
        "restart required: interfaces changed from eth0 (auto) to eth0 (native)",
        "restart required: capacity.sources changed from 1048576 to 2097152",
    ]


def test_summary_counts(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": """
        interfaces: [eth0]
        allow: {prefixes: [192.0.2.0/28, 192.0.2.16/28, 192.0.2.32/28]}
        deny: {prefixes: [198.51.100.0/24]}
        protect:
          - {name: a, prefixes: [203.0.113.0/25], limits: {udp: {pps: 1k}}}
          - {name: b, prefixes: [203.0.113.128/25, "2001:db8::/32"]}
        """
        },
    )
    summary = load_policy_or_raise("policy.yaml").summary()
    assert (summary.allow, summary.deny, summary.protected, summary.groups) == (3, 1, 3, 2)
    assert summary.limits == len(CLASSES) and summary.group_overrides == 1
    assert str(summary) == (
        "3 allow, 1 deny, 0 infrastructure, 3 protected prefixes in 2 groups, 6 default limits"
    )


def test_models_are_frozen(here: Path) -> None:
    write(here, {"policy.yaml": "interfaces: [eth0]\n"})
    policy = load_policy_or_raise("policy.yaml")
    with pytest.raises(ValueError, match="frozen"):
        policy.mode = "monitor"  # type: ignore[misc]


def test_empty_keys_mean_defaults_and_merge_with_other_files(here: Path) -> None:
    write(
        here,
        {
            "policy.yaml": """
                include: [conf.d/*.yaml]
                interfaces: [eth0]
                allow:
                #  prefixes: [192.0.2.0/24]
                protect:
                limits:
                  udp:
                control: {group: null}
                """,
            "conf.d/a.yaml": "allow: {prefixes: [198.51.100.0/24]}\n"
            "protect: [{name: web, prefixes: [10.0.0.0/8]}]\n",
        },
    )
    result = load_policy("policy.yaml")
    assert result.errors == [], [str(e) for e in result.errors]
    policy = result.policy
    assert policy is not None
    assert [str(e) for e in policy.allow.prefixes] == ["198.51.100.0/24"]
    assert [g.name for g in policy.protect] == ["web"]
    assert policy.limits.udp == Limits().udp, "an empty key is the built-in default"
    assert policy.control.group is None  # null is a value here: root only


def test_a_wide_allow_entry_warns_that_forged_floods_pass_it(here: Path) -> None:
    write(here, {"policy.yaml": """
        interfaces: [eth0]
        allow:
          prefixes: [10.0.0.0/8, 192.0.2.0/24, "2001:db8::/32", "2001:db8:1::/48"]
        """})
    result = load_policy("policy.yaml")
    assert result.ok
    wide = [str(w) for w in result.warnings if "past every limit" in w.message]
    assert len(wide) == 2
    assert wide[0].startswith("policy.yaml:3:14: allow.prefixes[0]: warning: allow 10.0.0.0/8 passes 16,777,216")
    assert "2001:db8::/32 passes 4,294,967,296 /64s" in wide[1] and "use infrastructure instead" in wide[1]
    # allow.monitor only counts: no hole, no warning.
    write(here, {"policy.yaml": "interfaces: [eth0]\nallow: {monitor: true, prefixes: [10.0.0.0/8]}\n"})
    assert not [w for w in load_policy("policy.yaml").warnings if "past every limit" in w.message]
