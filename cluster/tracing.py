"""The OpenTelemetry SDK for traces, set up from the usual ``OTEL_*`` environment variables.

The library itself only uses OpenTelemetry's API: an application that wants traces sets up an
SDK however it likes, and its nodes trace (see :mod:`trimicro.actors.tracing`). The
``trimicro`` command is such an application: :func:`configure` is what it runs before any
command, so ``trimicro run``, ``trimicro api`` and the client commands trace when the
environment asks for it, with the ``otel`` extra installed (``pip install 'trimicro[otel]'``).

When: tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, or an
OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``;
the exporter is then ``otlp``). With neither, nothing is set up and nothing is imported, so a
node costs what it costs without OpenTelemetry. (The specification's default exporter is
``otlp``; sending to ``localhost:4318`` unasked, and logging an error per batch where no
collector listens, would be a poor default for a command people run by hand.) Nothing either
when ``OTEL_SDK_DISABLED=true``, or when the process already has a tracer provider.

What: ``OTEL_TRACES_EXPORTER`` is a comma-separated list of ``otlp`` (OTLP over HTTP/protobuf,
the specification's default protocol; ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` or
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc`` takes the gRPC exporter, if installed),
``console`` (spans as JSON on standard output), ``none``, or the name of any exporter a
distribution registers in the ``opentelemetry_traces_exporter`` entry-point group (as
OpenTelemetry's own auto-configuration finds them). Each exporter gets a
``BatchSpanProcessor`` (``OTEL_BSP_*``). The SDK reads the rest itself: the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``, e.g. ``parentbased_traceidratio`` and
``0.01``), the OTLP endpoint, headers and timeouts, the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``). ``service.name`` defaults to what the command serves.

The provider is shut down (its spans flushed) when the process exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .plugins import PluginError

__all__ = ["configure", "exporter_names"]

log = logging.getLogger("trimicro.tracing")

#: OTLP endpoints whose presence alone turns tracing on.
ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for (empty: no tracing)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is None:
        return ["otlp"] if any(env.get(key) for key in ENDPOINTS) else []
    names = [n.strip().lower() for n in named.split(",") if n.strip()]
    return [] if "none" in names else names


def configure(service_name: str, env: Mapping[str, str] | None = None) -> Any:
    """Set up the SDK as the environment asks (see the module docstring); returns the
    ``TracerProvider`` set globally, or ``None`` when tracing stays off.

    :class:`~trimicro.cluster.plugins.PluginError` for an exporter nobody provides.
    """
    env = os.environ if env is None else env
    names = exporter_names(env)
    if not names:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_TRACES_EXPORTER or an OTLP endpoint asks for traces, but the OpenTelemetry SDK "
            "is not installed: pip install 'trimicro[otel]'"
        )
        return None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # the application set its own
    exporters = [_exporter(name, env) for name in names]
    attributes: dict[str, Any] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol == "grpc":
            name = "otlp_proto_grpc"
        elif protocol == "http/protobuf":
            name = "otlp_proto_http"
        else:
            raise PluginError(
                f"OTLP protocol {protocol!r} is not supported for traces: grpc or http/protobuf"
            )
    from importlib.metadata import entry_points

    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        hint = " (pip install 'trimicro[otel]')" if name.startswith("otlp") else ""
        raise PluginError(f"no OpenTelemetry trace exporter named {name!r} is installed{hint}")
    return next(iter(found)).load()()
