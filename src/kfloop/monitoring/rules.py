"""kfloop's alert rules: load and validate the ``PrometheusRule``, render the local rule file.

The ``PrometheusRule`` in ``manifests/base/prometheusrule.yaml`` is the one source of truth:
kube-prometheus loads it on a cluster, and :func:`render_rule_file` turns its ``spec.groups``
into the ``groups:`` file the local Prometheus reads. The local demo may shorten the ``for``
durations (a mapping of alert name to duration) and the groups' evaluation interval; nothing
else can differ, so the expressions, labels and thresholds are the ones the cluster runs.

Every function is pure except :func:`write_rule_file` (atomic: a temporary file in the same
folder, then a rename) and :func:`promtool_check` (runs ``promtool check rules``). A bad file
raises :class:`~kfloop.core.errors.ConfigError` whose field names the file, the group and the
rule (``prometheusrule.yaml: spec.groups[kfloop.alerts].rules[KfloopFeatureDrift].for``).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kfloop.core.errors import ConfigError

API_VERSION = "monitoring.coreos.com/v1"
KIND = "PrometheusRule"
RULE_KEYS = frozenset(
    {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
)
GROUP_KEYS = frozenset({"name", "interval", "rules", "limit", "partial_response_strategy"})
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook")
SEVERITIES = frozenset({"critical", "warning", "info"})
ACTION_LABEL = "kfloop_action"
ACTIONS = frozenset({"retrain"})
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_UNITS = (365 * 86400.0, 7 * 86400.0, 86400.0, 3600.0, 60.0, 1.0, 0.001)

LOCAL_FOR: dict[str, str] = {
    "KfloopFeatureDrift": "10s",
    "KfloopPredictionShift": "10s",
    "KfloopPredictorErrorRate": "10s",
    "KfloopLoggerDropping": "10s",
    "KfloopPayloadEventsDropped": "10s",
}
"""The local demo's ``for`` durations (the manifest's are minutes long)."""
LOCAL_INTERVAL = "2s"
"""The local demo's rule evaluation interval."""


def default_manifest() -> Path:
    """``manifests/base/prometheusrule.yaml`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[3] / "manifests" / "base" / "prometheusrule.yaml"


def parse_duration(text: str, field: str) -> float:
    """Seconds of a Prometheus duration (``15m``, ``1h30m``, ``500ms``); ConfigError if not one."""
    match = _DURATION.match(text) if isinstance(text, str) and text else None
    if match is None or not any(match.groups()):
        raise ConfigError(field, f"{text!r} is not a Prometheus duration (e.g. 30s, 15m, 1h30m)")
    return sum(float(n) * unit for n, unit in zip(match.groups(), _UNITS, strict=True) if n)


@dataclass(frozen=True)
class RuleSet:
    """A validated ``PrometheusRule``: where it came from, its name and its groups."""

    source: str
    name: str
    groups: list[dict[str, Any]]

    def alerts(self) -> dict[str, dict[str, Any]]:
        """Alerting rules by name."""
        return {r["alert"]: r for g in self.groups for r in g["rules"] if "alert" in r}

    def records(self) -> dict[str, dict[str, Any]]:
        """Recording rules by the series they record."""
        return {r["record"]: r for g in self.groups for r in g["rules"] if "record" in r}


def _check_str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(field, f"must be a mapping of names to strings, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not LABEL_NAME.match(key):
            raise ConfigError(field, f"{key!r} is not a valid label name")
        if not isinstance(item, str):
            raise ConfigError(f"{field}.{key}", f"must be a string, got {item!r}")
    return value


def _validate_rule(rule: Any, where: str) -> str:
    if not isinstance(rule, dict):
        raise ConfigError(where, f"a rule must be a mapping, got {rule!r}")
    kinds = [k for k in ("record", "alert") if k in rule]
    if len(kinds) != 1:
        raise ConfigError(where, "a rule needs exactly one of `record` or `alert`")
    kind = kinds[0]
    name = rule[kind]
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise ConfigError(f"{where}.{kind}", f"{name!r} is not a valid {kind} name")
    here = f"{where.rsplit('.rules', 1)[0]}.rules[{name}]"
    unknown = sorted(set(rule) - RULE_KEYS)
    if unknown:
        raise ConfigError(here, f"unknown keys {unknown}; allowed: {sorted(RULE_KEYS)}")
    expr = rule.get("expr")
    if not isinstance(expr, str | int | float) or not str(expr).strip():
        raise ConfigError(f"{here}.expr", "missing or empty PromQL expression")
    labels = _check_str_map(rule.get("labels"), f"{here}.labels")
    if kind == "record":
        for key in ("for", "keep_firing_for", "annotations"):
            if key in rule:
                raise ConfigError(f"{here}.{key}", "only alerting rules take this key")
        return name
    for key in ("for", "keep_firing_for"):
        if key in rule:
            parse_duration(rule[key], f"{here}.{key}")
    if labels.get("severity") not in SEVERITIES:
        raise ConfigError(
            f"{here}.labels.severity",
            f"must be one of {sorted(SEVERITIES)}, got {labels.get('severity')!r}",
        )
    if ACTION_LABEL in labels and labels[ACTION_LABEL] not in ACTIONS:
        raise ConfigError(
            f"{here}.labels.{ACTION_LABEL}",
            f"must be one of {sorted(ACTIONS)}, got {labels[ACTION_LABEL]!r}",
        )
    annotations = _check_str_map(rule.get("annotations"), f"{here}.annotations")
    for key in REQUIRED_ANNOTATIONS:
        if not annotations.get(key, "").strip():
            raise ConfigError(f"{here}.annotations.{key}", "missing or empty")
    return name


def validate(doc: Any, source: str = "<PrometheusRule>") -> RuleSet:
    """Check a parsed ``PrometheusRule``; the ConfigError's field names source, group and rule."""
    if not isinstance(doc, dict):
        raise ConfigError(source, "not a YAML mapping (expected a PrometheusRule)")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ConfigError(
            source,
            f"expected apiVersion {API_VERSION} and kind {KIND}, got "
            f"{doc.get('apiVersion')!r} / {doc.get('kind')!r}",
        )
    metadata = doc.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: metadata.name", "missing")
    spec = doc.get("spec")
    groups = spec.get("groups") if isinstance(spec, dict) else None
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"{source}: spec.groups", "must be a non-empty list of rule groups")
    group_names: set[str] = set()
    alert_names: set[str] = set()
    for index, group in enumerate(groups):
        where = f"{source}: spec.groups[{index}]"
        if not isinstance(group, dict):
            raise ConfigError(where, f"a group must be a mapping, got {group!r}")
        gname = group.get("name")
        if not isinstance(gname, str) or not gname:
            raise ConfigError(f"{where}.name", "missing")
        where = f"{source}: spec.groups[{gname}]"
        if gname in group_names:
            raise ConfigError(where, "duplicate group name")
        group_names.add(gname)
        unknown = sorted(set(group) - GROUP_KEYS)
        if unknown:
            raise ConfigError(where, f"unknown keys {unknown}; allowed: {sorted(GROUP_KEYS)}")
        if "interval" in group:
            parse_duration(group["interval"], f"{where}.interval")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            raise ConfigError(f"{where}.rules", "must be a non-empty list")
        for rindex, rule in enumerate(rules):
            rname = _validate_rule(rule, f"{where}.rules[{rindex}]")
            if "alert" in rule:
                if rname in alert_names:
                    raise ConfigError(f"{where}.rules[{rname}]", "duplicate alert name")
                alert_names.add(rname)
    return RuleSet(source=source, name=name, groups=copy.deepcopy(groups))


def load(path: Path | None = None) -> RuleSet:
    """Read and validate the ``PrometheusRule`` at ``path`` (default: the manifest)."""
    path = Path(path) if path is not None else default_manifest()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the PrometheusRule: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from None
    return validate(doc, str(path))


def render_groups(
    rules: RuleSet,
    for_overrides: Mapping[str, str] | None = None,
    interval: str | None = None,
) -> dict[str, Any]:
    """The Prometheus rule file (``{"groups": [...]}``) of ``rules``.

    Args:
        rules: validated rules (:func:`load`).
        for_overrides: alert name -> ``for`` duration; every name must be an alert of
            ``rules``. Only ``for`` changes.
        interval: evaluation interval set on every group (None keeps the manifest's).

    Raises:
        ConfigError: an override names an unknown alert or is not a duration.
    """
    overrides = dict(for_overrides or {})
    known = rules.alerts()
    for alert, duration in overrides.items():
        if alert not in known:
            raise ConfigError(
                f"for_overrides[{alert}]",
                f"no such alert in {rules.source}; known: {sorted(known)}",
            )
        parse_duration(duration, f"for_overrides[{alert}]")
    if interval is not None:
        parse_duration(interval, "interval")
    groups = copy.deepcopy(rules.groups)
    for group in groups:
        if interval is not None:
            group["interval"] = interval
        for rule in group["rules"]:
            if rule.get("alert") in overrides:
                rule["for"] = overrides[rule["alert"]]
    return {"groups": groups}


def dump(doc: Mapping[str, Any]) -> str:
    """YAML text of a rule file (keys in their original order, long expressions kept)."""
    return yaml.safe_dump(dict(doc), sort_keys=False, width=1000, allow_unicode=True)


def write_rule_file(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically (temporary file in the folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(dump(doc))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def render_rule_file(
    path: Path,
    manifest: Path | None = None,
    for_overrides: Mapping[str, str] | None = None,
    interval: str | None = None,
) -> Path:
    """Load the manifest, render its groups with the overrides and write them to ``path``."""
    return write_rule_file(path, render_groups(load(manifest), for_overrides, interval))


def promtool_binary() -> str | None:
    """``promtool`` on PATH (Debian's prometheus package), or None."""
    return shutil.which("promtool")


def promtool_check(path: Path) -> str:
    """``promtool check rules path``; its output, or ConfigError naming the file with it."""
    binary = promtool_binary()
    if binary is None:
        raise ConfigError(
            str(path), "promtool not found: `make setup` installs Debian's prometheus package"
        )
    out = subprocess.run(
        [binary, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise ConfigError(str(path), f"promtool check rules failed:\n{out.stdout}{out.stderr}")
    return out.stdout
