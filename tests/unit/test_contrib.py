"""contrib/: the alert rules and the Grafana dashboard stay valid and only use
metrics the agent exports (names taken from a scrape of a fake agent, so
neither file can rot when a metric is renamed)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_metrics import exported_names, scrape_text

from agent import metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus-alerts.yaml"
DASHBOARD = REPO / "contrib" / "grafana-dashboard.json"
NAME = re.compile(r"\bfloodguard_[a-z0-9_]+")
RECORDED = re.compile(r"\bfloodguard:[a-z0-9_:]+")
DROPS = "|".join(r.label for r in metrics.DROP_REASONS)


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_names(scrape_text())


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


# --------------------------------------------------------------------------- alert rules


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_cover_what_an_operator_must_hear_about() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    required = {
        "FloodguardAgentDown": "up",
        "FloodguardDatapathUnreadable": "floodguard_up",
        "FloodguardMapNearlyFull": "floodguard_map_capacity",
        "FloodguardPolicyReloadFailing": "floodguard_policy_reloads_total",
        "FloodguardDropsSurging": "floodguard:dropped_packets:rate5m",
        "FloodguardAttackActive": "floodguard_attacks_active",
        "FloodguardEscalationNeeded": "floodguard_escalations_total",
    }
    for name, metric in required.items():
        assert name in alerts, name
        assert metric in alerts[name]["expr"], name
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_use_only_exported_metrics(exported: set[str]) -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    for r in rules():
        used = set(NAME.findall(r["expr"]))
        assert used <= exported, (r.get("alert") or r.get("record"), used - exported)
        assert set(RECORDED.findall(r["expr"])) <= recorded | {r.get("record")}


def test_the_drop_reasons_of_the_rules_are_the_agents() -> None:
    (record,) = [r for r in rules() if r.get("record") == "floodguard:dropped_packets:rate5m"]
    assert f'reason=~"{DROPS}"' in record["expr"]


def _without_annotations(doc: dict[str, Any]) -> dict[str, Any]:
    """promtool compares annotations too; the tests here are about when and
    with which labels an alert fires."""
    out = copy.deepcopy(doc)
    for g in out["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    return out


GW1 = 'job="floodguard",instance="gw1:9470"'
GW2 = 'job="floodguard",instance="gw2:9470"'
GW3 = 'job="floodguard",instance="gw3:9470"'


def _labels(instance: str, **extra: str) -> dict[str, str]:
    return {"job": "floodguard", "instance": instance, **extra}


def packets(agent: str, reason: str, monitor: str = "false") -> str:
    return f'floodguard_packets_total{{{agent},interface="eth0",reason="{reason}",class="udp",monitor="{monitor}"}}'


PROMTOOL_TESTS: list[dict[str, Any]] = [
    {   # the agent stops answering; its datapath becomes unreadable on another host
        "interval": "1m",
        "input_series": [
            {"series": f"up{{{GW1}}}", "values": "1 1 0 0 0 0 0 0"},
            {"series": f"up{{{GW2}}}", "values": "1x8"},
            {"series": f"floodguard_up{{{GW2}}}", "values": "1 0 0 0 0 0 0 0"},
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "FloodguardAgentDown", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "FloodguardAgentDown",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", severity="critical")}]},
            {"eval_time": "5m", "alertname": "FloodguardDatapathUnreadable",
             "exp_alerts": [{"exp_labels": _labels("gw2:9470", severity="critical")}]},
            {"eval_time": "5m", "alertname": "FloodguardMetricsAbsent", "exp_alerts": []},
        ],
    },
    {   # no target at all
        "interval": "1m",
        "input_series": [{"series": f"floodguard_up{{{GW1}}}", "values": "1x20"}],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "FloodguardMetricsAbsent",
             "exp_alerts": [{"exp_labels": {"job": "floodguard", "severity": "warning"}}]},
        ],
    },
    {   # a hash map at 95 %, an LRU map full; the LRU one only after 30 minutes
        "interval": "1m",
        "input_series": [
            {"series": f'floodguard_map_entries{{{GW1},map="host4",type="hash"}}', "values": "950x40"},
            {"series": f'floodguard_map_capacity{{{GW1},map="host4",type="hash"}}', "values": "1000x40"},
            {"series": f'floodguard_map_entries{{{GW1},map="buckets4",type="lru_hash"}}', "values": "1000x40"},
            {"series": f'floodguard_map_capacity{{{GW1},map="buckets4",type="lru_hash"}}', "values": "1000x40"},
            {"series": f'floodguard_map_entries{{{GW1},map="rules",type="array"}}', "values": "3x40"},
            {"series": f'floodguard_map_capacity{{{GW1},map="rules",type="array"}}', "values": "64x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "FloodguardMapNearlyFull",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", map="host4", type="hash", severity="warning")}]},
            {"eval_time": "10m", "alertname": "FloodguardMapFull", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "FloodguardLruMapSaturated", "exp_alerts": []},
            {"eval_time": "35m", "alertname": "FloodguardLruMapSaturated",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", map="buckets4", type="lru_hash", severity="info")}]},
        ],
    },
    {   # a rejected reload raises the alert; 15 minutes later it has cleared
        "interval": "1m",
        "input_series": [
            {"series": f'floodguard_policy_reloads_total{{{GW1},result="failed"}}', "values": "0 0 0 1x30"},
            {"series": f'floodguard_policy_reloads_total{{{GW1},result="ok"}}', "values": "1x33"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "FloodguardPolicyReloadFailing", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "FloodguardPolicyReloadFailing",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", result="failed", severity="warning")}]},
            {"eval_time": "30m", "alertname": "FloodguardPolicyReloadFailing", "exp_alerts": []},
        ],
    },
    {   # drops: gw1 100/s for 70 min then 10,000/s; gw2 none, then 10,000/s;
        # gw3 a steady 2,000/s (high, but no surge). Monitor drops never count.
        "interval": "1m",
        "input_series": [
            {"series": packets(GW1, "banned"), "values": "0+6000x70 1020000+600000x20"},
            {"series": packets(GW1, "passed"), "values": "0+6000000x90"},
            {"series": packets(GW2, "rate_limited"), "values": "_x69 0+600000x20"},
            {"series": packets(GW3, "rule_drop"), "values": "0+120000x90"},
            {"series": packets(GW3, "rate_limited", monitor="true"), "values": "0+120000x70 8520000+6000000x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "60m", "alertname": "FloodguardDropsSurging", "exp_alerts": []},
            {"eval_time": "74m", "alertname": "FloodguardDropsSurging",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", severity="warning")},
                            {"exp_labels": _labels("gw2:9470", severity="warning")}]},
            # a change detector: once the surge is the recent past, gw2 (no
            # calm history) clears; gw1's calm hour still makes it a surge
            {"eval_time": "80m", "alertname": "FloodguardDropsSurging",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", severity="warning")}]},
        ],
    },
    {   # an attack and an escalation
        "interval": "1m",
        "input_series": [
            {"series": f'floodguard_attacks_active{{{GW1},vector="udp_reflection"}}', "values": "0 1 1 1"},
            {"series": f'floodguard_attacks_active{{{GW1},vector="syn_flood"}}', "values": "0 0 0 0"},
            {"series": f"floodguard_escalations_total{{{GW1}}}", "values": "0 0 1x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "FloodguardAttackActive",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", vector="udp_reflection", severity="warning")}]},
            {"eval_time": "1m", "alertname": "FloodguardEscalationNeeded", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "FloodguardEscalationNeeded",
             "exp_alerts": [{"exp_labels": _labels("gw1:9470", severity="critical")}]},
            {"eval_time": "25m", "alertname": "FloodguardEscalationNeeded", "exp_alerts": []},
        ],
    },
]


def test_alerts_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_without_annotations(yaml.safe_load(RULES.read_text()))))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": PROMTOOL_TESTS,
    }))
    out = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# --------------------------------------------------------------------------- the dashboard


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in doc["panels"]:
        yield p
        yield from p.get("panels", [])


def expressions(doc: dict[str, Any]) -> Iterator[str]:
    """Every PromQL text: panel targets, template variables, annotations."""
    for p in panels(doc):
        for t in p.get("targets", []):
            yield t["expr"]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            yield v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            yield v["definition"]
    for a in doc["annotations"]["list"]:
        if "expr" in a:
            yield a["expr"]


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = dashboard()
    assert doc["title"] == "floodguard" and doc["uid"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "instance", "group"} <= names
    for p in panels(doc):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert p.get("description"), p["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dashboard()):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]


def test_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    used: set[str] = set()
    for expr in expressions(dashboard()):
        used |= set(NAME.findall(expr))
        assert not RECORDED.findall(expr), f"the dashboard must work without the recording rules: {expr}"
    assert used, "no expression found"
    assert used <= exported, used - exported


def test_dashboard_shows_the_essentials() -> None:
    used: set[str] = set()
    for expr in expressions(dashboard()):
        used |= set(NAME.findall(expr))
    for name in ("floodguard_packets_total", "floodguard_group_dropped_packets_total", "floodguard_map_entries",
                 "floodguard_attacks_active", "floodguard_time_to_mitigate_seconds_bucket",
                 "floodguard_tick_duration_seconds_bucket", "floodguard_policy_reloads_total"):
        assert name in used, name


def test_dashboard_drop_reasons_are_the_agents() -> None:
    for expr in expressions(dashboard()):
        for found in re.findall(r'reason[=!]~"([^"]+)"', expr):
            assert found == DROPS, expr
