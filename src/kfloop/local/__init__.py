"""The embedded local stack: SeaweedFS (S3) now; Prometheus and Alertmanager join it later.

Every service binds to 127.0.0.1 only, keeps its state under the stack folder
(``.kfloop/`` by default, ``KFLOOP_HOME`` to change it) and is stopped gracefully, with
escalation to SIGKILL when it does not exit in time.
"""
