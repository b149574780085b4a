"""Provisioning actions: check the transition, take the lock, run the work as an operation.

``ChangeProvisionState`` returns at once with a ``google.longrunning.Operation``; the work runs
as a conductor task holding the node's lock until the node rests in a stable state again. Every
check happens before anything is written, so a rejected action changes nothing.

- manage:   enroll/manageable/available/clean failed → verifying → manageable (a power read
            proves the BMC credentials; failure returns the node to enroll)
- provide:  manageable/clean failed → cleaning → available (power off)
- deploy:   available/active/deploy failed → deploying → … → active (leaf_cell.deploy)
- undeploy: active/deploy failed/error → deleting (power off, instance forgotten) → cleaning →
            available
- abort:    wait-call-back → deploy failed (stops the running deploy; needs no lock)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from google.longrunning import operations_pb2

from common.errors import (
    EtagMismatch,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from common.names import parse_node_name
from common.node_checks import check_node
from leaf_cell import states
from leaf_cell.conductor import Conductor
from leaf_cell.deploy import Deploys
from leaf_cell.drivers.base import DriverError, PowerAction
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


class TaskFailure(Exception):
    """A provisioning task failed; the message becomes the node's last_error."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION):
        super().__init__(message)
        self.code = code


def operation_reader(conductor: Conductor) -> Callable[[str], node_pb2.Node | None]:
    """Reads an operation's node for its response; a deleted node leaves the operation readable."""

    def read(name: str) -> node_pb2.Node | None:
        try:
            return conductor.nodes.get(name)
        except NotFound:
            return None

    return read


def _state(node: node_pb2.Node) -> State:
    return State[
        node_pb2.ProvisionState.Name(node.provision_state).removeprefix("PROVISION_STATE_")
    ]


def _deploy_info(
    req: node_service_pb2.ChangeProvisionStateRequest, node: node_pb2.Node
) -> node_pb2.InstanceInfo:
    info = req.instance_info if req.HasField("instance_info") else node.instance_info
    missing = [
        FieldViolation(f"instance_info.{f}", "is required to deploy")
        for f in ("image_url", "image_checksum")
        if not getattr(info, f)
    ]
    if missing:
        raise InvalidArgument.of(missing)
    check_node(node_pb2.Node(instance_info=info), {"instance_info"}, prefix="")
    return info


async def change_provision_state(
    conductor: Conductor,
    deploys: Deploys | None,
    req: node_service_pb2.ChangeProvisionStateRequest,
) -> operations_pb2.Operation:
    parsed = parse_node_name(req.name)
    event = _EVENTS.get(req.action)
    if event is None:
        raise InvalidArgument.field(
            "action", "must be one of MANAGE, PROVIDE, DEPLOY, UNDEPLOY, ABORT"
        )
    node = await conductor.db(conductor.nodes.get, req.name)
    if req.etag and req.etag != node.etag:
        raise EtagMismatch(given=req.etag, name=req.name)
    current = _state(node)
    try:
        target = states.next_state(current, event)
    except IllegalTransition as exc:
        raise FailedPrecondition(
            f"node {req.name}: {exc}", metadata={"provision_state": current.value}
        ) from None
    if node.maintenance:
        raise FailedPrecondition(
            f"node {req.name} is in maintenance; turn maintenance off before {event.value}"
        )
    info = _deploy_info(req, node) if event is Event.DEPLOY else None
    if event is Event.DEPLOY and deploys is None:
        raise FailedPrecondition(
            "this leaf runs no boot HTTP server (--http-listen), so it cannot deploy"
        )
    read = operation_reader(conductor)
    if event is Event.ABORT:
        return await _abort(conductor, deploys, parsed.node, current, read)

    lease = await conductor.db(conductor.locks.acquire, parsed.node, event.value)
    try:
        status = await conductor.db(conductor.status.status, parsed.node)
        if status.provision_state is not current:
            raise FailedPrecondition(f"node {req.name} changed state; read it again")
        if info is not None:
            await conductor.db(
                conductor.status.set_instance_info,
                parsed.node,
                {
                    k: v
                    for k, v in (
                        ("image_url", info.image_url),
                        ("image_checksum", info.image_checksum),
                        ("root_device", info.root_device),
                    )
                    if v
                },
            )
        await conductor.db(conductor.status.set_provision, parsed.node, target, _goal(target), "")
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
    if event is Event.DEPLOY:
        assert deploys is not None and info is not None
        deploys.start(parsed.node, op_id, lease, info)
    else:
        body = {Event.MANAGE: _verify, Event.PROVIDE: _clean, Event.UNDEPLOY: _undeploy}[event]
        conductor.spawn(_task(conductor, lease, op_id, body), name=f"{event.value} {parsed.node}")
    return await conductor.db(conductor.operations.get, conductor.operations.name_of(op_id), read)


def _goal(state: State) -> State | None:
    return states.GOAL.get(state)


async def _abort(
    conductor: Conductor,
    deploys: Deploys | None,
    node_id: str,
    current: State,
    read: Callable[[str], node_pb2.Node | None],
) -> operations_pb2.Operation:
    status = await conductor.db(conductor.status.status, node_id)
    op_id = await conductor.db(conductor.operations.create, status.pk, node_id, "abort", "abort")
    stopped = deploys is not None and await deploys.abort(node_id, "aborted by the operator")
    if not stopped:
        # No deploy task (it already ended, or died with a previous conductor): just fail it.
        await conductor.db(
            conductor.status.set_provision,
            node_id,
            states.next_state(current, Event.ABORT),
            None,
            "deploy aborted by the operator",
        )
    await conductor.db(conductor.operations.finish, op_id, None)
    return await conductor.db(conductor.operations.get, conductor.operations.name_of(op_id), read)


async def _task(
    conductor: Conductor,
    lease: Lease,
    op_id: str,
    body: Callable[[Conductor, str, str], Awaitable[None]],
) -> None:
    """Runs one provisioning task body; on failure the node goes to its state's failure target."""
    node_id = lease.node_id
    error: tuple[grpc.StatusCode, str] | None = None
    cancelled = False
    try:
        await body(conductor, node_id, op_id)
    except asyncio.CancelledError:
        # Shutting down: the next start's recovery moves the node and ends the operation.
        cancelled = True
        raise
    except TaskFailure as failure:
        error = (failure.code, str(failure))
    except Exception as exc:
        log.exception("%s of %s failed unexpectedly", lease.purpose, node_id)
        error = (grpc.StatusCode.INTERNAL, f"{lease.purpose} failed: {type(exc).__name__}")
    finally:
        if not cancelled:
            if error is not None:
                state = (await conductor.db(conductor.status.status, node_id)).provision_state
                if state in states.TRANSIENT:
                    await conductor.db(
                        conductor.status.set_provision,
                        node_id,
                        states.failure_target(state),
                        None,
                        error[1],
                    )
                await conductor.db(
                    conductor.status.add_events, [(node_id, f"{lease.purpose}_failed", error[1])]
                )
            # Release before finishing: a waiter woken by the finish must see the node unlocked.
            await conductor.db(conductor.locks.release, lease)
            await conductor.db(conductor.operations.finish, op_id, error)


async def _done(conductor: Conductor, node_id: str, state: State) -> State:
    """Moves the node along the DONE edge of ``state`` and records it."""
    target = states.next_state(state, Event.DONE)
    await conductor.db(conductor.status.set_provision, node_id, target, _goal(target), "")
    await conductor.db(
        conductor.status.add_events, [(node_id, "provision", f"{state.value} -> {target.value}")]
    )
    return target


async def _verify(conductor: Conductor, node_id: str, op_id: str) -> None:
    """Proves the BMC credentials with a power read."""
    status = await conductor.db(conductor.status.status, node_id)
    driver = conductor.driver(status.bmc.driver)
    await conductor.db(conductor.operations.progress, op_id, "power_status", 50)
    try:
        power = await conductor.bmc(
            driver.power.get_power, status.bmc, conductor.config.bmc_timeout
        )
    except DriverError as err:
        raise TaskFailure(f"verify failed: {err}") from None
    await conductor.db(conductor.status.record_power, node_id, power.value, "")
    await _done(conductor, node_id, State.VERIFYING)


async def _power_off(conductor: Conductor, node_id: str, what: str) -> None:
    status = await conductor.db(conductor.status.status, node_id)
    driver = conductor.driver(status.bmc.driver)
    try:
        state = await conductor.bmc(
            driver.power.set_power, status.bmc, PowerAction.OFF, conductor.config.bmc_timeout
        )
    except DriverError as err:
        raise TaskFailure(f"{what} failed: {err}", grpc.StatusCode.UNAVAILABLE) from None
    await conductor.db(conductor.status.record_power, node_id, state.value, None)


async def _clean(conductor: Conductor, node_id: str, op_id: str) -> None:
    """Cleaning: the node is powered off and left ready for a tenant."""
    await conductor.db(conductor.operations.progress, op_id, "power_off", 50)
    await _power_off(conductor, node_id, "cleaning")
    await _done(conductor, node_id, State.CLEANING)


async def _undeploy(conductor: Conductor, node_id: str, op_id: str) -> None:
    """Tear-down: power off, forget the instance, then clean."""
    await conductor.db(conductor.operations.progress, op_id, "power_off", 30)
    await _power_off(conductor, node_id, "tear-down")
    await conductor.db(conductor.status.set_instance_info, node_id, {})
    await _done(conductor, node_id, State.DELETING)
    await conductor.db(conductor.operations.progress, op_id, "cleaning", 60)
    await _clean(conductor, node_id, op_id)
