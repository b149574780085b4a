"""Power and boot-device flows: take the node's lock, call the BMC, record what it said.

A BMC failure is recorded on the node (``last_error``, power state unknown when it did not
answer) and returned to the caller with a code that says whose move it is: rejected credentials
or an unsupported command are ``FAILED_PRECONDITION`` (fix the node's bmc fields); a BMC that did
not answer is ``UNAVAILABLE`` (try again).
"""

from __future__ import annotations

from common.errors import FailedPrecondition, InvalidArgument, RackcellsError, Unavailable
from common.names import parse_node_name
from leaf_cell.conductor import Conductor
from leaf_cell.drivers.base import BootDevice, DriverError, DriverErrorKind, PowerAction
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = ["bmc_failure", "set_boot_device", "set_power"]

_ACTIONS = {
    node_service_pb2.POWER_ACTION_ON: PowerAction.ON,
    node_service_pb2.POWER_ACTION_OFF: PowerAction.OFF,
    node_service_pb2.POWER_ACTION_REBOOT: PowerAction.REBOOT,
    node_service_pb2.POWER_ACTION_SOFT_OFF: PowerAction.SOFT_OFF,
}
_DEVICES = {
    node_service_pb2.BOOT_DEVICE_PXE: BootDevice.PXE,
    node_service_pb2.BOOT_DEVICE_DISK: BootDevice.DISK,
}


def bmc_failure(err: DriverError) -> RackcellsError:
    """The API error for a failed BMC call; the message is the driver's, which names the BMC."""
    meta = {"bmc_error": err.kind.value}
    if err.kind in (DriverErrorKind.AUTH, DriverErrorKind.UNSUPPORTED):
        failed = FailedPrecondition(str(err), metadata=meta)
        failed.reason = f"BMC_{err.kind.value.upper()}"
        return failed
    unavailable = Unavailable(str(err), metadata=meta)
    unavailable.reason = f"BMC_{err.kind.value.upper()}"
    return unavailable


def _node_id(conductor: Conductor, name: str) -> str:
    parsed = parse_node_name(name)
    if parsed.cell != conductor.nodes.cell:
        conductor.nodes.get(name)  # raises NOT_FOUND naming the foreign cell
    return parsed.node


async def set_power(
    conductor: Conductor, req: node_service_pb2.SetPowerStateRequest
) -> node_pb2.Node:
    node_id = _node_id(conductor, req.name)
    action = _ACTIONS.get(req.action)
    if action is None:
        raise InvalidArgument.field("action", "must be one of ON, OFF, REBOOT, SOFT_OFF")
    lease = await conductor.db(conductor.locks.acquire, node_id, f"power {action.value}")
    try:
        status = await conductor.db(conductor.status.status, node_id)
        driver = conductor.driver(status.bmc.driver)
        try:
            state = await conductor.bmc(
                driver.power.set_power, status.bmc, action, conductor.config.bmc_timeout
            )
        except DriverError as err:
            unknown = err.kind in (DriverErrorKind.TIMEOUT, DriverErrorKind.UNREACHABLE)
            await conductor.db(
                conductor.status.record_power,
                node_id,
                "UNKNOWN" if unknown else status.power_state,
                str(err),
            )
            raise bmc_failure(err) from None
        await conductor.db(conductor.status.record_power, node_id, state.value, "")
        await conductor.db(
            conductor.status.add_events, [(node_id, "power", f"{action.value} -> {state.value}")]
        )
    finally:
        await conductor.db(conductor.locks.release, lease)
    return await conductor.db(conductor.nodes.get, req.name)


async def set_boot_device(
    conductor: Conductor, req: node_service_pb2.SetBootDeviceRequest
) -> node_pb2.Node:
    node_id = _node_id(conductor, req.name)
    device = _DEVICES.get(req.device)
    if device is None:
        raise InvalidArgument.field("device", "must be PXE or DISK")
    lease = await conductor.db(conductor.locks.acquire, node_id, f"boot device {device.value}")
    try:
        status = await conductor.db(conductor.status.status, node_id)
        driver = conductor.driver(status.bmc.driver)
        try:
            await conductor.bmc(
                driver.boot.set_boot_device,
                status.bmc,
                device,
                req.persistent,
                conductor.config.bmc_timeout,
            )
        except DriverError as err:
            raise bmc_failure(err) from None
        await conductor.db(
            conductor.status.add_events,
            [(node_id, "boot_device", f"{device.value}{' persistent' if req.persistent else ''}")],
        )
    finally:
        await conductor.db(conductor.locks.release, lease)
    return await conductor.db(conductor.nodes.get, req.name)
