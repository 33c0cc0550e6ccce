"""PromQL over Prometheus's HTTP API (``/api/v1/query``, ``/api/v1/query_range``, alerts).

Standard library only, so it runs in both environments (the demo report uses it from the
pipeline environment). Errors are :class:`PrometheusQueryError`, naming the query and what
Prometheus answered.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from kfloop.core.errors import KfloopError


class PrometheusQueryError(KfloopError):
    """Prometheus did not answer, or answered an error, for a query."""


@dataclass(frozen=True)
class Sample:
    """One instant value of one series."""

    labels: dict[str, str]
    timestamp: float
    value: float


@dataclass(frozen=True)
class Series:
    """One series over a time range: ``points`` are (unix time, value) pairs."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class PrometheusClient:
    """A Prometheus server at ``base_url`` (``http://127.0.0.1:9090``)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str] | None = None, what: str = "") -> Any:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        what = what or path
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                error = json.loads(body).get("error", "")
            except (ValueError, AttributeError):
                error = body[:300].decode(errors="replace")
            raise PrometheusQueryError(
                f"{what}: Prometheus at {self.base_url} answered {exc.code}: {error}"
            ) from None
        except (OSError, ValueError) as exc:
            raise PrometheusQueryError(
                f"{what}: Prometheus at {self.base_url} did not answer: {exc}"
            ) from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusQueryError(f"{what}: the answer is not JSON") from None
        if doc.get("status") != "success":
            raise PrometheusQueryError(f"{what}: {doc.get('errorType')}: {doc.get('error')}")
        return doc.get("data")

    def ready(self) -> bool:
        """True when ``/-/ready`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=self.timeout) as r:
                return int(r.status) == 200
        except (OSError, ValueError):
            return False

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """Instant query ``expr`` (now, or at unix time ``at``): one :class:`Sample` per series.

        A scalar result comes back as one sample without labels.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params, f"query {expr!r}")
        kind, result = data.get("resultType"), data.get("result")
        if kind in ("scalar", "string"):
            return [Sample({}, float(result[0]), _float(result[1]))]
        if kind != "vector":
            raise PrometheusQueryError(f"query {expr!r}: unexpected result type {kind!r}")
        return [
            Sample(dict(item["metric"]), float(item["value"][0]), _float(item["value"][1]))
            for item in result
        ]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """Range query ``expr`` over [start, end] (unix times) every ``step`` seconds."""
        if step <= 0 or end < start:
            raise PrometheusQueryError(
                f"query_range {expr!r}: need step > 0 and end >= start, got "
                f"start={start}, end={end}, step={step}"
            )
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = self._get("/api/v1/query_range", params, f"query_range {expr!r}")
        if data.get("resultType") != "matrix":
            raise PrometheusQueryError(
                f"query_range {expr!r}: unexpected result type {data.get('resultType')!r}"
            )
        return [
            Series(dict(item["metric"]), [(float(t), _float(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def alerts(
        self, state: str | None = None, alertname: str | None = None
    ) -> list[dict[str, Any]]:
        """Active alerts (``/api/v1/alerts``), optionally of one state (``firing``) or name."""
        alerts = list(self._get("/api/v1/alerts", what="alerts").get("alerts", []))
        return [
            a
            for a in alerts
            if (state is None or a.get("state") == state)
            and (alertname is None or a.get("labels", {}).get("alertname") == alertname)
        ]

    def rule_groups(self) -> list[dict[str, Any]]:
        """Loaded rule groups with their rules and last evaluation (``/api/v1/rules``)."""
        return list(self._get("/api/v1/rules", what="rules").get("groups", []))

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health (``/api/v1/targets``)."""
        return list(self._get("/api/v1/targets", what="targets").get("activeTargets", []))
