"""A run's report as Prometheus metrics, pushed to a Pushgateway (``embedrail reindex --pushgateway URL``):
batch jobs cannot be scraped, so the CLI pushes its counters when a run ends (Airflow deployments have
Airflow's own StatsD task metrics beside them, and a task of the DAG can call ``push_report`` too).

Metrics (labels ``target`` where per target): ``embedrail_run_documents``, ``_chunks``, ``_embedded``,
``_reused``, ``_from_index``, ``_unchanged``, ``_seconds``, ``_embed_seconds``, ``_ok``, ``_upserted``, ``_deleted``,
``_retagged``, ``_failed``, ``_drift_found``, ``_refused_deletes``, and ``embedrail_run_last_success_unixtime``
(set when the run was ok: alert on its age). ``prometheus-client`` comes with the ``serve`` extra.
"""

from __future__ import annotations

import time
from typing import Any

from embedrail.errors import ConfigError
from embedrail.integration.report import Report

__all__ = ["push_report", "report_registry"]


def report_registry(report: Report) -> Any:
    """A ``CollectorRegistry`` holding the report's figures as gauges."""
    try:
        from prometheus_client import CollectorRegistry, Gauge
    except ImportError:
        raise ConfigError("pushing run metrics needs prometheus-client: pip install 'embedrail[serve]'") from None
    reg = CollectorRegistry()
    gauges: dict[str, Any] = {}

    def gauge(name: str, help_: str, value: float, labels: dict[str, str] | None = None) -> None:
        g = gauges.get(name)
        if g is None:
            g = gauges[name] = Gauge(f"embedrail_run_{name}", help_, list(labels or {}), registry=reg)
        (g.labels(**labels) if labels else g).set(value)

    for name, help_ in (("documents", "source documents seen"), ("chunks", "chunks the documents make"),
                        ("embedded", "chunks embedded"), ("reused", "chunks reusing a vector of the run"),
                        ("from_index", "chunks taking a stored vector of the same text"),
                        ("unchanged", "chunks every target held"), ("seconds", "run seconds"),
                        ("embed_seconds", "seconds in the model")):  # fmt: skip
        gauge(name, help_, float(getattr(report, name)))
    gauge("ok", "1 if every target is in step", 1.0 if report.ok else 0.0)
    for t in report.upserted:
        labels = {"target": t}
        gauge("upserted", "records written", report.upserted.get(t, 0), labels)
        gauge("deleted", "records deleted", report.deleted.get(t, 0), labels)
        gauge("retagged", "records whose metadata was updated", report.retagged.get(t, 0), labels)
        gauge("failed", "records not written", report.failed.get(t, 0), labels)
        gauge("drift_found", "1 if the drift probe found drift", 1.0 if report.drift.get(t, {}).get("found") else 0.0, labels)
        gauge("refused_deletes", "documents whose deletes the guard refused", report.refused_deletes.get(t, {}).get("documents", 0),
              labels)  # fmt: skip
    if report.ok and not report.dry_run:
        gauge("last_success_unixtime", "when the last run in step ended", time.time())
    return reg


def push_report(report: Report, gateway: str, job: str = "embedrail_reindex", grouping: dict[str, str] | None = None) -> None:
    """Push the report's metrics to the Pushgateway at ``gateway`` (``http://host:9091``), replacing the
    job's previous push (``grouping``: extra grouping labels, e.g. the DAG id)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=job, registry=report_registry(report), grouping_key=grouping or {})
