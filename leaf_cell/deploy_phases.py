"""Where a deploy's time goes: phase marks recorded on the node, as spans and as histograms.

Each deploy is one trace (a ``deploy`` span) whose children are its phases, created from the
phase marks so that the spans, the histogram samples and the node's ``last_deploy`` timings are
the same numbers.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import Histogram

__all__ = ["PHASES", "PhaseClock"]

PHASES = ("queued", "image_cache", "power_on", "pxe", "agent_lookup", "image_write", "reboot")
"""The phases of a deploy, in order (see the deploy flow in leaf_cell.deploy)."""


class PhaseClock:
    """Marks the end of each phase; the time since the previous mark is that phase's duration."""

    def __init__(self, node: str, deploy_id: str, histogram: Histogram, total: Histogram) -> None:
        self._histogram = histogram
        self._total = total
        self.start_time = datetime.now(UTC)
        self._start_ns = time.time_ns()
        self._last_ns = self._start_ns
        self._last_mono = time.monotonic()
        self.phases: list[tuple[str, float]] = []
        tracer = trace.get_tracer("rackcells.leaf")
        self._root = tracer.start_span(
            "deploy",
            attributes={"rackcells.node": node, "rackcells.deploy_id": deploy_id},
            start_time=self._start_ns,
        )
        self._tracer = tracer

    def mark(self, phase: str) -> float:
        """Ends ``phase`` now; returns its duration in seconds."""
        now_ns, now_mono = time.time_ns(), time.monotonic()
        seconds = now_mono - self._last_mono
        span = self._tracer.start_span(
            phase, context=trace.set_span_in_context(self._root), start_time=self._last_ns
        )
        span.end(end_time=now_ns)
        self._histogram.record(seconds, {"phase": phase})
        self.phases.append((phase, seconds))
        self._last_ns, self._last_mono = now_ns, now_mono
        return seconds

    def finish(self, result: str, error: str = "") -> dict[str, Any]:
        """Ends the trace; returns the timings as stored in the node's ``last_deploy``."""
        end = datetime.now(UTC)
        total = sum(seconds for _, seconds in self.phases)
        self._total.record(total, {"result": result})
        self._root.set_attribute("rackcells.result", result)
        if error:
            self._root.set_status(trace.Status(trace.StatusCode.ERROR, error))
        self._root.end()
        return {
            "start_time": self.start_time.isoformat().replace("+00:00", "Z"),
            "end_time": end.isoformat().replace("+00:00", "Z"),
            "result": result,
            "phases": [{"phase": p, "seconds": round(s, 4)} for p, s in self.phases],
        }
