"""Canary roll-outs: promote or roll back a new model version on Prometheus measurements.

:func:`decide` is the whole policy, a pure function of what Prometheus measured for the
canary revision and the stable one over a window, and of how long the canary has run:

1. fewer than ``min_requests`` canary requests in the window: **wait**, or **rollback**
   once ``max_duration_seconds`` have passed (no evidence is not a pass);
2. canary error rate above ``max_error_rate``, or above the stable error rate by more than
   ``max_error_rate_increase``: **rollback**;
3. canary p95 latency above ``max_p95_latency_seconds``, or above ``max_latency_ratio``
   times the stable p95: **rollback**;
4. otherwise **promote** once the canary has been observed for ``window_seconds``, else
   **wait**.

Every decision carries its reasons and the measurements it was made on.

:func:`run_canary` is the loop: it reads the revisions from the InferenceService's status,
queries Prometheus (``GET /api/v1/query``) every ``interval`` seconds, decides, records
every decision (log line, JSON line in ``record_path``, the returned :class:`CanaryOutcome`),
and applies the outcome: the new spec with ``canaryTrafficPercent: 100`` on promote, the
previous spec on rollback (server-side apply, field manager ``kfloop``).

The default queries read Knative's queue-proxy metrics, which the ``canary`` Kustomize
component has Prometheus scrape (``revision_request_count``, ``revision_request_latencies``
in milliseconds); :class:`CanaryQueries` takes others.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import urlopen

from kfloop.core.errors import ConfigError, KfloopError
from kfloop.deploy import kserve, kube

log = logging.getLogger(__name__)

Action = Literal["promote", "rollback", "wait"]


class PrometheusError(KfloopError):
    """Prometheus could not be queried, or answered something that is not a result."""


class CanaryError(KfloopError):
    """The canary cannot be judged (no canary in the InferenceService's status...)."""


@dataclass(frozen=True)
class Measurement:
    """What Prometheus measured for one revision over the window."""

    requests: float
    errors: float
    p95_seconds: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class CanaryPolicy:
    """Bounds and timing of a canary roll-out (the ``kfloop-canary`` ConfigMap's keys)."""

    canary_percent: int = 10
    window_seconds: float = 600.0
    min_requests: float = 200.0
    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_p95_latency_seconds: float = 0.5
    max_latency_ratio: float = 1.25
    max_duration_seconds: float = 3600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f.name, f"must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f.name, f"must be a finite number >= 0, got {value!r}")
        if not 1 <= self.canary_percent <= 99 or int(self.canary_percent) != self.canary_percent:
            raise ConfigError("canary_percent", f"{self.canary_percent} is not an integer 1-99")
        if self.max_error_rate > 1:
            raise ConfigError("max_error_rate", f"{self.max_error_rate} is not a fraction 0-1")
        if self.window_seconds <= 0:
            raise ConfigError("window_seconds", "must be > 0")
        if self.max_latency_ratio < 1:
            raise ConfigError("max_latency_ratio", f"{self.max_latency_ratio} is below 1")
        if self.max_duration_seconds < self.window_seconds:
            raise ConfigError(
                "max_duration_seconds",
                f"{self.max_duration_seconds} is shorter than window_seconds="
                f"{self.window_seconds}: the canary could never be promoted",
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CanaryPolicy:
        """From a mapping of strings or numbers (a ConfigMap's ``data``); unknown keys fail."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(unknown[0], f"unknown canary policy key; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for key, raw in data.items():
            try:
                number = float(raw)
            except (TypeError, ValueError):
                raise ConfigError(key, f"{raw!r} is not a number") from None
            values[key] = int(number) if key == "canary_percent" and number.is_integer() else number
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    """One decision: what to do, why, and on which measurements."""

    action: Action
    reasons: list[str]
    canary: Measurement
    stable: Measurement | None
    elapsed_seconds: float
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt_rate(rate: float) -> str:
    return f"{rate:.2%}"


def decide(
    canary: Measurement,
    stable: Measurement | None,
    policy: CanaryPolicy,
    elapsed_seconds: float,
) -> Decision:
    """The canary decision (see the module docstring for the rules, in order)."""

    def result(action: Action, reasons: list[str]) -> Decision:
        return Decision(action, reasons, canary, stable, elapsed_seconds)

    if canary.requests < policy.min_requests:
        need = (
            f"{canary.requests:g} canary requests in the window, fewer than "
            f"min_requests={policy.min_requests:g}"
        )
        if elapsed_seconds >= policy.max_duration_seconds:
            return result(
                "rollback",
                [f"{need} after {elapsed_seconds:g} s (max_duration_seconds): not enough evidence"],
            )
        return result("wait", [need])

    reasons: list[str] = []
    canary_rate = canary.error_rate or 0.0
    stable_rate = stable.error_rate if stable is not None else None
    if canary_rate > policy.max_error_rate:
        reasons.append(
            f"canary error rate {_fmt_rate(canary_rate)} above max_error_rate "
            f"{_fmt_rate(policy.max_error_rate)}"
        )
    if stable_rate is not None and canary_rate - stable_rate > policy.max_error_rate_increase:
        reasons.append(
            f"canary error rate {_fmt_rate(canary_rate)} exceeds the stable "
            f"{_fmt_rate(stable_rate)} by more than {_fmt_rate(policy.max_error_rate_increase)}"
        )
    if canary.p95_seconds is not None:
        if canary.p95_seconds > policy.max_p95_latency_seconds:
            reasons.append(
                f"canary p95 latency {canary.p95_seconds:.3f} s above max_p95_latency_seconds "
                f"{policy.max_p95_latency_seconds:g} s"
            )
        stable_p95 = stable.p95_seconds if stable is not None else None
        if (
            stable_p95 is not None
            and stable_p95 > 0
            and canary.p95_seconds > stable_p95 * policy.max_latency_ratio
        ):
            reasons.append(
                f"canary p95 latency {canary.p95_seconds:.3f} s is more than "
                f"{policy.max_latency_ratio:g}x the stable {stable_p95:.3f} s"
            )
    if reasons:
        return result("rollback", reasons)

    within = [
        f"canary error rate {_fmt_rate(canary_rate)}"
        + (f" (stable {_fmt_rate(stable_rate)})" if stable_rate is not None else "")
        + (
            f", p95 {canary.p95_seconds:.3f} s"
            if canary.p95_seconds is not None
            else ", no latency measured"
        )
        + f" on {canary.requests:g} requests: within bounds"
    ]
    if stable is None or stable.requests == 0:
        within.append("no stable traffic measured: judged on the absolute bounds only")
    if elapsed_seconds >= policy.window_seconds:
        return result("promote", [*within, f"observed for {elapsed_seconds:g} s"])
    return result(
        "wait",
        [
            *within,
            f"observed for {elapsed_seconds:g} s of window_seconds={policy.window_seconds:g}",
        ],
    )


# -- Prometheus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryQueries:
    """PromQL per measurement; ``{namespace}``, ``{revision}`` and ``{window}`` (seconds)
    are filled in. Defaults: Knative queue-proxy metrics (latency in milliseconds)."""

    requests: str = (
        'sum(increase(revision_request_count{{namespace_name="{namespace}",'
        'revision_name="{revision}"}}[{window}s]))'
    )
    errors: str = (
        'sum(increase(revision_request_count{{namespace_name="{namespace}",'
        'revision_name="{revision}",response_code_class="5xx"}}[{window}s]))'
    )
    p95_seconds: str = (
        "histogram_quantile(0.95, sum by (le) (rate(revision_request_latencies_bucket"
        '{{namespace_name="{namespace}",revision_name="{revision}"}}[{window}s]))) / 1000'
    )


class Prometheus:
    """A minimal client of Prometheus's HTTP API (instant queries)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("prometheus_url", f"{url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The value of a scalar-like query: the one sample's value, ``None`` when empty/NaN.

        Raises:
            PrometheusError: unreachable, an error status, or more than one series.
        """
        target = f"{self.url}/api/v1/query?{urlencode({'query': promql})}"
        try:
            with urlopen(target, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise PrometheusError(f"{self.url}: HTTP {exc.code} for {promql!r}: {detail}") from None
        except (URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"{self.url}: query {promql!r} failed: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(f"{self.url}: query {promql!r} failed: {error}")
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar" and isinstance(result, list):
            raw = result[1]
        elif kind == "vector":
            if not isinstance(result, list) or not result:
                return None
            if len(result) > 1:
                raise PrometheusError(
                    f"{self.url}: query {promql!r} returned {len(result)} series; "
                    "aggregate it to one (sum, histogram_quantile...)"
                )
            raw = result[0]["value"][1]
        else:
            raise PrometheusError(f"{self.url}: query {promql!r}: unexpected result {kind!r}")
        value = float(raw)
        return None if math.isnan(value) else value


def measure(
    prometheus: Prometheus,
    queries: CanaryQueries,
    namespace: str,
    revision: str,
    window_seconds: float,
) -> Measurement:
    """Requests, errors and p95 latency of ``revision`` over the last window."""
    params = {"namespace": namespace, "revision": revision, "window": int(window_seconds)}
    return Measurement(
        requests=prometheus.query(queries.requests.format(**params)) or 0.0,
        errors=prometheus.query(queries.errors.format(**params)) or 0.0,
        p95_seconds=prometheus.query(queries.p95_seconds.format(**params)),
    )


def revisions(isvc: Mapping[str, Any]) -> tuple[str, str | None]:
    """(canary revision, stable revision or None) from the InferenceService's traffic status.

    Raises:
        CanaryError: the status shows no traffic split (nothing to judge).
    """
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    traffic = predictor.get("traffic") or []
    canary = next((t for t in traffic if t.get("latestRevision")), None)
    stable = next((t for t in traffic if not t.get("latestRevision")), None)
    name = (isvc.get("metadata") or {}).get("name", "?")
    if canary is None or not canary.get("revisionName"):
        raise CanaryError(
            f"InferenceService {name}: its status shows no latest revision in the traffic "
            f"split ({traffic!r}); is it in serverless mode with canaryTrafficPercent set?"
        )
    stable_name = (stable or {}).get("revisionName") or predictor.get("latestRolledoutRevision")
    if stable_name == canary["revisionName"]:
        stable_name = None
    return canary["revisionName"], stable_name


@dataclass(frozen=True)
class CanaryOutcome:
    """How a canary ended: ``promote`` or ``rollback``, and every decision on the way."""

    action: Action
    decisions: list[Decision]
    applied: dict[str, Any]


def _record(decision: Decision, record_path: Path | None, name: str) -> None:
    log.info("canary %s: %s (%s)", name, decision.action.upper(), "; ".join(decision.reasons))
    if record_path is not None:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        with record_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"inference_service": name, **decision.to_dict()}) + "\n")


def run_canary(
    new: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    *,
    prometheus: Prometheus,
    api: Any = None,
    policy: CanaryPolicy | None = None,
    queries: CanaryQueries | None = None,
    interval_seconds: float = 30.0,
    record_path: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_promote: Callable[[CanaryOutcome], None] | None = None,
) -> CanaryOutcome:
    """Judge the canary of ``new`` until promoted or rolled back, then apply the outcome.

    Args:
        new: The InferenceService applied with a canary percent (as built by
            :func:`kfloop.deploy.kserve.inference_service`).
        previous: The spec that served before (re-applied on rollback); ``None`` rolls back
            by sending 0% to the canary instead.
        prometheus: Where the metrics are.
        api: A ``kubernetes.client.ApiClient`` (default: in-cluster, else kubeconfig).
        policy: Bounds and timing (default :class:`CanaryPolicy`).
        queries: PromQL (default: Knative queue-proxy metrics).
        interval_seconds: Seconds between decisions.
        record_path: JSON-lines file every decision is appended to.
        on_promote: Called after a promotion was applied, e.g. to move the production
            pointer (``lambda o: registry.promote(store, root, model, version, uri)``), which
            ``deploy_model`` leaves in place while a canary runs.

    Returns:
        The outcome, every decision, and the object applied.

    Raises:
        CanaryError, PrometheusError, KubernetesError: naming what failed.
    """
    policy = policy or CanaryPolicy()
    queries = queries or CanaryQueries()
    if api is None:
        api = kube.default_api_client()
    name = new["metadata"]["name"]
    namespace = new["metadata"]["namespace"]
    ref = kserve.isvc_ref(name, namespace)
    started = clock()
    decisions: list[Decision] = []
    while True:
        live = kube.get(api, ref)
        if live is None:
            raise CanaryError(f"{ref} does not exist: nothing to judge")
        canary_rev, stable_rev = revisions(live)
        elapsed = clock() - started
        window = min(policy.window_seconds, max(elapsed, interval_seconds))
        canary = measure(prometheus, queries, namespace, canary_rev, window)
        stable = measure(prometheus, queries, namespace, stable_rev, window) if stable_rev else None
        decision = decide(canary, stable, policy, elapsed)
        decisions.append(decision)
        _record(decision, record_path, f"{namespace}/{name}")
        if decision.action == "wait":
            sleep(interval_seconds)
            continue
        if decision.action == "promote":
            target = kserve.with_canary_percent(new, 100)
        elif previous is not None:
            target = kserve.with_canary_percent(previous, None)
        else:
            target = kserve.with_canary_percent(new, 0)
        applied = kube.apply(api, target, kserve.PLURAL)
        log.info("canary %s: applied the %s", ref, decision.action)
        outcome = CanaryOutcome(decision.action, decisions, applied)
        if decision.action == "promote" and on_promote is not None:
            on_promote(outcome)
        return outcome
