"""``rackcells node watch``: follow node events live, as progress bars or as one line per event.

The events come from ``NodeService.WatchNodes``, a server stream. A stream outlives what a
single call should be trusted with: a leaf restarts, a top cell is redeployed. Every event
carries its cell's revision, so a lost stream is reopened after the last revision seen and
nothing is missed or shown twice. Each stream is read on its own thread; the main thread only
takes events from a queue, which keeps Ctrl-C, ``--timeout`` and the redraw rate in its hands
whatever the network does.

``--until-stable`` answers "is it done yet?" for scripts and for people. Whether a node is
done is read with ``GetNode`` (first, when an event says the node came to rest, and now and
then while it is busy) rather than inferred from events alone: the first event after a watch
starts may already be the last one, and an event can be missed between the first read and the
stream's start.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TextIO

import grpc

from rackcells.cli.client import Session
from rackcells.cli.errors import EXIT_INTERRUPTED, CliError, UsageError, describe_rpc_error
from rackcells.cli.names import ALL_CELLS_PARENT, NodeRef, short_node_name
from rackcells.cli.node_views import FAILED_STATES, provision_label
from rackcells.cli.output import NONE, message_to_dict, warn
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = [
    "EVENT_HEADERS",
    "RECHECK_INTERVAL",
    "RECONNECT_FIRST",
    "RECONNECT_MAX",
    "STABLE_STATES",
    "EventPump",
    "NodeProgress",
    "board_lines",
    "cmd_watch",
    "event_line",
    "event_row",
    "progress_bar",
    "progress_line",
    "register",
]

# Where a node rests when its last action did what was asked.
STABLE_STATES = frozenset(
    {
        node_pb2.PROVISION_STATE_ENROLL,
        node_pb2.PROVISION_STATE_MANAGEABLE,
        node_pb2.PROVISION_STATE_AVAILABLE,
        node_pb2.PROVISION_STATE_ACTIVE,
    }
)
_RESTING = STABLE_STATES | FAILED_STATES

EVENT_HEADERS = ("REVISION", "TIME", "NODE", "KIND", "DETAIL", "STATE", "PHASE", "PERCENT")
# Minimum widths; a longer value pushes the rest of its line to the right instead of being cut,
# because in a log every character of a detail may matter (-o json is there for parsing).
_EVENT_WIDTHS = (8, 20, 16, 12, 36, 14, 12, 0)

# Delay before the first reconnect, doubled on each further failure up to RECONNECT_MAX.
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 10.0
# A first stream that fails this soon, before delivering anything, most likely never reached a
# server (a wrong endpoint, a stopped leaf): retrying forever would only hide that.
_CONNECT_GRACE = 3.0
# How often --until-stable re-reads nodes that are still busy, in case an event was missed.
RECHECK_INTERVAL = 10.0
# Redraws of the live board are at most this often; events may arrive much faster.
_REDRAW_INTERVAL = 0.1
# The longest the main thread sleeps before looking at deadlines again.
_IDLE_TICK = 0.5

_BAR_MIN = 10
_BAR_MAX = 40


# -- node progress ----------------------------------------------------------------------------


@dataclass
class NodeProgress:
    """What the live board knows about one node: state, deploy phase, progress, last error.

    ``resting`` is only ever set from a ``GetNode`` answer, which knows the target state that
    events do not carry; it is what ``--until-stable`` waits for.
    """

    state: int = node_pb2.PROVISION_STATE_UNSPECIFIED
    phase: str = ""
    percent: int = 0
    error: str = ""
    resting: bool = False
    # Order of the last change, so an overfull board keeps the nodes that move.
    seq: int = 0

    @property
    def busy(self) -> bool:
        """Whether the node is in the middle of an action (verifying, deploying, ...)."""
        return self.state != node_pb2.PROVISION_STATE_UNSPECIFIED and self.state not in _RESTING

    def _enter(self, state: int) -> None:
        if state not in _RESTING and not self.busy:
            # A new action starts: the phase and percent of the previous one no longer apply.
            self.phase, self.percent, self.error = "", 0, ""
        self.state = state
        if state not in _RESTING:
            self.resting = False

    def apply_event(self, event: node_service_pb2.NodeEvent, seq: int) -> None:
        """Takes the state, and the phase and percent when the event carries them."""
        if event.provision_state:
            self._enter(event.provision_state)
        if event.phase:
            self.phase, self.percent = event.phase, event.percent
        elif event.percent:
            self.percent = event.percent
        if event.kind.endswith("_failed") and event.detail:
            self.error = event.detail
        self.seq = seq

    def apply_node(self, node: node_pb2.Node, seq: int) -> None:
        """Takes the state read with GetNode; a node with a target state is not at rest."""
        self._enter(node.provision_state)
        self.resting = (
            node.provision_state in _RESTING
            and node.target_provision_state == node_pb2.PROVISION_STATE_UNSPECIFIED
        )
        if node.provision_state in FAILED_STATES and node.last_error:
            self.error = node.last_error
        self.seq = seq


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def progress_bar(percent: int, width: int) -> str:
    """``[########------------]``: ``width`` cells between the brackets, full only at 100%."""
    done = max(0, min(percent, 100)) * width // 100
    return "[" + "#" * done + "-" * (width - done) + "]"


def progress_line(
    name: str,
    progress: NodeProgress,
    width: int,
    *,
    name_width: int = 0,
    state_width: int = 0,
    phase_width: int = 0,
) -> str:
    """One board line, at most ``width`` characters.

    A busy node: ``r1-n0007  deploying  image_write  [########------------]  45%``, the bar
    as wide as the line allows (10 to 40 cells; dropped on very narrow terminals). A node at
    rest: ``r1-n0007  active``, or ``r1-n0009  deploy-failed: <error>``. The column widths
    line the board up; lines never wrap, because a wrapped line would break the redraw.
    """
    head = name.ljust(name_width)
    label = provision_label(progress.state)
    if not progress.busy:
        text = f"{head}  {label}"
        if progress.error and progress.state in FAILED_STATES:
            text += ": " + " ".join(progress.error.split())
        return _fit(text, width)
    percent = max(0, min(progress.percent, 100))
    fixed = f"{head}  {label.ljust(state_width)}  {(progress.phase or NONE).ljust(phase_width)}  "
    tail = f" {percent:>3}%"
    bar = min(_BAR_MAX, width - len(fixed) - len(tail) - 2)
    if bar >= _BAR_MIN:
        return fixed + progress_bar(percent, bar) + tail
    return _fit(f"{fixed}{percent}%", width)


def board_lines(
    rows: Sequence[tuple[str, NodeProgress]],
    footer: str,
    columns: int,
    lines: int,
    *,
    state_width: int = 0,
    phase_width: int = 0,
) -> list[str]:
    """The whole live board for a terminal of ``columns`` x ``lines``.

    The board must fit on the screen, or moving the cursor back to its top fails. When there
    are more nodes than lines, busy and recently changed nodes are kept (in their usual order)
    and the rest are counted by state on one summary line. ``state_width`` and
    ``phase_width`` are minimum column widths, so that bars need not jump from one redraw to
    the next.
    """
    width = max(columns - 1, 20)
    room = max(lines - 1 - (1 if footer else 0), 2)
    shown = list(rows)
    hidden: list[NodeProgress] = []
    if len(shown) > room:
        ranked = sorted(
            range(len(shown)), key=lambda i: (shown[i][1].busy, shown[i][1].seq), reverse=True
        )
        keep = sorted(ranked[: room - 1])
        hidden = [shown[i][1] for i in ranked[room - 1 :]]
        shown = [shown[i] for i in keep]
    busy = [p for _, p in shown if p.busy]
    name_width = max((len(name) for name, _ in shown), default=0)
    state_width = max([state_width, *(len(provision_label(p.state)) for p in busy)])
    phase_width = max([phase_width, *(len(p.phase or NONE) for p in busy)])
    out = [
        progress_line(
            name,
            progress,
            width,
            name_width=name_width,
            state_width=state_width,
            phase_width=phase_width,
        )
        for name, progress in shown
    ]
    if hidden:
        counts = Counter(provision_label(p.state) for p in hidden)
        text = ", ".join(f"{n} {label}" for label, n in counts.most_common())
        out.append(_fit(f"… and {len(hidden)} more: {text}", width))
    if footer:
        out.append(_fit(footer, width))
    return out


# -- one line per event -----------------------------------------------------------------------


def event_row(event: node_service_pb2.NodeEvent, node: str) -> list[str]:
    """The cells of one event line, in the order of :data:`EVENT_HEADERS`."""
    when = NONE
    if event.time.seconds or event.time.nanos:
        when = f"{event.time.ToDatetime(tzinfo=UTC):%Y-%m-%dT%H:%M:%S}Z"
    has_progress = bool(event.phase or event.percent)
    return [
        str(event.revision),
        when,
        node,
        event.kind or NONE,
        " ".join(event.detail.split()) or NONE,
        provision_label(event.provision_state),
        event.phase or NONE,
        f"{event.percent}%" if has_progress else NONE,
    ]


def event_line(cells: Sequence[str], widths: Sequence[int] = _EVENT_WIDTHS) -> str:
    """Cells padded to their minimum widths, two spaces apart, no trailing blanks."""
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


# -- the streams ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Notice:
    text: str


@dataclass(frozen=True)
class _Failure:
    error: grpc.RpcError


_Item = node_service_pb2.NodeEvent | _Notice | _Failure


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    result = code() if callable(code) else None
    return result if isinstance(result, grpc.StatusCode) else None


def _cell_of(node: str) -> str:
    parts = node.split("/")
    return parts[1] if len(parts) > 1 else node


class EventPump:
    """One WatchNodes stream, kept open: reopened after UNAVAILABLE or an end, never duplicated.

    Revisions increase per cell, so the pump remembers the last one of each cell it saw. It
    resumes after the lowest of them (with one cell: exactly the last event seen) and drops
    what it has already delivered, so a stream spanning cells neither skips nor repeats.
    Anything other than UNAVAILABLE ends the pump with that error, as does a first stream that
    fails at once without delivering anything.
    """

    def __init__(
        self,
        nodes: Any,
        parent: str,
        names: Sequence[str],
        since: int,
        sink: Callable[[_Item], None],
        *,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nodes = nodes
        self._parent = parent
        self._names = list(names)
        self._since = since
        self._sink = sink
        self._endpoint = endpoint
        self._clock = clock
        self._last: dict[str, int] = {}
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None

    def resume_revision(self) -> int:
        """The since_revision of the next stream."""
        return min(self._last.values()) if self._last else self._since

    def _fresh(self, event: node_service_pb2.NodeEvent) -> bool:
        cell = _cell_of(event.node)
        last = self._last.get(cell)
        if last is not None and event.revision <= last:
            return False
        self._last[cell] = event.revision
        return True

    def run(self) -> None:
        """Streams into the sink until stopped or failed; meant for a thread of its own."""
        started = self._clock()
        failures = 0
        first = True
        while not self._stopped.is_set():
            request = node_service_pb2.WatchNodesRequest(
                parent=self._parent, names=self._names, since_revision=self.resume_revision()
            )
            received = False
            reason = "the server closed the stream"
            opened = self._clock()
            try:
                with self._lock:
                    if self._stopped.is_set():
                        return
                    self._call = self._nodes.WatchNodes(request)
                for event in self._call:
                    received = True
                    failures = 0
                    if self._fresh(event):
                        self._sink(event)
            except grpc.RpcError as err:
                if self._stopped.is_set():
                    return
                early = first and not self._last and self._clock() - started < _CONNECT_GRACE
                if _code(err) != grpc.StatusCode.UNAVAILABLE or (early and not received):
                    self._sink(_Failure(err))
                    return
                reason = describe_rpc_error(err, self._endpoint)
            first = False
            if self._stopped.is_set():
                return
            if self._clock() - opened > RECONNECT_MAX:
                failures = 0  # the stream worked for a while: start the backoff afresh
            delay = min(RECONNECT_FIRST * 2**failures, RECONNECT_MAX)
            failures += 1
            where = self.resume_revision()
            after = f"after revision {where}" if where > 0 else "from now on"
            self._sink(
                _Notice(
                    f"watch of {self._parent} interrupted ({reason}); "
                    f"reconnecting in {delay:g}s, {after}"
                )
            )
            if self._stopped.wait(delay):
                return

    def stop(self) -> None:
        """Ends the pump and cancels its stream; safe from any thread."""
        with self._lock:
            self._stopped.set()
            call = self._call
        cancel = getattr(call, "cancel", None)
        if callable(cancel):
            cancel()


# -- views ------------------------------------------------------------------------------------


class _EventLog:
    """One line per event on stdout: aligned text, or one JSON object per line."""

    def __init__(self, as_json: bool, node_width: int, stream: TextIO | None = None) -> None:
        self._json = as_json
        self._out = stream or sys.stdout
        widths = list(_EVENT_WIDTHS)
        widths[2] = max(widths[2], node_width)
        self._widths = tuple(widths)

    def start(self) -> None:
        if not self._json:
            self._write(event_line(EVENT_HEADERS, self._widths))

    def _write(self, line: str) -> None:
        # Flushed line by line: `node watch | grep` should see each event when it happens.
        self._out.write(line + "\n")
        self._out.flush()

    def event(self, event: node_service_pb2.NodeEvent, node: str) -> None:
        if self._json:
            self._write(json.dumps(message_to_dict(event), ensure_ascii=False))
        else:
            self._write(event_line(event_row(event, node), self._widths))

    def notice(self, text: str) -> None:
        warn(text)

    def changed(self) -> None:
        pass

    def idle_tick(self) -> float:
        return _IDLE_TICK

    def refresh(self, *, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class _Board:
    """The live board: one line per node, redrawn in place with ANSI cursor movement."""

    def __init__(
        self,
        rows: Callable[[], list[tuple[str, NodeProgress]]],
        idle_text: str,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rows = rows
        self._idle_text = idle_text
        self._out = stream or sys.stdout
        self._clock = clock
        self._drawn = 0
        self._dirty = True
        self._last_draw = float("-inf")
        self._notice = ""
        # The widest state and phase drawn so far: columns grow, but never shrink back.
        self._state_width = 0
        self._phase_width = 0

    def start(self) -> None:
        self._out.write("\x1b[?25l")  # hide the cursor while redrawing
        self.refresh(force=True)

    def event(self, event: node_service_pb2.NodeEvent, node: str) -> None:
        self._notice = ""
        self._dirty = True

    def notice(self, text: str) -> None:
        self._notice = text
        self._dirty = True

    def changed(self) -> None:
        self._dirty = True

    def idle_tick(self) -> float:
        return _REDRAW_INTERVAL if self._dirty else _IDLE_TICK

    def refresh(self, *, force: bool = False) -> None:
        now = self._clock()
        if not self._dirty or (not force and now - self._last_draw < _REDRAW_INTERVAL):
            return
        rows = self._rows()
        footer = self._notice or ("" if rows else self._idle_text)
        for _, progress in rows:
            if progress.busy:
                self._state_width = max(self._state_width, len(provision_label(progress.state)))
                self._phase_width = max(self._phase_width, len(progress.phase or NONE))
        size = shutil.get_terminal_size()
        lines = board_lines(
            rows,
            footer,
            size.columns,
            size.lines,
            state_width=self._state_width,
            phase_width=self._phase_width,
        )
        parts = []
        if self._drawn:
            parts.append(f"\r\x1b[{self._drawn}A")
        parts.extend(f"{line}\x1b[K\n" for line in lines)
        parts.append("\x1b[J")  # the board may have shrunk
        self._out.write("".join(parts))
        self._out.flush()
        self._drawn = len(lines)
        self._dirty = False
        self._last_draw = now

    def close(self) -> None:
        self.refresh(force=True)
        self._out.write("\x1b[?25h")
        self._out.flush()


_View = _EventLog | _Board


# -- the command ------------------------------------------------------------------------------


class _Watch:
    def __init__(
        self,
        session: Session,
        refs: Sequence[NodeRef],
        *,
        since: int,
        until_stable: bool,
        limit: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._named = [str(r) for r in refs]
        self._named_set = frozenset(self._named)
        self._until_stable = until_stable
        self._limit = limit
        self._clock = clock
        self._deadline = None if limit is None else clock() + limit
        groups: dict[str, list[str]] = {}
        for ref in refs:
            groups.setdefault(ref.parent, []).append(str(ref))
        if not groups:
            groups[session.list_parent()] = []
        self._with_cell = len(groups) > 1 or ALL_CELLS_PARENT in groups
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._pumps = [
            EventPump(
                session.nodes,
                parent,
                names,
                since,
                self._queue.put,
                endpoint=session.endpoint,
                clock=clock,
            )
            for parent, names in groups.items()
        ]
        self._progress: dict[str, NodeProgress] = {name: NodeProgress() for name in self._named}
        self._seq = 0
        self._view: _View
        if session.json or not session.live:
            width = max((len(self._short(n)) for n in self._named), default=0)
            self._view = _EventLog(session.json, width)
        else:
            self._view = _Board(self._rows, f"watching {', '.join(groups)} for node events …")

    def _short(self, name: str) -> str:
        return short_node_name(name, with_cell=self._with_cell)

    def _rows(self) -> list[tuple[str, NodeProgress]]:
        return [(self._short(name), p) for name, p in self._progress.items()]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._clock()

    def _check(self, name: str, *, strict: bool) -> None:
        """Reads one node; later reads shrug off an endpoint that is briefly away."""
        remaining = self._remaining()
        timeout = self._session.timeout
        if remaining is not None:
            timeout = max(min(timeout, remaining), 0.1)
        try:
            node = self._session.nodes.GetNode(
                node_service_pb2.GetNodeRequest(name=name), timeout=timeout
            )
        except grpc.RpcError as err:
            transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if strict or _code(err) not in transient:
                raise
            return
        self._progress[name].apply_node(node, self._next_seq())
        self._view.changed()

    def _on_event(self, event: node_service_pb2.NodeEvent) -> None:
        progress = self._progress.setdefault(event.node, NodeProgress())
        progress.apply_event(event, self._next_seq())
        self._view.event(event, self._short(event.node))
        if self._until_stable and event.node in self._named_set and not progress.busy:
            self._check(event.node, strict=False)

    def _settled(self) -> bool:
        return all(self._progress[n].resting for n in self._named)

    def _outcome(self) -> int:
        failed = [n for n in self._named if self._progress[n].state in FAILED_STATES]
        if not failed:
            return 0
        parts = []
        for name in failed:
            progress = self._progress[name]
            text = f"{self._short(name)} ({provision_label(progress.state)}"
            if progress.error:
                text += ": " + " ".join(progress.error.split())
            parts.append(text + ")")
        raise CliError(f"{len(failed)} of {len(self._named)} node(s) failed: " + ", ".join(parts))

    def _gave_up(self) -> CliError:
        text = f"gave up watching after {self._limit:g}s"
        if self._until_stable:
            waiting = [
                f"{self._short(n)} ({provision_label(self._progress[n].state)})"
                for n in self._named
                if not self._progress[n].resting
            ]
            text += "; still busy: " + ", ".join(waiting)
        return CliError(text)

    def run(self) -> int:
        threads: list[threading.Thread] = []
        try:
            # Reading the named nodes first also rejects a misspelt name before any stream.
            for name in self._named:
                self._check(name, strict=True)
            if self._until_stable and self._settled():
                return self._outcome()
            self._view.start()
            for pump in self._pumps:
                thread = threading.Thread(target=pump.run, name="node-watch", daemon=True)
                thread.start()
                threads.append(thread)
            next_check = self._clock() + RECHECK_INTERVAL
            while True:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    raise self._gave_up()
                wait = self._view.idle_tick()
                if remaining is not None:
                    wait = min(wait, remaining)
                try:
                    item = self._queue.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    item = None
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, _Notice):
                    self._view.notice(item.text)
                elif item is not None:
                    self._on_event(item)
                if self._until_stable:
                    if self._clock() >= next_check:
                        for name in self._named:
                            if not self._progress[name].resting:
                                self._check(name, strict=False)
                        next_check = self._clock() + RECHECK_INTERVAL
                    if self._settled():
                        return self._outcome()
                self._view.refresh()
        except KeyboardInterrupt:
            # Ctrl-C is how a watch normally ends: no message, just the conventional status.
            return EXIT_INTERRUPTED
        finally:
            for pump in self._pumps:
                pump.stop()
            for thread in threads:
                thread.join(timeout=1.0)
            self._view.close()


def cmd_watch(session: Session, args: argparse.Namespace) -> int:
    """Follows node events until Ctrl-C, ``--timeout``, or (``--until-stable``) the end."""
    refs: list[NodeRef] = []
    for text in args.names:
        ref = session.node(text)
        if ref not in refs:
            refs.append(ref)
    if args.until_stable and not refs:
        raise UsageError("--until-stable needs the nodes to wait for: give at least one NAME")
    watch = _Watch(
        session,
        refs,
        since=args.since,
        until_stable=args.until_stable,
        # The global --timeout: for a watch, the time to watch for; otherwise unlimited.
        limit=getattr(args, "timeout", None),
    )
    return watch.run()


def _revision(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
    if value < -1:
        raise argparse.ArgumentTypeError("must be -1 (new events), 0 (kept events) or a revision")
    return value


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds ``node watch``."""
    watch = commands.add_parser(
        "watch",
        parents=parents,
        help="follow node events live",
        description="Follow node events: state changes, deploy phases and progress, power. On a "
        "terminal, one progress bar per node, redrawn in place; otherwise (or with -o json) one "
        "line (or JSON object) per event. A lost stream is reopened after the last revision "
        "seen. --timeout S ends the watch after S seconds with status 1; without it the watch "
        "runs until Ctrl-C (status 130).",
    )
    watch.add_argument(
        "names",
        metavar="NAME",
        nargs="*",
        help="only these nodes (cells/CELL/nodes/NODE, or node ids with --cell); default: all "
        "nodes of --cell, or of every cell the endpoint serves",
    )
    watch.add_argument(
        "--since",
        metavar="REVISION",
        type=_revision,
        default=-1,
        help="start after this revision; 0: every event still kept; -1: new events only (default)",
    )
    watch.add_argument(
        "--until-stable",
        action="store_true",
        help="exit once every NAME rests: 0 if all are enroll, manageable, available or "
        "active; 1 if any ended in deploy-failed, clean-failed or error",
    )
    watch.set_defaults(handler=cmd_watch)
