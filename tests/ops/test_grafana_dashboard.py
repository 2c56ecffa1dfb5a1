"""scripts/grafana/chargectl.json: importable structure, datasources as variables, and every metric,
measurement, field and tag it queries is one chargectl actually exports or writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chargectl.common.readings import Reading
from chargectl.services.adapters.timeseries import SessionEvent, reading_lines, session_line
from chargectl.services.metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "scripts" / "grafana" / "chargectl.json"


def _dash() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _line_protocol_schema() -> dict[str, tuple[set[str], set[str]]]:
    """Measurement -> (tags, fields) as the time-series adapters write them (from a real line)."""
    lines = [
        *reading_lines(
            "site-a", [Reading("AABBCCDDEEFF", 1, 10.0, 1000, True, 230.0, 0.1, 30.0, 1)], "CHARGING"
        ),
        session_line(
            SessionEvent(1, "site-a", "AABBCCDDEEFF", "s1", "u1", "finished", 1000, 30, "gbp", "Local")
        ),
    ]
    schema: dict[str, tuple[set[str], set[str]]] = {}
    for line in lines:
        head, fields, _ts = line.rsplit(" ", 2)
        measurement, *tags = head.split(",")
        tag_names = {t.split("=")[0] for t in tags}
        field_names = {f.split("=")[0] for f in re.split(r",(?=\w+=)", fields)}
        old = schema.get(measurement, (set(), set()))
        schema[measurement] = (old[0] | tag_names, old[1] | field_names)
    return schema


def test_dashboard_is_importable() -> None:
    d = _dash()
    for key in ("uid", "title", "panels", "templating", "schemaVersion", "time"):
        assert key in d, key
    assert "id" not in d or d["id"] is None  # an id would clash with the importing Grafana's own
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 30
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert len(d["panels"]) >= 6
    for p in d["panels"]:
        assert p["title"] and p["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


def test_datasources_are_variables() -> None:
    d = _dash()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["prometheus"]["type"] == "datasource" and variables["prometheus"]["query"] == "prometheus"
    )
    assert variables["influxdb"]["type"] == "datasource" and variables["influxdb"]["query"] == "influxdb"
    for p in d["panels"]:
        for ds in [p["datasource"]] + [t["datasource"] for t in p["targets"]]:
            assert ds["uid"] in ("${prometheus}", "${influxdb}"), p["title"]
            assert ds["type"] == {"${prometheus}": "prometheus", "${influxdb}": "influxdb"}[ds["uid"]]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${influxdb}"


def test_every_prometheus_metric_is_exported() -> None:
    known = exported_names()
    seen = set()
    for p in _dash()["panels"]:
        for t in p["targets"]:
            if t["datasource"]["uid"] != "${prometheus}":
                continue
            names = re.findall(r"\b(chargectl_[a-z_]+)", t["expr"])
            assert names, (p["title"], t["expr"])
            for name in names:
                assert name in known, (p["title"], name)
                seen.add(name)
    assert "chargectl_command_latency_seconds_bucket" in seen
    assert "chargectl_dead_lettered_total" in seen and "chargectl_readings_total" in seen


def test_every_influx_measurement_field_and_tag_is_written() -> None:
    schema = _line_protocol_schema()
    queries = [t["query"] for p in _dash()["panels"] for t in p["targets"] if "query" in t]
    queries += [v["query"] for v in _dash()["templating"]["list"] if v["type"] == "query"]
    assert queries
    for q in queries:
        measurement = re.search(r'FROM "(\w+)"', q)
        assert measurement and measurement.group(1) in schema, q
        tags, fields = schema[measurement.group(1)]
        quoted = set(re.findall(r'"(\w+)"', q)) - {measurement.group(1)}
        for name in quoted:
            assert name in tags or name in fields, (q, name)
        if q.startswith("SELECT"):
            assert "$timeFilter" in q, q


def test_the_panels_the_operations_need_are_there() -> None:
    text = json.dumps(_dash())
    for needle in (
        'mean(\\"power_w\\")',  # power per plug
        'sum(\\"energy_wh\\")',  # energy per site
        "chargectl_open_sessions",  # live sessions
        'sum(\\"cost_minor\\")',  # revenue
        'state=\\"FAULTED\\"',  # faults
        "chargectl_readings_total",  # readings/s
        "chargectl_dead_lettered_total",  # dead letters
        "chargectl_command_latency_seconds_bucket",  # command latency
    ):
        assert needle in text, needle
