"""Upstream escalation against a real, independent peer: BIRD 2 in its own namespace (agent/lab/upstream.py).

One set-up for the module: the two namespaces, BIRD (AS 64500) and `floodguard
speaker` (gobgpd, AS 64501) with an eBGP session between them. Each test drives
the agent's upstream manager (agent/upstream/manager.py) with attack records
as the controller renders them, and decides from BIRD's tables (``birdc show
route table … all``) and session state, waiting with generous deadlines.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.lab.bird import Bird, nets
from agent.lab.upstream import UpstreamLab, policy_text
from agent.policy import load_policy
from agent.policy.model import Policy
from agent.upstream.announce import Announcement
from agent.upstream.gobgp import GoBgp, Route
from agent.upstream.manager import Manager

TTL = 6  # seconds: the speaker's sweep must withdraw within a few more
FLOW4 = "flow4 { dst 203.0.113.7/32; proto 17; sport 53; }"
FLOW6 = "flow6 { dst 2001:db8:5::9/128; next header 6; tcp flags 0x2/0x2 && 0x0/0x10; }"


def record(aid: str, host: str, cls: str = "udp", flood: str = "udp_reflection", group: str = "web",
           active: bool = True, escalated: bool = True, prefixes: list[str] | None = None) -> dict[str, object]:
    """An attack record with the keys the controller renders (agent/control/record.py)."""
    return {
        "id": aid, "active": active, "group": group, "class": cls, "flood": flood, "vector": flood,
        "target": {"group": group, "host": host or None, "prefixes": prefixes or []},
        "escalated": escalated, "escalations": [{"scope": f"group:{group}"}] if escalated else [],
        "mitigations": [], "top_source_ports": [{"port": 53, "pps": 90000, "share": 0.97}],
    }


REFLECTION = record("a1", "203.0.113.7")
SYN6 = record("a2", "2001:db8:5::9", cls="tcp_syn", flood="syn_flood")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamLab]:
    work = tmp_path_factory.mktemp("upstream")
    text = policy_text(work, upstream=f"  ttl: {TTL}s\n  hold_down: 0s\n  max_announcements: 6\n")
    with UpstreamLab(work, text) as built:
        yield built


@pytest.fixture
def policy(lab: UpstreamLab) -> Policy:
    result = load_policy(lab.policy_path)
    assert result.policy is not None, result.errors
    return result.policy


def speaker(policy: Policy) -> GoBgp:
    up = policy.upstream
    assert up is not None
    return GoBgp(str(up.speaker.api), up.tag_community, up.expiry_function)


@pytest.fixture
def fresh(lab: UpstreamLab, policy: Policy) -> Iterator[Path]:
    """An empty speaker table and state directory before and after each test."""
    state = lab.workdir / f"state-{time.monotonic_ns()}"
    client = speaker(policy)

    def clear() -> None:
        for h in client.held():
            client.delete(h)
        assert lab.bird is not None
        lab.bird.wait("empty tables", lambda: all(not nets(lab.bird, t) for t in  # type: ignore[arg-type]
                                                  ("flowtab4", "flowtab6", "master4", "master6")))

    clear()
    yield state
    clear()
    client.close()


def bird(lab: UpstreamLab) -> Bird:
    assert lab.bird is not None
    return lab.bird


def ticking(m: Manager, records: list[dict[str, object]]) -> bool:
    """Tick as the agent does while a test waits (refreshes keep routes from expiring); always True."""
    m.tick(records)
    return True


def manager(policy: Policy, state: Path) -> Manager:
    return Manager(policy, speaker(policy), state_dir=state)


def test_flowspec_and_rtbh_reach_bird_and_are_withdrawn(lab: UpstreamLab, policy: Policy, fresh: Path) -> None:
    m = manager(policy, fresh)
    with capture_logs() as logs:
        m.tick([REFLECTION, SYN6])
    b = bird(lab)
    b.wait("Flowspec and RTBH, v4 and v6", lambda: nets(b, "flowtab4") == {FLOW4} and nets(b, "flowtab6") == {FLOW6}
           and nets(b, "master4") == {"203.0.113.7/32"} and nets(b, "master6") == {"2001:db8:5::9/128"})
    (flow,) = b.routes("flowtab4")
    assert flow.attribute("BGP.ext_community") == "(generic, 0x80060000, 0x0)"  # traffic-rate 0: discard
    assert "(64501, 1001, 0)" in (flow.attribute("BGP.large_community") or "")  # floodguard's tag
    (rtbh,) = b.routes("master4")
    assert rtbh.line.split()[1] == "blackhole" and rtbh.attribute("BGP.community") == "(65535,666)"
    (rtbh6,) = b.routes("master6")
    assert rtbh6.line.split()[1] == "blackhole" and rtbh6.attribute("BGP.community") == "(65535,666)"
    announced = [e for e in logs if e["event"] == "upstream_announced"]
    assert sorted(e["kind"] for e in announced) == ["flowspec", "flowspec", "rtbh", "rtbh"]
    assert {a["attack_id"] for a in [{"attack_id": i} for e in announced for i in e["attack_ids"]]} == {"a1", "a2"}
    assert [a["kind"] for a in m.for_attack("a1")["announcements"]] == ["flowspec", "rtbh"]  # type: ignore[index]

    # The attacks end; hold_down is 0 s: withdrawn at the next tick.
    with capture_logs() as logs:
        m.tick([{**REFLECTION, "active": False}])
    b.wait("all withdrawn", lambda: not any(nets(b, t) for t in ("flowtab4", "flowtab6", "master4", "master6")))
    assert sum(e["event"] == "upstream_withdrawn" for e in logs) == 4, (logs, m.book, lab.speaker_log()[-3000:])
    assert m.book == {}


def test_guardrails_refuse_and_nothing_reaches_bird(lab: UpstreamLab, policy: Policy, fresh: Path) -> None:
    m = manager(policy, fresh)
    records = [
        record("allow", "203.0.113.200"),  # allowlisted destination
        record("infra", "198.51.100.53", group="dns"),  # infrastructure destination
        record("peer", "192.0.2.1", group="dns"),  # the BGP peer itself
        record("carpet", "", prefixes=["198.51.100.0/24"], group="dns", cls="udp", flood="udp_flood"),  # /24 ok
        record("dns", "198.51.100.9", group="dns"),  # Flowspec yes, RTBH not allowed for dns
        record("wide", "", prefixes=["10.0.0.0/8"], group="dns"),  # shorter than /24
    ]
    with capture_logs() as logs:
        m.tick(records)
    b = bird(lab)
    b.wait("the allowed rule", lambda: nets(b, "flowtab4") == {"flow4 { dst 198.51.100.9/32; proto 17; sport 53; }"})
    assert nets(b, "master4") == set()
    refused = {(e["attack_id"], e["kind"], e["reason"]) for e in logs if e["event"] == "upstream_refused"}
    assert {("allow", "flowspec", "allowlisted"), ("allow", "rtbh", "allowlisted"),
            ("infra", "flowspec", "infrastructure"), ("peer", "flowspec", "infrastructure"),
            ("dns", "rtbh", "rtbh_not_allowed"), ("wide", "flowspec", "too_short"),
            ("carpet", "flowspec", "infrastructure")} <= refused  # the /24 holds 198.51.100.53
    assert {r["reason"] for r in m.for_attack("wide")["refused"]} == {"too_short", "rtbh_not_allowed"}  # type: ignore[attr-defined]

    # The cap: 6 at once. One is in force; five more hosts of web want 10 (Flowspec + RTBH each).
    more = [record(f"h{i}", f"203.0.113.{10 + i}") for i in range(5)]
    with capture_logs() as logs:
        m.tick(records + more)
    assert len(m.book) == 6  # one of before, five of after
    assert any(e["event"] == "upstream_refused" and e["reason"] == "cap" for e in logs)
    b.wait("exactly six routes", lambda: sum(len(nets(b, t)) for t in ("flowtab4", "master4")) == 6)


def test_sigkill_and_restart_leave_exactly_the_active_announcements(
        lab: UpstreamLab, policy: Policy, fresh: Path) -> None:
    first = manager(policy, fresh)
    first.tick([REFLECTION, record("gone", "203.0.113.8")])
    b = bird(lab)
    b.wait("two attacks' routes", lambda: nets(b, "master4") == {"203.0.113.7/32", "203.0.113.8/32"})
    client = speaker(policy)
    del first  # SIGKILL: nothing of the agent runs any more; the speaker keeps what it holds
    # The restarted agent: attack "gone" ended while it was dead, a1 is re-detected.
    second = manager(policy, fresh)
    with capture_logs() as logs:
        second.tick([REFLECTION])
    b.wait("a1's routes only", lambda: nets(b, "master4") == {"203.0.113.7/32"} and nets(b, "flowtab4") == {FLOW4})
    assert sorted(second.book) == ["flowspec 203.0.113.7/32 proto 17 sport 53", "rtbh 203.0.113.7/32"]
    assert second.book["rtbh 203.0.113.7/32"].attacks == ["a1"]  # from the state file
    assert any(e["event"] == "upstream_adopted" for e in logs)

    # gobgpd lost its table (restarted): the next resync announces again what is active.
    for h in client.held():
        client.delete(h)
    b.wait("the table emptied", lambda: not nets(b, "master4"))
    second._next_resync = 0.0  # the resync is due every RESYNC_S; the test does not wait for it
    second.tick([REFLECTION])
    second.tick([REFLECTION])
    b.wait("re-announced", lambda: nets(b, "master4") == {"203.0.113.7/32"} and nets(b, "flowtab4") == {FLOW4})
    client.close()
    second.tick([])


def test_a_stale_route_is_withdrawn_at_start(lab: UpstreamLab, policy: Policy, fresh: Path) -> None:
    client = speaker(policy)
    stale = Announcement("rtbh", ipaddress.ip_network("203.0.113.99/32"))
    client.add(Route(stale, int(time.time()) + 3600, ((65535, 666),)))  # not in any state file
    b = bird(lab)
    b.wait("the stale route", lambda: nets(b, "master4") == {"203.0.113.99/32"})
    m = manager(policy, fresh)
    m.tick([REFLECTION])  # adopted, claimed by no attack, hold_down 0: withdrawn
    b.wait("only a1", lambda: nets(b, "master4") == {"203.0.113.7/32"})
    client.close()


def test_an_agent_dead_past_the_ttl_leaves_nothing(lab: UpstreamLab, policy: Policy, fresh: Path) -> None:
    m = manager(policy, fresh)
    m.tick([REFLECTION, SYN6])
    b = bird(lab)
    b.wait("announced", lambda: len(nets(b, "master4")) == 1 and len(nets(b, "flowtab6")) == 1)
    del m  # dead: nobody refreshes; the speaker's sweep withdraws each route at its expiry
    b.wait("withdrawn by the speaker", lambda: not any(nets(b, t) for t in ("flowtab4", "flowtab6", "master4",
                                                                              "master6")), timeout=TTL + 20)
    assert "upstream_expired" in lab.speaker_log()


def test_the_session_dropping_and_returning_reannounces(lab: UpstreamLab, policy: Policy, fresh: Path) -> None:
    m = manager(policy, fresh)
    m.tick([REFLECTION])
    b = bird(lab)
    b.wait("announced", lambda: nets(b, "flowtab4") == {FLOW4})
    b.birdc("disable", "floodguard")
    b.wait("the session down and the routes gone", lambda: b.session() != "Established" and not nets(b, "flowtab4"))
    with capture_logs() as logs:
        deadline = time.monotonic() + 20
        while not any(e["event"] == "upstream_session_down" for e in logs) and time.monotonic() < deadline:
            m.tick([REFLECTION])
            time.sleep(0.1)
    assert any(e["event"] == "upstream_session_down" and e["peer"] == "transit" for e in logs)
    b.birdc("enable", "floodguard")
    b.wait("the session back", lambda: ticking(m, [REFLECTION]) and b.session() == "Established")
    b.wait("re-announced", lambda: ticking(m, [REFLECTION]) and nets(b, "flowtab4") == {FLOW4}
           and nets(b, "master4") == {"203.0.113.7/32"})
    assert m.stats().sessions == {"transit": True}


def test_the_speaker_runs_without_listener(lab: UpstreamLab) -> None:
    """Connect out only: gobgpd holds no TCP listener in the gateway's namespace (port 179 stays free)."""
    assert lab.topology is not None
    out = lab.topology.run("gw", ["ss", "-Hltn"]).stdout.decode()
    assert out.strip() == "", out
    assert os.path.exists(lab.api)
