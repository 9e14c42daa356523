"""Roots the sampler drops are made without the SDK's ``start_span``, and the outcome is the
SDK's: the same traces recorded (the sampler's decision on the same trace ids), the same
context carried by the dropped ones; other samplers keep going through the SDK."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind
from test_tracing import Echo, Front, Spans, two_nodes

from trimicro.actors import ask, start_node
from trimicro.actors.tracing.roots import DrawnIds, roots_of

#: Low 64 bits below and above the bound of a ratio of 0.5.
IN, OUT = (1 << 64) | 5, (3 << 64) | (1 << 63) | 7


class Ids(IdGenerator):
    """Trace ids from a list, in turn; span ids counting up."""

    def __init__(self, trace_ids: list[int]) -> None:
        self.trace_ids: Iterator[int] = iter(trace_ids)
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return next(self.trace_ids)

    def generate_span_id(self) -> int:
        self.span_id += 1
        return self.span_id


def tracer_of(spans: Spans) -> Any:
    return spans.provider.get_tracer("trimicro")


def test_only_samplers_whose_root_decision_is_the_trace_ids_get_cheap_roots() -> None:
    class Custom(TraceIdRatioBased):
        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            return super().should_sample(*args, **kwargs)

    for sampler, cheap in (
        (ParentBasedTraceIdRatio(0.01), True),
        (ParentBased(TraceIdRatioBased(0.5)), True),
        (ParentBased(ALWAYS_OFF), True),
        (ParentBased(ALWAYS_ON), False),  # nothing to save: every root is recorded
        (TraceIdRatioBased(0.01), False),  # not parent-based
        (ParentBased(Custom(0.5)), False),  # a decision of its own
    ):
        roots = roots_of(tracer_of(Spans(sampler)))
        assert (roots is not None) is cheap, sampler
    shared = Spans(ParentBasedTraceIdRatio(0.5))
    first, again = roots_of(tracer_of(shared)), roots_of(tracer_of(shared))
    assert first is not None and again is not None and first.ids is again.ids  # wrapped once
    assert isinstance(tracer_of(shared).id_generator, DrawnIds)


async def test_roots_record_what_the_sdks_sampler_records_with_the_ids_it_draws() -> None:
    """Ratio 0.5, trace ids chosen: the root whose id the sampler keeps is recorded with that
    id (the SDK made it); the other is dropped, its context carried on with its id."""
    spans = Spans(ParentBasedTraceIdRatio(0.5))
    spans.provider.id_generator = Ids([IN, OUT])
    async with start_node("n", tracing=spans.provider) as node:
        assert node.tracing is not None and node.tracing.roots is not None
        ref = await node.spawn(Echo)
        sampled = await ask(ref, {}, endpoint="Echo.headers")
        dropped = await ask(ref, {}, endpoint="Echo.headers")
    recorded = {(s.kind.name, s.context.trace_id) for s in spans.all if s.context is not None}
    assert recorded == {("CLIENT", IN), ("SERVER", IN)}
    assert sampled["traceparent"].startswith(f"00-{IN:032x}-")
    assert re.fullmatch(rf"00-{OUT:032x}-[0-9a-f]{{16}}-00", dropped["traceparent"])


async def test_a_dropped_root_does_not_go_through_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """At ratio 0 no root reaches ``start_span`` (each would cost ~40,000 instructions), the
    handler still sees a valid context, and the callee passes it on."""
    spans = Spans(ParentBasedTraceIdRatio(0.0))
    tracer = tracer_of(spans)
    started: list[str] = []
    real = tracer.start_span

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(tracer, "start_span", counted)
    seen: list[Any] = []
    async with two_nodes(tracing=spans.provider) as (a, b):
        await b.spawn(Echo, seen, name="echo")
        front = await a.spawn(Front, a.remote_ref("b", "echo"), name="front")
        for _ in range(3):
            assert await ask(front, {}, endpoint="Front.relay") == "hi"
    assert started == [] and spans.all == ()
    assert len(seen) == 3 and all(c.is_valid and not c.trace_flags.sampled for c in seen)
    assert len({c.trace_id for c in seen}) == 3  # a trace per root


def test_drawn_ids_are_handed_out_once_then_the_generators_own() -> None:
    ids = DrawnIds(RandomIdGenerator())
    ids.pending = 42
    assert ids.generate_trace_id() == 42
    assert ids.generate_trace_id() not in (0, 42)
    assert ids.is_trace_id_random() and ids.generate_span_id()


def test_a_root_the_sdk_fails_to_start_leaves_no_drawn_id_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A span processor that raises in the SDK's ``start_span`` must not leave the drawn trace
    id pending for the next root (which would then share its trace id)."""
    spans = Spans(ParentBasedTraceIdRatio(1.0))
    tracer = tracer_of(spans)
    roots = roots_of(tracer)
    assert roots is not None

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a span processor failed")

    monkeypatch.setattr(tracer, "start_span", failing)
    with pytest.raises(RuntimeError):
        roots.start("ask", None, SpanKind.CLIENT)
    assert roots.ids.pending == 0
