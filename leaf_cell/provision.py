"""Provisioning actions: check the transition, take the lock, start the work as an operation.

``ChangeProvisionState`` returns at once with a ``google.longrunning.Operation``; the work runs
as a conductor task that holds the node's lock until the node rests in a stable state again.
Every check happens before anything is written, so a rejected action changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from google.longrunning import operations_pb2

from common.errors import (
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from common.names import parse_node_name
from leaf_cell import states
from leaf_cell.conductor import Conductor
from leaf_cell.drivers.base import DriverError
from leaf_cell.locks import Lease
from leaf_cell.states import Event, IllegalTransition, State
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = ["change_provision_state", "operation_reader"]

log = logging.getLogger(__name__)

_EVENTS = {
    node_service_pb2.PROVISION_ACTION_MANAGE: Event.MANAGE,
    node_service_pb2.PROVISION_ACTION_PROVIDE: Event.PROVIDE,
    node_service_pb2.PROVISION_ACTION_DEPLOY: Event.DEPLOY,
    node_service_pb2.PROVISION_ACTION_UNDEPLOY: Event.UNDEPLOY,
    node_service_pb2.PROVISION_ACTION_ABORT: Event.ABORT,
}
_IMPLEMENTED = {Event.MANAGE}


async def change_provision_state(
    conductor: Conductor, req: node_service_pb2.ChangeProvisionStateRequest
) -> operations_pb2.Operation:
    parsed = parse_node_name(req.name)
    if parsed.cell != conductor.nodes.cell:
        await conductor.db(conductor.nodes.get, req.name)  # NOT_FOUND naming the other cell
    event = _EVENTS.get(req.action)
    if event is None:
        raise InvalidArgument.field(
            "action", "must be one of MANAGE, PROVIDE, DEPLOY, UNDEPLOY, ABORT"
        )
    node = await conductor.db(conductor.nodes.get, req.name)
    if req.etag and req.etag != node.etag:
        raise EtagMismatch(given=req.etag, name=req.name)
    current = State(
        node_pb2.ProvisionState.Name(node.provision_state).removeprefix("PROVISION_STATE_")
    )
    try:
        target = states.next_state(current, event)
    except IllegalTransition as exc:
        raise FailedPrecondition(
            f"node {req.name}: {exc}", metadata={"provision_state": current.value}
        ) from None
    if event not in _IMPLEMENTED:
        raise Unimplemented(f"action {event.value} is not available in this release")
    if node.maintenance:
        raise FailedPrecondition(
            f"node {req.name} is in maintenance; turn maintenance off before {event.value}"
        )
    lease = await conductor.db(conductor.locks.acquire, parsed.node, event.value)
    try:
        status = await conductor.db(conductor.status.status, parsed.node)
        if status.provision_state is not current:
            raise FailedPrecondition(f"node {req.name} changed state; read it again")
        await conductor.db(
            conductor.status.set_provision, parsed.node, target, _stable_goal(target), ""
        )
        op_id = await conductor.db(
            conductor.operations.create, status.pk, parsed.node, event.value, target.value.lower()
        )
        await conductor.db(
            conductor.status.add_events,
            [(parsed.node, "provision", f"{current.value} -> {target.value} ({event.value})")],
        )
    except BaseException:
        await conductor.db(conductor.locks.release, lease)
        raise
    conductor.spawn(_verify(conductor, lease, op_id), name=f"verify {parsed.node}")
    return await conductor.db(
        conductor.operations.get, conductor.operations.name_of(op_id), operation_reader(conductor)
    )


def _stable_goal(state: State) -> State | None:
    """Where a transient state is heading when all goes well."""
    if state not in states.TRANSIENT:
        return None
    goal = state
    while goal in states.TRANSIENT:
        goal = states.next_state(goal, Event.DONE)
    return goal


def operation_reader(conductor: Conductor) -> Callable[[str], node_pb2.Node | None]:
    """Reads an operation's node for its response; a deleted node leaves the operation readable."""

    def read(name: str) -> node_pb2.Node | None:
        try:
            return conductor.nodes.get(name)
        except NotFound:
            return None

    return read


async def _verify(conductor: Conductor, lease: Lease, op_id: str) -> None:
    """enroll/manageable → verifying → manageable, proving the BMC credentials with a power read."""
    node_id = lease.node_id
    error: tuple[grpc.StatusCode, str] | None = None
    cancelled = False
    try:
        status = await conductor.db(conductor.status.status, node_id)
        driver = conductor.driver(status.bmc.driver)
        await conductor.db(conductor.operations.progress, op_id, "power_status", 50)
        try:
            power = await conductor.bmc(
                driver.power.get_power, status.bmc, conductor.config.bmc_timeout
            )
        except DriverError as err:
            message = f"verify failed: {err}"
            await conductor.db(
                conductor.status.set_provision,
                node_id,
                states.failure_target(State.VERIFYING),
                None,
                message,
            )
            await conductor.db(conductor.status.add_events, [(node_id, "verify_failed", str(err))])
            error = (grpc.StatusCode.FAILED_PRECONDITION, message)
            return
        await conductor.db(conductor.status.record_power, node_id, power.value, "")
        await conductor.db(
            conductor.status.set_provision,
            node_id,
            states.next_state(State.VERIFYING, Event.DONE),
            None,
            "",
        )
        await conductor.db(conductor.status.add_events, [(node_id, "verified", power.value)])
    except asyncio.CancelledError:
        # Shutting down: leave node, lease and operation as they are; the next start's
        # recovery moves the node to its failure state and ends the operation.
        cancelled = True
        raise
    except Exception as exc:
        log.exception("verify of %s failed unexpectedly", node_id)
        await conductor.db(
            conductor.status.set_provision,
            node_id,
            states.failure_target(State.VERIFYING),
            None,
            f"verify failed: internal error ({type(exc).__name__})",
        )
        error = (grpc.StatusCode.INTERNAL, f"verify failed: {type(exc).__name__}")
    finally:
        if not cancelled:
            # Release before finishing: a waiter woken by the finish must see the node unlocked.
            await conductor.db(conductor.locks.release, lease)
            await conductor.db(conductor.operations.finish, op_id, error)
