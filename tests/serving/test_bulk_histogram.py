"""The logger's own collectors (the prediction histogram fed arrays, the lock-free event
counter) expose what prometheus_client's Histogram and Counter do."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from kfloop.serving.logger import BulkHistogram, TallyCounter

BOUNDS = [0.1, 0.25, 0.5, 0.75, 0.9]


def _exposition(registry: CollectorRegistry) -> tuple[list[str], list[float]]:
    """The series lines but the sums, and the sums (numpy adds in another order)."""
    lines = generate_latest(registry).decode().splitlines()
    series = sorted(line for line in lines if not line.startswith("#") and "_created" not in line)
    sums = [float(line.split()[-1]) for line in series if line.startswith("p_sum")]
    return [line for line in series if not line.startswith("p_sum")], sums


def test_array_observations_expose_the_same_series_as_one_by_one() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [rng.random(5000), np.array(BOUNDS), np.array([-1.0, 2.0, math.nan, math.inf, -math.inf])]
    )
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("p", "predictions", ("model", "version"), BOUNDS, ours)
    reference = Histogram("p", "predictions", ("model", "version"), buckets=BOUNDS, registry=theirs)
    for chunk in np.array_split(values, 7):
        bulk.observe(("m", "v1"), chunk)
    for v in values.tolist():
        if math.isfinite(v):  # the logger observes finite predictions only
            reference.labels("m", "v1").observe(v)
    bulk.touch(("m", "v2"))
    reference.labels("m", "v2")
    (series, sums), (expected, expected_sums) = _exposition(ours), _exposition(theirs)
    assert series == expected
    assert sums == pytest.approx(expected_sums, rel=1e-12)
    text = "\n".join(series)
    assert 'p_count{model="m",version="v1"} 5007.0' in text  # 5,000 + 5 bounds + 2 finite
    assert 'p_bucket{le="0.5",model="m",version="v1"}' in text


def test_tally_counter_exposes_the_same_series_as_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ("model", "version", "type")
    tally = TallyCounter("events", "events taken", labels, ours)
    reference = Counter("events", "events taken", labels, registry=theirs)
    steps = [("v1", "request", 1), ("v1", "response", 3), ("v1", "request", 1), ("v2", "x", 0)]
    for version, kind, n in steps:
        tally.labels(model="m", version=version, type=kind).inc(n)
        reference.labels(model="m", version=version, type=kind).inc(n)

    def exposition(registry: CollectorRegistry) -> tuple[list[str], list[str]]:
        lines = generate_latest(registry).decode().splitlines()
        created = sorted(line.rsplit(" ", 1)[0] for line in lines if "_created{" in line)
        return sorted(line for line in lines if "_created" not in line), created

    # the same lines, and a created time for the same series (times differ by microseconds)
    assert exposition(ours) == exposition(theirs)
    assert 'events_total{model="m",type="request",version="v1"} 2.0' in exposition(ours)[0]
