"""Long-running operations (AIP-151) of one leaf: stored rows plus in-process wake-ups.

Operations live in the leaf that runs them (``cells/{cell}/operations/{id}``), so they survive
the top cell and are routed by their name. Rows hold progress and outcome; the node itself is
the operation's response and is read when the operation is read, so it is never stale.
``WaitOperation`` is served from an in-process event per running operation instead of polling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from google.longrunning import operations_pb2
from google.rpc import status_pb2
from sqlalchemy import Engine, Table, and_, delete, insert, or_, select, update

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.listing import page_size
from common.names import label_problem
from leaf_cell.db.models import OperationRow
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = ["OperationStore"]

_OPS = cast(Table, OperationRow.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


class OperationStore:
    """Creates, advances, finishes and reads the cell's operations."""

    def __init__(self, engine: Engine, cell: str, clock: Callable[[], datetime] = _now) -> None:
        self._engine = engine
        self.cell = cell
        self._clock = clock
        self._events: dict[str, asyncio.Event] = {}
        self.live_position: Callable[[str], int] | None = None
        """Queue position of a running operation, read live (the admission queue moves)."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose waiters are woken when an operation finishes (from any thread)."""
        self._loop = loop

    # -- names ---------------------------------------------------------------------------------

    def name_of(self, op_id: str) -> str:
        return f"cells/{self.cell}/operations/{op_id}"

    def parse_name(self, name: str, field: str = "name") -> str:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "cells" or parts[2] != "operations" or not parts[3]:
            raise InvalidArgument.field(
                field, f"{name!r} is not of the form cells/{{cell}}/operations/{{id}}"
            )
        problem = label_problem(parts[1])
        if problem:
            raise InvalidArgument.field(field, f"cell id {problem}")
        if parts[1] != self.cell:
            raise NotFound(f"cell {parts[1]} is not served here (this is cell {self.cell})")
        return parts[3]

    # -- writes (blocking; run them in the database executor) ----------------------------------

    def create(self, node_pk: int, node_id: str, action: str, phase: str) -> str:
        op_id = uuid.uuid4().hex
        now = self._clock()
        with self._engine.begin() as conn:
            conn.execute(
                insert(_OPS).values(
                    id=op_id,
                    node_pk=node_pk,
                    node_id=node_id,
                    action=action,
                    done=False,
                    phase=phase,
                    percent=0,
                    queue_position=0,
                    error_code=0,
                    error_message="",
                    create_time=now,
                    update_time=now,
                )
            )
        return op_id

    def progress(self, op_id: str, phase: str, percent: int, queue_position: int = 0) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(_OPS)
                .where(_OPS.c.id == op_id)
                .values(
                    phase=phase,
                    percent=percent,
                    queue_position=queue_position,
                    update_time=self._clock(),
                )
            )

    def finish(self, op_id: str, error: tuple[grpc.StatusCode, str] | None = None) -> None:
        code, message = (error[0].value[0], error[1]) if error else (0, "")
        with self._engine.begin() as conn:
            conn.execute(
                update(_OPS)
                .where(_OPS.c.id == op_id)
                .values(
                    done=True,
                    percent=100,
                    queue_position=0,
                    error_code=code,
                    error_message=message,
                    update_time=self._clock(),
                )
            )
        self._wake(op_id)

    def fail_unfinished(self, message: str) -> int:
        """Restart recovery: every operation left running by a dead conductor ends in error."""
        with self._engine.begin() as conn:
            result = conn.execute(
                update(_OPS)
                .where(_OPS.c.done.is_(False))
                .values(
                    done=True,
                    error_code=grpc.StatusCode.ABORTED.value[0],
                    error_message=message,
                    update_time=self._clock(),
                )
            )
        return result.rowcount

    def delete(self, name: str) -> None:
        op_id = self.parse_name(name)
        with self._engine.begin() as conn:
            row = conn.execute(select(_OPS.c.done).where(_OPS.c.id == op_id)).one_or_none()
            if row is None:
                raise NotFound(f"operation {name} not found")
            if not row.done:
                raise FailedPrecondition(f"operation {name} is still running")
            conn.execute(delete(_OPS).where(_OPS.c.id == op_id))

    # -- reads ---------------------------------------------------------------------------------

    def get(
        self, name: str, node_reader: Callable[[str], node_pb2.Node | None]
    ) -> operations_pb2.Operation:
        op_id = self.parse_name(name)
        with self._engine.connect() as conn:
            row = conn.execute(select(_OPS).where(_OPS.c.id == op_id)).one_or_none()
        if row is None:
            raise NotFound(f"operation {name} not found")
        return self._to_proto(row, node_reader)

    def node_and_action(self, name: str) -> tuple[str, str, bool]:
        """(node id, action, done) of an operation; NOT_FOUND if there is none."""
        op_id = self.parse_name(name)
        with self._engine.connect() as conn:
            row = conn.execute(
                select(_OPS.c.node_id, _OPS.c.action, _OPS.c.done).where(_OPS.c.id == op_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"operation {name} not found")
        return row.node_id, row.action, row.done

    def is_done(self, op_id: str) -> bool:
        with self._engine.connect() as conn:
            return bool(conn.execute(select(_OPS.c.done).where(_OPS.c.id == op_id)).scalar())

    def list(
        self,
        req: operations_pb2.ListOperationsRequest,
        node_reader: Callable[[str], node_pb2.Node | None],
    ) -> operations_pb2.ListOperationsResponse:
        expected = f"cells/{self.cell}/operations"
        if req.name not in (expected, f"cells/{self.cell}", "cells/-/operations", "cells/-"):
            raise InvalidArgument.field("name", f"must be {expected}")
        if req.filter:
            raise InvalidArgument.field("filter", "filters are not supported on operations")
        size = page_size(req.page_size)
        stmt = select(_OPS).order_by(_OPS.c.create_time.desc(), _OPS.c.id.desc())
        if req.page_token:
            try:
                when_text, _, last_id = (
                    base64.urlsafe_b64decode(req.page_token).decode().partition("|")
                )
                when = datetime.fromisoformat(when_text)
            except ValueError:
                raise InvalidArgument.field(
                    "page_token", "is not a token this cell issued"
                ) from None
            stmt = stmt.where(
                or_(
                    _OPS.c.create_time < when,
                    and_(_OPS.c.create_time == when, _OPS.c.id < last_id),
                )
            )
        with self._engine.connect() as conn:
            rows = conn.execute(stmt.limit(size + 1)).all()
        response = operations_pb2.ListOperationsResponse(
            operations=[self._to_proto(r, node_reader) for r in rows[:size]]
        )
        if len(rows) > size:
            last = rows[size - 1]
            created = (
                last.create_time
                if last.create_time.tzinfo
                else last.create_time.replace(tzinfo=UTC)
            )
            response.next_page_token = base64.urlsafe_b64encode(
                f"{created.isoformat()}|{last.id}".encode()
            ).decode()
        return response

    def _to_proto(
        self, r: Any, node_reader: Callable[[str], node_pb2.Node | None]
    ) -> operations_pb2.Operation:
        """``r`` is a Core row of the operations table."""
        node_name = f"cells/{self.cell}/nodes/{r.node_id}"
        op = operations_pb2.Operation(
            name=self.name_of(r.id),
            done=r.done,
        )
        op.metadata.Pack(
            node_service_pb2.ProvisionOperationMetadata(
                node=node_name,
                action=node_service_pb2.ProvisionAction.Value(
                    "PROVISION_ACTION_" + r.action.upper()
                ),
                phase=r.phase,
                percent=r.percent,
                queue_position=(
                    self.live_position(r.id)
                    if self.live_position is not None and not r.done
                    else r.queue_position
                ),
            )
        )
        if r.done:
            if r.error_code:
                op.error.CopyFrom(
                    status_pb2.Status(
                        code=r.error_code,
                        message=r.error_message,
                    )
                )
            else:
                node = node_reader(node_name) or node_pb2.Node(name=node_name)
                op.response.Pack(node)
        return op

    # -- waiting -------------------------------------------------------------------------------

    def event_for(self, op_id: str) -> asyncio.Event:
        """The event set when ``op_id`` finishes in this process (create it before checking)."""
        return self._events.setdefault(op_id, asyncio.Event())

    def forget_event(self, op_id: str) -> None:
        event = self._events.get(op_id)
        if event is not None and event.is_set():
            self._events.pop(op_id, None)

    def _wake(self, op_id: str) -> None:
        # Waiters hold the event itself, so it can leave the table as it is set.
        event = self._events.pop(op_id, None)
        if event is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(event.set)
