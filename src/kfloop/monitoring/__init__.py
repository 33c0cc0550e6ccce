"""Alerting: kfloop's Prometheus rules (one source, the ``PrometheusRule`` under
``manifests/``) and a small PromQL query client.

:mod:`kfloop.monitoring.rules` loads, validates and renders the rules;
:mod:`kfloop.monitoring.query` queries a Prometheus server over its HTTP API. Both import in
either environment (PyYAML and the standard library only).
"""
