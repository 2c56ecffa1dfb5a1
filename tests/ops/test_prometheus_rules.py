"""scripts/prometheus/alerts.yml: well-formed rules (schema), only catalogue metrics, every alert the
issue asks for, and accepted by a real rules checker (promtool or vmalert) where one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from chargectl.services.metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "scripts" / "prometheus" / "alerts.yml"
# PromQL functions, aggregations and keywords that may appear next to metric names.
_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "and", "or", "unless", "on", "ignoring",
    "rate", "increase", "deriv", "time", "histogram_quantile", "le", "instance", "reason", "sink",
    "kind", "state", "site", "outcome", "humanize", "humanizeDuration", "value", "labels",
}  # fmt: skip


def _rules() -> list[dict[str, Any]]:
    doc = YAML(typ="safe").load(RULES.read_text())
    assert set(doc) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        rules.extend(group["rules"])
    return rules


def test_rules_are_well_formed() -> None:
    names = []
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert re.fullmatch(r"Chargectl[A-Za-z]+", rule["alert"]), rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        names.append(rule["alert"])
    assert len(names) == len(set(names))


def test_every_metric_named_exists_in_the_catalogue() -> None:
    known = exported_names()
    for rule in _rules():
        for metric in re.findall(r"\b(chargectl_[a-z_]+)", rule["expr"]):
            assert metric in known, f"{rule['alert']}: {metric} is not exported"
        # Selectors only use label names PromQL or the catalogue knows.
        for label, _value in re.findall(r'(\w+)="([^"]+)"', rule["expr"]):
            assert label in _PROMQL_WORDS, (rule["alert"], label)


def test_the_alerts_the_operations_need_are_there() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    wanted = {
        "ChargectlSiteSilent": "site_silent",
        "ChargectlPlugFaulted": 'state="FAULTED"',
        "ChargectlDeadLettersRising": "chargectl_dead_lettered_total",
        "ChargectlUnauthorizedDraw": "unauthorized_draw",
        "ChargectlSpoolGrowing": "chargectl_agent_spooled_bytes",
        "ChargectlCheckpointOld": "chargectl_checkpoint_age_seconds",
        "ChargectlOutOfCreditSpike": "out_of_credit",
    }
    for alert, needle in wanted.items():
        assert needle in exprs[alert], alert


def test_label_values_in_rules_are_known_values() -> None:
    from chargectl.services.metrics import spec_for

    for rule in _rules():
        for metric, selector in re.findall(r"\b(chargectl_[a-z_]+)\{([^}]*)\}", rule["expr"]):
            spec = spec_for(metric.removeprefix("chargectl_").removesuffix("_bucket"))
            assert spec is not None, metric
            for label, op, value in re.findall(r'(\w+)(=~?)"([^"]+)"', selector):
                assert label in spec.labels, (rule["alert"], metric, label)
                values = value.split("|") if op == "=~" else [value]
                for v in values:
                    assert v in spec.known.get(label, ()), (rule["alert"], metric, label, v)


def _checker() -> list[str] | None:
    if shutil.which("promtool"):
        return ["promtool", "check", "rules", str(RULES)]
    if shutil.which("vmalert"):
        return ["vmalert", "-dryRun", f"-rule={RULES}", "-loggerLevel=ERROR"]
    return None


def test_a_real_rules_checker_accepts_them(tmp_path: Path) -> None:
    argv = _checker()
    if argv is None:
        pytest.skip("neither promtool nor vmalert is installed (Debian victoria-metrics ships vmalert)")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # …and the checker is not a rubber stamp: a broken expression fails.
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: sum(rate(x[5m]) >\n")
    argv = [a.replace(str(RULES), str(bad)) for a in argv]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=120).returncode != 0
