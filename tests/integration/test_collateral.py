"""Protect without harming, on the real kernel: busy legitimate clients keep every packet.

A real web server (nginx) behind the lab's gateway, a real HTTP load (wrk, a
new connection per request), the real agent with the lab policy. Decided by
the kernel's counters for the clients' watch set and the agent's records,
never by how many requests this machine managed:

* one address at full speed (a CGNAT address, a proxy): not one of its
  packets is limited or dropped, and if it crosses a threshold it is
  recorded as a surge;
* a flash crowd of 200 real sources, each completing its handshakes: a
  surge record with its evidence, and no drop.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.contract import abi
from agent.lab.runagent import LabAgent
from agent.lab.topology import Lab, build_lab, run_prefix
from agent.lab.traffic import attach_upstream_pass
from agent.lab.web import ClientPool, HttpLoad, WebServer

CLIENTS = 1  # the lab policy's first watch set
LOAD_SECONDS = 4


@pytest.fixture(scope="module")
def web_lab() -> Iterator[Lab]:
    lab = build_lab(run_prefix("c"))
    up = attach_upstream_pass(lab)
    try:
        yield lab
    finally:
        up.detach()
        lab.topology.teardown()


@pytest.fixture(scope="module")
def agent(web_lab: Lab) -> Iterator[LabAgent]:
    # A SYN threshold any real HTTP load crosses, whatever this machine's speed: the test is about what
    # happens then (nothing), not about whether it happens.
    a = LabAgent(web_lab, overrides={"protect": [{
        "name": "servers", "prefixes": ["203.0.113.0/24", "2001:db8:5::/64"],
        "thresholds": {"tcp_syn": {"pps": 200}, "udp": {"pps": "20k"}}, "syn_auth": "always",
    }]})
    a.start()
    try:
        yield a
    finally:
        a.close()


def client_counts(agent: LabAgent) -> dict[str, int]:
    maps, port = agent.port()
    try:
        w = port.read_watch_stats()[CLIENTS, :, 0, 0]
    finally:
        port.close()
        maps.close()
    return {abi.Reason(r).label: int(w[r]) for r in range(abi.REASON_MAX) if w[r]}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def discarded(counts: dict[str, int]) -> int:
    return sum(n for reason, n in counts.items() if abi.Reason[reason.upper()] in abi.DROPPING)


def new_records(agent: LabAgent, before: set[str]) -> list[dict[str, object]]:
    got = agent.call("attacks", recent=100)
    return [a for a in got["active"] + got["recent"] if a["id"] not in before]


def test_one_address_at_full_speed_keeps_every_packet(web_lab: Lab, agent: LabAgent) -> None:
    before = {a["id"] for a in agent.call("attacks", recent=100)["recent"]}
    c0 = client_counts(agent)
    with WebServer(web_lab) as web:
        result = HttpLoad(web_lab, web.url, seconds=LOAD_SECONDS).run()
    got = delta(client_counts(agent), c0)
    print(f"one address: {result}; its packets by verdict: {got}")
    assert result.requests > 0 and got.get("passed", 0) > result.requests, "the load went through the program"
    assert discarded(got) == 0, got
    records = new_records(agent, before)
    assert all(r["kind"] == "surge" for r in records), [(r["kind"], r["verdict"]) for r in records]


def test_a_flash_crowd_of_real_sources_is_a_surge_and_nothing_is_dropped(web_lab: Lab, agent: LabAgent) -> None:
    before = {a["id"] for a in agent.call("attacks", recent=100)["recent"]}
    c0 = client_counts(agent)
    with WebServer(web_lab) as web, ClientPool(web_lab, 0, 200):
        result = HttpLoad(web_lab, web.url, seconds=LOAD_SECONDS).run()
    got = delta(client_counts(agent), c0)
    records = new_records(agent, before)
    print(f"crowd of 200: {result}; packets by verdict: {got}; records: "
          f"{[(r['kind'], r['class'], r['verdict']['why'], r['verdict']['evidence']) for r in records]}")
    assert discarded(got) == 0, got
    syn = [r for r in records if r["class"] == "tcp_syn"]
    assert syn, "the crowd's SYNs crossed the 200 pps threshold: a record says what it was"
    for r in syn:
        assert r["kind"] == "surge" and r["mitigations"] == [], r["verdict"]
        evidence = r["verdict"]["evidence"]
        # sparsely sampled, a crowd repeats few sources: most samples come from distinct ones
        assert evidence["distinct_sources"] * 2 >= evidence["samples"] > 0, evidence
        assert not evidence["distress"]["hurting"], evidence
    assert not [r for r in records if r["kind"] == "attack"]
