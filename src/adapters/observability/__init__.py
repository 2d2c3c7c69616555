"""Observability adapters: Prometheus metrics, and decorators that measure and trace the agent and tool ports.

OpenTelemetry's SDK is imported only by ``chatcore.adapters.observability.otel``, which is imported only when an
OTLP endpoint is configured, so a deployment without tracing pays nothing for it.
"""
