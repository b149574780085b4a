"""A deploy records where its time went: the node's last_deploy and OpenTelemetry spans."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from deploykit import PHASES
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rackcells.v1 import node_pb2


def test_deploy_with_fake_bmc_reaches_active_and_records_seven_phases_in_order(
    cell, rack, image, fake
) -> None:  # type: ignore[no-untyped-def]
    [machine] = rack(cell, 1)
    op = cell.wait(cell.deploy("d0", image.url, image.checksum))
    assert not op.HasField("error"), op.error
    node = cell.get("d0")
    assert node.provision_state == node_pb2.PROVISION_STATE_ACTIVE
    result = machine.join()
    assert result is not None and result.success
    assert machine.disk.checksum() == image.checksum
    phases = [(p.phase, p.duration.ToTimedelta().total_seconds()) for p in node.last_deploy.phases]
    assert [p for p, _ in phases] == list(PHASES)
    assert all(seconds >= 0 for _, seconds in phases)
    assert node.last_deploy.end_time.ToDatetime() >= node.last_deploy.start_time.ToDatetime()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span finished during the test, from the process-wide tracer provider.

    The leaf installs an SDK TracerProvider as the global one when it first starts (and the
    global provider can be set only once per process), so the exporter is attached to whatever
    SDK provider is global, installing one if none is yet.
    """
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.skip(f"the global tracer provider is a {type(provider).__name__}, not the SDK's")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the processor stays registered but exports nothing any more


def test_deploy_produces_one_deploy_span_with_seven_phase_children_in_one_trace(
    cell, rack, image, spans
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1)
    op = cell.wait(cell.deploy("d0", image.url, image.checksum))
    assert not op.HasField("error"), op.error
    node = cell.get("d0")

    finished = spans.get_finished_spans()
    [root] = [
        s
        for s in finished
        if s.name == "deploy" and s.attributes.get("rackcells.node") == "cells/rack-1/nodes/d0"
    ]
    children = sorted(
        (s for s in finished if s.parent is not None and s.parent.span_id == root.context.span_id),
        key=lambda s: s.start_time,
    )
    assert [s.name for s in children] == list(PHASES)
    assert {s.context.trace_id for s in children} == {root.context.trace_id}
    assert root.attributes.get("rackcells.result") == "active"
    assert root.status.status_code is not StatusCode.ERROR
    assert all(s.end_time >= s.start_time for s in children)
    # Consecutive phases: each starts where the previous one ended.
    for before, after in itertools.pairwise(children):
        assert after.start_time == before.end_time
    # The spans and the node's timings are the same measurements.
    stored = [p.phase for p in node.last_deploy.phases]
    assert stored == [s.name for s in children]


def test_failed_deploy_span_is_marked_as_error_with_the_phases_it_reached(
    cell, rack, image, spans
) -> None:  # type: ignore[no-untyped-def]
    rack(cell, 1, boot=False)
    missing = "sha256:" + "1" * 64
    op = cell.wait(cell.deploy("d0", image.source.url + "/missing.img", missing))
    assert op.HasField("error")
    [root] = [s for s in spans.get_finished_spans() if s.name == "deploy"]
    assert root.status.status_code is StatusCode.ERROR
    assert "image_cache" in (root.status.description or "")
    assert root.attributes.get("rackcells.result") == "failed"
    children = [
        s.name
        for s in spans.get_finished_spans()
        if s.parent is not None and s.parent.span_id == root.context.span_id
    ]
    assert children == ["queued"]
