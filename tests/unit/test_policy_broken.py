"""Broken policies: each case asserts the exact location and the message an operator reads.

Table-driven: a case is a set of files (``policy.yaml`` is loaded) and the
errors expected, each the start of ``str(issue)`` — ``file:line:col: path:
message``. The number of errors must match too, so a case also proves that one
mistake does not cascade into a pile of unrelated errors.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.policy import load_policy


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]
    errors: list[str]
    warnings: list[str] = field(default_factory=list)


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


BASE = "interfaces: [eth0]\n"

CASES = [
    # --- unknown keys, with and without a suggestion ----------------------------------------------
    Case("unknown top-level key", {"policy.yaml": y("""
        interfaces: [eth0]
        protcet: []
        """)}, ["policy.yaml:2:1: protcet: unknown key; did you mean 'protect'?"]),
    Case("unknown key in a group", {"policy.yaml": y("""
        interfaces: [eth0]
        protect:
          - name: web
            prefixes: [203.0.113.0/25]
            treshold: {udp: {pps: 1k}}
        """)}, ["policy.yaml:5:5: protect[0].treshold: unknown key; did you mean 'thresholds'?"]),
    Case("unknown key in a limit", {"policy.yaml": BASE + "limits:\n  udp: {pp: 5k}\n"},
         ["policy.yaml:3:9: limits.udp.pp: unknown key; did you mean 'pps'?"]),
    Case("unknown key without a close match", {"policy.yaml": BASE + "limits:\n  quic: {pps: 5k}\n"},
         [("policy.yaml:3:3: limits.quic: unknown key; expected one of: tcp_syn, tcp_other, udp, icmp, "
          "fragment, other, ipv6_prefix")]),
    Case("unknown key in a prefix entry", {"policy.yaml": BASE + "allow:\n  prefixes:\n"
                                           "    - {prefix: 192.0.2.0/24, reson: NOC}\n"},
         ["policy.yaml:4:30: allow.prefixes[0].reson: unknown key; did you mean 'reason'?"]),
    # --- wrong types ------------------------------------------------------------------------------
    Case("interfaces as a mapping", {"policy.yaml": "interfaces: {name: eth0}\n"},
         ["policy.yaml:1:13: interfaces: expected a list, got a mapping"]),
    Case("allow as a list", {"policy.yaml": BASE + "allow: [192.0.2.0/24]\n"},
         ["policy.yaml:2:8: allow: expected a mapping (key: value lines), got a list"]),
    Case("mode as a number", {"policy.yaml": BASE + "mode: 5\n"},
         ["policy.yaml:2:7: mode: expected one of: enforce, monitor; got the number 5"]),
    Case("monitor not a boolean", {"policy.yaml": BASE + "deny:\n  monitor: sometimes\n"},
         ["policy.yaml:3:12: deny.monitor: expected true or false, got 'sometimes'"]),
    Case("prefixes not a list", {"policy.yaml": BASE + "deny:\n  prefixes: 192.0.2.0/24\n"},
         ["policy.yaml:3:13: deny.prefixes: expected a list of prefixes, e.g. [192.0.2.0/24]"]),
    Case("a prefix written as a number", {"policy.yaml": BASE + "deny:\n  prefixes: [10]\n"},
         [("policy.yaml:3:14: deny.prefixes[0]: expected a prefix written as text, e.g. 192.0.2.0/24, "
          "got the number 10")]),
    Case("a group that is a string", {"policy.yaml": BASE + "protect: [web]\n"},
         ["policy.yaml:2:11: protect[0]: expected a mapping (key: value lines), got 'web'"]),
    Case("a group without a name", {"policy.yaml": BASE + "protect:\n  - prefixes: [203.0.113.0/24]\n"},
         ["policy.yaml:3:5: protect[0]: required key 'name' is missing"]),
    Case("a non-text key", {"policy.yaml": BASE + "limits:\n  1: {pps: 5}\n"},
         ["policy.yaml:3:3: limits: key 1 is read by YAML as the number 1, not as text; put it in quotes"]),
    # --- units and ranges -------------------------------------------------------------------------
    Case("packet rate with a bad suffix", {"policy.yaml": BASE + "limits:\n  udp: {pps: 5x}\n"},
         ["policy.yaml:3:14: limits.udp.pps: '5x' is not a packet rate; write e.g. 200, 50k, 1.5M or 2G"]),
    Case("packet rate above the maximum", {"policy.yaml": BASE + "limits:\n  udp: {pps: 2G}\n"},
         ["policy.yaml:3:14: limits.udp.pps: 2G is above the maximum of 1G packets/s"]),
    Case("packet rate of zero", {"policy.yaml": BASE + "mitigation:\n  uplink: {pps: 0}\n"},
         ["policy.yaml:3:17: mitigation.uplink.pps: 0 packets/s is below the minimum of 1 packets/s"]),
    Case("a fractional packet rate", {"policy.yaml": BASE + "limits:\n  udp: {pps: 1.2345k}\n"},
         ["policy.yaml:3:14: limits.udp.pps: '1.2345k' is not a packet rate"]),
    Case("bit rate in bytes", {"policy.yaml": BASE + "limits:\n  udp: {bps: 100MB}\n"},
         [("policy.yaml:3:14: limits.udp.bps: '100MB' looks like bytes; rates here are in bits per second: "
          "100 MB/s is 800Mbit")]),
    Case("bit rate without a unit", {"policy.yaml": BASE + "limits:\n  udp: {bps: 100M}\n"},
         ["policy.yaml:3:14: limits.udp.bps: '100M' has no unit; write 100Mbit for bits per second"]),
    Case("bit rate above 1 Tbit", {"policy.yaml": BASE + "protect:\n  - name: web\n"
                                   "    prefixes: [203.0.113.0/24]\n    thresholds: {udp: {bps: 2Tbit}}\n"},
         ["policy.yaml:5:29: protect[0].thresholds.udp.bps: 2Tbit is above the maximum of 1Tbit"]),
    Case("bad duration", {"policy.yaml": BASE + "mitigation:\n  ban_ttl: 10 minutes\n"},
         ["policy.yaml:3:12: mitigation.ban_ttl: '10 minutes' is not a duration; write e.g. 250ms, 30s"]),
    Case("tick below 100ms", {"policy.yaml": BASE + "detection:\n  tick: 50ms\n"},
         ["policy.yaml:3:9: detection.tick: 50ms is below the minimum of 100ms"]),
    Case("tick above 10s", {"policy.yaml": BASE + "detection:\n  tick: 1m\n"},
         ["policy.yaml:3:9: detection.tick: 1m is above the maximum of 10s"]),
    Case("ipv6_prefix above 128", {"policy.yaml": BASE + "limits:\n  ipv6_prefix: 129\n"},
         ["policy.yaml:3:16: limits.ipv6_prefix: 129 is above the maximum of 128"]),
    Case("ipv6_prefix of zero", {"policy.yaml": BASE + "limits:\n  ipv6_prefix: 0\n"},
         ["policy.yaml:3:16: limits.ipv6_prefix: 0 is below the minimum of 1"]),
    Case("negative burst", {"policy.yaml": BASE + "limits:\n  tcp_syn: {burst: -1}\n"},
         ["policy.yaml:3:20: limits.tcp_syn.burst: -1 is below the minimum of 0"]),
    Case("ratio above one", {"policy.yaml": BASE + "detection:\n  release_ratio: 1.5\n"},
         ["policy.yaml:3:18: detection.release_ratio: 1.5 is above the maximum of 1"]),
    Case("negative sample_every", {"policy.yaml": BASE + "detection:\n  sample_every: -1\n"},
         ["policy.yaml:3:17: detection.sample_every: -1 is below the minimum of 0"]),
    # --- choices and names ------------------------------------------------------------------------
    Case("bad interface mode", {"policy.yaml": "interfaces:\n  - name: eth0\n    mode: nativ\n"},
         [("policy.yaml:3:11: interfaces[0].mode: 'nativ' is not one of: native, generic, auto; "
          "did you mean 'native'?")]),
    Case("bad interface name", {"policy.yaml": "interfaces:\n  - name: eth0/1\n"},
         ["policy.yaml:2:11: interfaces[0].name: 'eth0/1' is not a valid interface name"]),
    Case("interface named twice", {"policy.yaml": "interfaces:\n  - eth0\n  - {name: eth0, mode: native}\n"},
         ["policy.yaml:3:12: interfaces[1].name: interface 'eth0' is already defined at policy.yaml:2:5"]),
    Case("bad group name", {"policy.yaml": BASE + "protect:\n  - name: Web Farm\n"
                            "    prefixes: [203.0.113.0/24]\n"},
         ["policy.yaml:3:11: protect[0].name: 'Web Farm' is not a valid group name"]),
    Case("reserved group name", {"policy.yaml": BASE + "protect:\n  - name: default\n"
                                 "    prefixes: [203.0.113.0/24]\n"},
         ["policy.yaml:3:11: protect[0].name: 'default' is reserved"]),
    Case("syn_auth true", {"policy.yaml": BASE + "protect:\n  - name: web\n"
                           "    prefixes: [203.0.113.0/24]\n    syn_auth: on\n"},
         ["policy.yaml:5:15: protect[0].syn_auth: write on_attack or always"]),
    Case("ladder out of order", {"policy.yaml": BASE + "mitigation:\n  ladder: [ban, tighten]\n"},
         [("policy.yaml:3:11: mitigation.ladder: steps must keep the order tighten, rule, ban; "
          "got [ban, tighten]")]),
    Case("unknown ladder step", {"policy.yaml": BASE + "mitigation:\n  ladder: [tighten, block]\n"},
         ["policy.yaml:3:21: mitigation.ladder[1]: 'block' is not one of: tighten, rule, ban"]),
    Case("metrics listen without a port", {"policy.yaml": BASE + "metrics: {listen: localhost}\n"},
         ["policy.yaml:2:19: metrics.listen: 'localhost' is not host:port"]),
    Case("relative control socket", {"policy.yaml": BASE + "control: {socket: run/fg.sock}\n"},
         ["policy.yaml:2:19: control.socket: run/fg.sock is a relative path"]),
    # --- prefixes ---------------------------------------------------------------------------------
    Case("host bits set inline", {"policy.yaml": BASE + "allow:\n  prefixes:\n    - 192.0.2.0/24\n"
                                  "    - 10.1.2.3/24\n"},
         ["policy.yaml:5:7: allow.prefixes[1]: 10.1.2.3/24 has host bits set; did you mean 10.1.2.0/24?"]),
    Case("invalid IPv4 octet", {"policy.yaml": BASE + "deny:\n  prefixes: [10.0.0.300/24]\n"},
         [("policy.yaml:3:14: deny.prefixes[0]: '10.0.0.300/24' is not a valid IPv4 prefix: "
          "Octet 300 (> 255) not permitted in '10.0.0.300'")]),
    Case("IPv6 host bits set", {"policy.yaml": BASE + "protect:\n  - name: v6\n"
                                '    prefixes: ["2001:db8::1/32"]\n'},
         [("policy.yaml:4:16: protect[0].prefixes[0]: 2001:db8::1/32 has host bits set; "
          "did you mean 2001:db8::/32?")]),
    Case("prefix entry without prefix", {"policy.yaml": BASE + "deny:\n  prefixes:\n    - {reason: spam}\n"},
         ["policy.yaml:4:7: deny.prefixes[0]: required key 'prefix' is missing"]),
    Case("bad prefix in a prefix file", {
        "policy.yaml": BASE + "deny:\n  files: [deny.txt]\n",
        "deny.txt": "# feed\n192.0.2.0/24 spam\n\n1.2.3.999 scanner\n",
    }, ["deny.txt:4:1: deny.files[0]: '1.2.3.999' is not a valid IPv4 prefix"]),
    Case("host bits in an indented prefix-file line", {
        "policy.yaml": BASE + "protect:\n  - name: web\n    files: [web.txt]\n",
        "web.txt": "203.0.113.0/25\n  203.0.113.130/25  # second half\n",
    }, [("web.txt:2:3: protect[0].files[0]: 203.0.113.130/25 has host bits set; "
        "did you mean 203.0.113.128/25?")]),
    Case("missing prefix file", {"policy.yaml": BASE + "deny:\n  files: [nothere.txt]\n"},
         ["policy.yaml:3:11: deny.files[0]: nothere.txt: no such file"]),
    Case("prefix in two groups", {"policy.yaml": BASE + y("""
        protect:
          - name: web
            prefixes: [203.0.113.0/25]
          - name: mail
            prefixes: [203.0.113.0/25]
        """)}, [("policy.yaml:6:16: protect[1].prefixes[0]: 203.0.113.0/25 is already protected by "
                "group 'web' at policy.yaml:4; a destination belongs to one group")]),
    # --- YAML itself ------------------------------------------------------------------------------
    Case("duplicate key", {"policy.yaml": BASE + "limits:\n  udp: {pps: 1k}\n  udp: {pps: 2k}\n"},
         ["policy.yaml:4:3: limits.udp: duplicate key; 'udp' is already set at line 3 of this mapping"]),
    Case("YAML syntax error", {"policy.yaml": BASE + "limits:\n  udp: {pps: 1k\n"},
         [("policy.yaml:4:1: YAML syntax error: did not find expected ',' or '}' "
          "(while parsing a flow mapping)")]),
    Case("tab indentation", {"policy.yaml": BASE + "limits:\n\tudp: {pps: 1k}\n"},
         [("policy.yaml:3:1: YAML syntax error: found character that cannot start any token "
          "(while scanning for the next token); YAML indents with spaces, never tabs")]),
    Case("empty file", {"policy.yaml": "# nothing yet\n"},
         ["policy.yaml:1:1: the file is empty; a policy needs at least `interfaces:`"]),
    Case("root is a list", {"policy.yaml": "- interfaces: [eth0]\n"},
         [("policy.yaml:1:1: the top level must be a mapping of keys such as `interfaces:` and `protect:`, "
          "not a list")]),
    Case("not UTF-8", {"policy.yaml": b"interfaces: [eth0]\nmode: enforce\xff\n"},
         ["policy.yaml:2:14: not valid UTF-8 text"]),
    Case("missing policy file", {}, ["policy.yaml:1:1: no such file"]),
    Case("policy path is a directory", {"policy.yaml/x": ""},
         ["policy.yaml:1:1: is a directory, not a file"]),
    Case("prefix file is a directory", {"policy.yaml": BASE + "allow:\n  files: [lists]\n", "lists/a": ""},
         ["policy.yaml:3:11: allow.files[0]: lists is a directory, not a prefix file"]),
    # --- includes ---------------------------------------------------------------------------------
    Case("group defined in two files", {
        "policy.yaml": BASE + "include: [conf.d/*.yaml]\n"
        "protect:\n  - name: web\n    prefixes: [203.0.113.0/25]\n",
        "conf.d/a.yaml": "protect:\n  - name: web\n    prefixes: [203.0.113.128/25]\n",
    }, ["conf.d/a.yaml:2:11: protect[1].name: group 'web' is already defined at policy.yaml:4:11"]),
    Case("scalar set in two files", {
        "policy.yaml": BASE + "include: [conf.d/*.yaml]\ndetection:\n  tick: 1s\n",
        "conf.d/fast.yaml": "detection:\n  tick: 500ms\n",
    }, [("conf.d/fast.yaml:2:3: detection.tick: already set at policy.yaml:4:3; "
        "a value may be set in one file only")]),
    Case("include cycle", {
        "policy.yaml": BASE + "include: [a.yaml]\n",
        "a.yaml": "include: [policy.yaml]\n",
    }, ["a.yaml:1:11: include[0]: include cycle: policy.yaml → a.yaml → policy.yaml"]),
    Case("missing literal include", {"policy.yaml": BASE + "include: [extra.yaml]\n"},
         ["policy.yaml:2:11: include[0]: extra.yaml: no such file"]),
    Case("included file is a list", {
        "policy.yaml": BASE + "include: [conf.d/*.yaml]\n",
        "conf.d/x.yaml": "- 1\n- 2\n",
    }, ["conf.d/x.yaml:1:1: the top level must be a mapping"]),
    Case("error inside an included file", {
        "policy.yaml": BASE + "include: [conf.d/*.yaml]\n",
        "conf.d/limits.yaml": "# udp\nlimits:\n  udp: {pps: lots}\n",
    }, ["conf.d/limits.yaml:3:14: limits.udp.pps: 'lots' is not a packet rate"]),
    # --- rules across fields ----------------------------------------------------------------------
    Case("hold_down shorter than tick", {"policy.yaml": BASE + "detection:\n  tick: 2s\n  hold_down: 1s\n"},
         ["policy.yaml:4:14: detection.hold_down: 1s is shorter than one tick (2s)"]),
    Case("ban_ttl_max shorter than ban_ttl", {"policy.yaml": BASE + "mitigation:\n  ban_ttl: 2h\n"
                                              "  ban_ttl_max: 1h\n"},
         ["policy.yaml:4:16: mitigation.ban_ttl_max: 1h is shorter than ban_ttl (2h)"]),
    Case("more groups than capacity", {"policy.yaml": BASE + y("""
        capacity: {groups: 2}
        protect:
          - {name: a, prefixes: [10.0.0.0/24]}
          - {name: b, prefixes: [10.0.1.0/24]}
        """)}, [("policy.yaml:2:20: capacity.groups: 2 groups need capacity.groups of at least 3 "
                "(group 0 is the default); it is 2")]),
    Case("more deny prefixes than capacity", {
        "policy.yaml": BASE + "capacity: {prefixes: 16}\ndeny:\n  files: [d.txt]\n",
        "d.txt": "".join(f"10.0.{i}.0/24\n" for i in range(20)),
    }, [("policy.yaml:2:22: capacity.prefixes: 20 allow and deny prefixes do not fit in "
        "capacity.prefixes (16)")]),
]

def write(tmp: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_policy(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)
    result = load_policy("policy.yaml")
    got = [str(issue) for issue in result.errors]
    assert result.policy is None
    assert len(got) == len(case.errors), "\n".join(got)
    for expected, actual in zip(case.errors, got, strict=True):
        assert actual.startswith(expected), f"\nexpected: {expected}\nactual:   {actual}"
