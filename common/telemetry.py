"""OpenTelemetry set-up, configured by the standard ``OTEL_*`` environment variables.

``OTEL_METRICS_EXPORTER`` / ``OTEL_TRACES_EXPORTER``: ``none`` (default), ``console``, or
``otlp`` (needs the ``opentelemetry-exporter-otlp`` package). ``OTEL_SERVICE_NAME`` names the
process; ``OTEL_METRIC_EXPORT_INTERVAL`` (ms) paces metric export. Code that records metrics
takes a ``Meter`` so tests can hand it one backed by an in-memory reader.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

__all__ = ["get_meter", "setup_telemetry"]

log = logging.getLogger(__name__)
_configured = False


def _metric_exporter(kind: str) -> MetricExporter | None:
    if kind == "console":
        return ConsoleMetricExporter()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter,
            )
        except ImportError:
            log.warning("OTEL_METRICS_EXPORTER=otlp needs opentelemetry-exporter-otlp; metrics off")
            return None
        exporter: MetricExporter = OTLPMetricExporter()
        return exporter
    return None


def _span_exporter(kind: str) -> SpanExporter | None:
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp; traces off")
            return None
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    return None


def setup_telemetry(default_service_name: str) -> None:
    """Installs the process-wide meter and tracer providers once, from the environment."""
    global _configured  # noqa: PLW0603 - process-wide providers are set once
    if _configured:
        return
    _configured = True
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", default_service_name)}
    )
    metric_exporter = _metric_exporter(os.environ.get("OTEL_METRICS_EXPORTER", "none"))
    readers = [PeriodicExportingMetricReader(metric_exporter)] if metric_exporter else []
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    tracer_provider = TracerProvider(resource=resource)
    span_exporter = _span_exporter(os.environ.get("OTEL_TRACES_EXPORTER", "none"))
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(tracer_provider)


def get_meter(name: str) -> Meter:
    return metrics.get_meter(name)
