"""kfloop's alert rules: the PrometheusRule validates, renders, passes promtool's checks and
its unit tests (tests/monitoring/rules_test.yaml)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kfloop.core.errors import ConfigError
from kfloop.monitoring import rules

HERE = Path(__file__).parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool: run `make setup`")


def manifest_doc() -> dict[str, Any]:
    return yaml.safe_load(rules.default_manifest().read_text())


def write_doc(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)


def run_unit_tests(workdir: Path, groups: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """promtool test rules on ``groups`` without the long description/runbook annotations."""
    groups = copy.deepcopy(groups)
    for group in groups["groups"]:
        for rule in group["rules"]:
            for key in ("description", "runbook"):
                rule.get("annotations", {}).pop(key, None)
    rules.write_rule_file(workdir / "kfloop.rules.yml", groups)
    shutil.copy(HERE / "rules_test.yaml", workdir / "rules_test.yaml")
    return promtool("test", "rules", workdir / "rules_test.yaml")


# -- the manifest -----------------------------------------------------------------------------


def test_manifest_loads_with_the_four_alerts_and_their_labels() -> None:
    ruleset = rules.load()
    assert ruleset.name == "kfloop"
    alerts = ruleset.alerts()
    for name in (
        "KfloopFeatureDrift",
        "KfloopPredictionShift",
        "KfloopPredictorErrorRate",
        "KfloopLoggerDropping",
    ):
        assert name in alerts
        assert set(alerts[name]["annotations"]) >= {"summary", "description", "runbook"}
    retrain = {n for n, r in alerts.items() if r["labels"].get("kfloop_action") == "retrain"}
    assert retrain == {"KfloopFeatureDrift", "KfloopPredictionShift"}
    # the drift alerts cannot fire on an empty window
    for name in retrain:
        assert "kfloop_drift_window_rows" in alerts[name]["expr"]
    assert "model_version:kfloop_feature_psi:max" in ruleset.records()


def test_manifest_is_selected_by_kube_prometheus() -> None:
    doc = manifest_doc()
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["labels"]["prometheus"] == "k8s"
    assert doc["metadata"]["labels"]["role"] == "alert-rules"


def _mutate(doc: dict[str, Any], group: int, rule: int, **change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target = doc["spec"]["groups"][group]["rules"][rule]
    for key, value in change.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return doc


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"for": "fifteen minutes"}, "spec.groups[kfloop.alerts].rules[KfloopFeatureDrift].for"),
        ({"expr": " "}, "spec.groups[kfloop.alerts].rules[KfloopFeatureDrift].expr"),
        (
            {"labels": {"severity": "page"}},
            "spec.groups[kfloop.alerts].rules[KfloopFeatureDrift].labels.severity",
        ),
        (
            {"labels": {"severity": "warning", "kfloop_action": "delete"}},
            "spec.groups[kfloop.alerts].rules[KfloopFeatureDrift].labels.kfloop_action",
        ),
        (
            {"annotations": {"summary": "s", "description": "d"}},
            "spec.groups[kfloop.alerts].rules[KfloopFeatureDrift].annotations.runbook",
        ),
        ({"record": "x:y"}, "spec.groups[kfloop.alerts].rules[0]"),
        ({"alert": "Bad Name"}, "spec.groups[kfloop.alerts].rules[0].alert"),
        ({"severity": "warning"}, "spec.groups[kfloop.alerts].rules[KfloopFeatureDrift]"),
    ],
)
def test_each_bad_rule_names_file_group_and_rule(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    path = write_doc(tmp_path / "rule.yaml", _mutate(manifest_doc(), 1, 0, **change))
    with pytest.raises(ConfigError) as info:
        rules.load(path)
    assert info.value.field == f"{path}: {field}", info.value


def test_bad_documents_are_named(tmp_path: Path) -> None:
    doc = manifest_doc()
    cases: list[tuple[Any, str]] = [
        ({**doc, "kind": "ConfigMap"}, "kind PrometheusRule"),
        ({**doc, "spec": {"groups": []}}, "non-empty list"),
        ({**doc, "metadata": {}}, "metadata.name"),
        ({**doc, "spec": {"groups": [doc["spec"]["groups"][1]] * 2}}, "duplicate group"),
        ({**doc, "spec": {"groups": [{"name": "g", "interval": "often", "rules": []}]}}, "often"),
        ({**doc, "spec": {"groups": [{"name": "g", "rules": []}]}}, "g].rules"),
        (["not", "a", "mapping"], "not a YAML mapping"),
    ]
    for bad, expected in cases:
        path = write_doc(tmp_path / "bad.yaml", bad)
        with pytest.raises(ConfigError, match=r"bad\.yaml") as info:
            rules.load(path)
        assert expected in str(info.value), (expected, info.value)
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        rules.load(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        rules.load(tmp_path / "missing.yaml")


def test_duplicate_alert_names_are_refused(tmp_path: Path) -> None:
    doc = manifest_doc()
    alerts = doc["spec"]["groups"][1]["rules"]
    alerts.append(copy.deepcopy(alerts[0]))
    with pytest.raises(ConfigError, match=r"rules\[KfloopFeatureDrift\]: duplicate alert name"):
        rules.load(write_doc(tmp_path / "dup.yaml", doc))


# -- rendering --------------------------------------------------------------------------------


def test_rendered_file_equals_manifest_groups_except_overrides(tmp_path: Path) -> None:
    path = rules.render_rule_file(
        tmp_path / "local.rules.yml", for_overrides=rules.LOCAL_FOR, interval="2s"
    )
    rendered = yaml.safe_load(path.read_text())
    assert set(rendered) == {"groups"}
    source = manifest_doc()["spec"]["groups"]
    assert len(rendered["groups"]) == len(source)
    for got, want in zip(rendered["groups"], source, strict=True):
        assert got["interval"] == "2s"
        assert {k: v for k, v in got.items() if k not in ("interval", "rules")} == {
            k: v for k, v in want.items() if k not in ("interval", "rules")
        }
        assert len(got["rules"]) == len(want["rules"])
        for got_rule, want_rule in zip(got["rules"], want["rules"], strict=True):
            name = want_rule.get("alert")
            if name in rules.LOCAL_FOR:
                assert got_rule["for"] == rules.LOCAL_FOR[name]
            assert {k: v for k, v in got_rule.items() if k != "for"} == {
                k: v for k, v in want_rule.items() if k != "for"
            }
    # without overrides the file is the manifest's groups, byte for byte equal as data
    plain = rules.render_groups(rules.load())
    assert plain == {"groups": source}


def test_overrides_must_name_known_alerts_with_durations() -> None:
    ruleset = rules.load()
    with pytest.raises(ConfigError, match=r"for_overrides\[KfloopNoSuch\]: no such alert"):
        rules.render_groups(ruleset, {"KfloopNoSuch": "5s"})
    with pytest.raises(ConfigError, match=r"for_overrides\[KfloopFeatureDrift\]"):
        rules.render_groups(ruleset, {"KfloopFeatureDrift": "soon"})
    with pytest.raises(ConfigError, match="interval"):
        rules.render_groups(ruleset, interval="-1s")
    assert rules.parse_duration("1h30m", "x") == 5400
    assert rules.parse_duration("500ms", "x") == 0.5


def test_failed_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "kfloop.rules.yml"
    rules.render_rule_file(target)
    before = target.read_text()

    def broken_dump(doc: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(rules, "dump", broken_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        rules.render_rule_file(target, for_overrides=rules.LOCAL_FOR)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# -- promtool ---------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_manifest_groups_and_the_local_file(tmp_path: Path) -> None:
    groups = {"groups": manifest_doc()["spec"]["groups"]}
    extracted = write_doc(tmp_path / "manifest.rules.yml", groups)
    out = promtool("check", "rules", extracted)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 13 rules found" in out.stdout
    local = rules.render_rule_file(
        tmp_path / "local.rules.yml", for_overrides=rules.LOCAL_FOR, interval="2s"
    )
    assert "SUCCESS: 13 rules found" in rules.promtool_check(local)


@needs_promtool
def test_promtool_check_names_the_file_on_a_bad_expression(tmp_path: Path) -> None:
    doc = rules.render_groups(rules.load())
    doc["groups"][1]["rules"][0]["expr"] = "max by (model (kfloop_feature_psi)"
    path = rules.write_rule_file(tmp_path / "bad.rules.yml", doc)
    with pytest.raises(ConfigError, match=r"bad\.rules\.yml: promtool check rules failed"):
        rules.promtool_check(path)


@needs_promtool
def test_promtool_unit_tests_pass_on_the_manifest_rules(tmp_path: Path) -> None:
    out = run_unit_tests(tmp_path, rules.render_groups(rules.load()))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("KfloopFeatureDrift", ">= 500", ">= 50"),  # the empty-window guard
        ("KfloopFeatureDrift", "> 0.25", "> 0.01"),  # the threshold
        ("KfloopPredictorErrorRate", ">= 0.05", ">= 0"),  # the traffic floor
        ("KfloopLoggerDropping", "> 0", ">= 0"),
        # a lost-events counter born in the window (its first value) must count
        ("model_version:kfloop_logger_events_lost:increase5m", " + 0", " * 0"),
        ("job_instance:kfloop_payload_events_lost:increase5m", " + 0", " * 0"),
    ],
)
def test_promtool_unit_tests_catch_a_weakened_rule(
    tmp_path: Path, name: str, old: str, new: str
) -> None:
    """The unit tests are not vacuous: loosening a guard makes them fail."""
    doc = rules.render_groups(rules.load())
    rule = next(
        r for g in doc["groups"] for r in g["rules"] if name in (r.get("alert"), r.get("record"))
    )
    assert old in rule["expr"]
    rule["expr"] = rule["expr"].replace(old, new)
    out = run_unit_tests(tmp_path, doc)
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr


def test_every_metric_the_rules_read_is_exported_by_the_logger_or_predictor() -> None:
    """The rules' metric names against the real LoggerMetrics and predictor registries.

    A fresh interpreter: the predictor imports kserve, which cannot share a process with
    the tritonclient gRPC client other serving tests load.
    """
    code = (
        "import json\n"
        "from prometheus_client import REGISTRY\n"
        "from kfloop.serving.logger import LoggerMetrics\n"
        "import kfloop.serving.predictor, kfloop.serving.payload_events\n"
        "import inspect\n"
        "wanted = {'model': 'm', 'version': 'v', 'prediction_buckets': [0.5]}\n"
        "params = inspect.signature(LoggerMetrics).parameters\n"
        "logger = LoggerMetrics(**{k: v for k, v in wanted.items() if k in params})\n"
        "names = set()\n"
        "for reg in (REGISTRY, logger.registry):\n"
        "    for fam in reg.collect():\n"
        "        names.add(fam.name)\n"
        "        if fam.type == 'counter':\n"
        "            names.add(fam.name + '_total')\n"
        "print(json.dumps(sorted(n for n in names if n.startswith('kfloop_'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    exported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "kfloop_feature_psi" in exported
    read = {
        name
        for rule in [*rules.load().records().values(), *rules.load().alerts().values()]
        for name in re.findall(r"(?<![:\w])(kfloop_[a-z_]+)(?![:\w])", rule["expr"])
    }
    assert {"kfloop_drift_window_rows", "kfloop_predictor_requests_total"} <= read
    assert read <= exported, f"rules read metrics nobody exports: {sorted(read - exported)}"


def test_every_aggregation_keeps_the_namespace() -> None:
    """On a cluster the operator scopes the AlertmanagerConfig to alerts of its namespace:
    an aggregation that dropped ``namespace`` would make the drift alerts unroutable."""
    ruleset = rules.load()
    clauses = [
        (name, clause)
        for name, rule in [*ruleset.records().items(), *ruleset.alerts().items()]
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"])
    ]
    assert len(clauses) > 10
    missing = [(n, c) for n, c in clauses if "namespace" not in [x.strip() for x in c.split(",")]]
    assert missing == []
