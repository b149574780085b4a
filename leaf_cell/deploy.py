"""The deploy flow: take an available node to active running an image, as fast as the rack allows.

admission (FIFO, ``deploy_concurrency``) → image in the cell's cache (one download per image) →
boot config (the node's iPXE script now says "deploy") → boot device PXE → paced power-on →
the node fetches its script (POST + PXE) → its agent looks itself up and gets the whole plan →
the agent writes and verifies the image and reports → boot device disk → reboot → active.

The flow runs as one conductor task per deploy, holding the node's lock (renewed) throughout.
Every wait has a timeout; any failure moves the node to DEPLOY_FAILED with ``last_error``
naming the phase, and ends the operation with an error. The boot HTTP server and the
AgentService reach a running deploy through :class:`Deploys`, keyed by node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from common.keys import normalize_mac
from common.names import parse_node_name
from common.telemetry import get_meter
from leaf_cell import states
from leaf_cell.admission import Admission, PowerOnPacer
from leaf_cell.conductor import Conductor
from leaf_cell.deploy_phases import PhaseClock
from leaf_cell.drivers.base import BootDevice, DriverError, PowerAction, PowerState
from leaf_cell.image_cache import ImageCache, ImageCacheError
from leaf_cell.locks import Lease
from leaf_cell.states import Event, State
from rackcells.v1 import agent_service_pb2, node_pb2

__all__ = ["ActiveDeploy", "DeployFailure", "Deploys"]

log = logging.getLogger(__name__)

DISK_SCRIPT = "#!ipxe\n# rackcells boot-from-disk {name}\nsanboot --no-describe --drive 0x80\n"
DEPLOY_SCRIPT = (
    "#!ipxe\n# rackcells deploy {name}\n"
    "kernel {http}/agent/vmlinuz rackcells.agent_endpoint={grpc} BOOTIF=${{mac}}\n"
    "initrd {http}/agent/initramfs\nboot\n"
)


class DeployFailure(Exception):
    """A deploy failed in ``phase``; ``code`` is the status its operation ends with."""

    def __init__(self, phase: str, message: str, code: grpc.StatusCode) -> None:
        super().__init__(f"deploy failed in phase {phase}: {message}")
        self.phase = phase
        self.code = code


@dataclass
class ActiveDeploy:
    """A deploy in flight, as the boot server and the agent service see it."""

    node_id: str
    op_id: str
    deploy_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    plan: agent_service_pb2.DeployPlan | None = None
    awaiting_boot: bool = False
    script_fetched: asyncio.Event = field(default_factory=asyncio.Event)
    looked_up: asyncio.Event = field(default_factory=asyncio.Event)
    report: asyncio.Future[agent_service_pb2.ReportDeployRequest] | None = None
    task: asyncio.Task[None] | None = None
    aborted: str = ""


class Deploys:
    """Starts deploys and answers the boot server and deploy agents for the running ones."""

    def __init__(
        self,
        conductor: Conductor,
        cache: ImageCache,
        http_base: Callable[[], str],
        grpc_endpoint: Callable[[], str],
    ) -> None:
        self._c = conductor
        self._cfg = conductor.config
        self._cache = cache
        self._http_base = http_base
        self._grpc_endpoint = grpc_endpoint
        self.admission = Admission(self._cfg.deploy_concurrency)
        self.pacer = PowerOnPacer(self._cfg.power_on_rate)
        self._active: dict[str, ActiveDeploy] = {}
        meter = get_meter("rackcells.leaf")
        self._phase_hist = meter.create_histogram(
            "rackcells.deploy.phase.duration", unit="s", description="time spent per deploy phase"
        )
        self._total_hist = meter.create_histogram(
            "rackcells.deploy.duration", unit="s", description="request to active (or failure)"
        )

    # -- starting and stopping ----------------------------------------------------------------

    def active(self, node_id: str) -> ActiveDeploy | None:
        return self._active.get(node_id)

    def queue_position(self, op_id: str) -> int:
        return self.admission.position(op_id)

    def start(self, node_id: str, op_id: str, lease: Lease, info: node_pb2.InstanceInfo) -> None:
        deploy = ActiveDeploy(node_id=node_id, op_id=op_id)
        self._active[node_id] = deploy
        deploy.task = self._c.spawn(self._run(deploy, lease, info), name=f"deploy {node_id}")

    async def abort(self, node_id: str, reason: str) -> bool:
        """Stops a running deploy; False if none was running."""
        deploy = self._active.get(node_id)
        if deploy is None or deploy.task is None:
            return False
        deploy.aborted = reason
        deploy.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await deploy.task
        return True

    # -- callbacks from the boot server and the agent service -----------------------------------

    async def boot_script(self, mac: str) -> str | None:
        """The iPXE script for the machine with ``mac``; None for a MAC this cell does not know."""
        node_id = await self._c.db(self._c.status.node_id_for_macs, [mac])
        if node_id is None:
            return None
        name = f"cells/{self._c.nodes.cell}/nodes/{node_id}"
        deploy = self._active.get(node_id)
        if deploy is not None and deploy.awaiting_boot and deploy.plan is not None:
            deploy.script_fetched.set()
            return DEPLOY_SCRIPT.format(
                name=name, http=self._http_base(), grpc=self._grpc_endpoint()
            )
        return DISK_SCRIPT.format(name=name)

    async def lookup(
        self, req: agent_service_pb2.LookupNodeRequest
    ) -> agent_service_pb2.LookupNodeResponse:
        macs = [m for m in (normalize_mac(raw) for raw in req.macs) if m]
        if not macs:
            raise InvalidArgument.field("macs", "no valid MAC address given")
        node_id = await self._c.db(self._c.status.node_id_for_macs, macs)
        if node_id is None:
            raise NotFound(f"no node in cell {self._c.nodes.cell} has MAC {', '.join(macs)}")
        name = f"cells/{self._c.nodes.cell}/nodes/{node_id}"
        deploy = self._active.get(node_id)
        if deploy is None or deploy.plan is None or not deploy.awaiting_boot:
            raise FailedPrecondition(f"node {name} is not waiting for a deploy agent")
        deploy.script_fetched.set()  # an agent that booted without our script still counts
        deploy.looked_up.set()
        return agent_service_pb2.LookupNodeResponse(node=name, plan=deploy.plan)

    async def report(self, req: agent_service_pb2.ReportDeployRequest) -> None:
        parsed = parse_node_name(req.node, "node")
        deploy = self._active.get(parsed.node)
        if deploy is None or deploy.deploy_id != req.deploy_id:
            raise FailedPrecondition(f"node {req.node} has no deploy {req.deploy_id!r} running")
        if not hmac.compare_digest(req.token.encode(), deploy.token.encode()):
            raise PermissionDenied(
                f"the token is not valid for deploy {req.deploy_id} of {req.node}"
            )
        if deploy.report is None or deploy.report.done():
            raise FailedPrecondition(f"deploy {req.deploy_id} of {req.node} was already reported")
        deploy.report.set_result(req)

    # -- the flow -------------------------------------------------------------------------------

    async def _progress(self, deploy: ActiveDeploy, phase: str, percent: int) -> None:
        await self._c.db(
            self._c.operations.progress,
            deploy.op_id,
            phase,
            percent,
            self.admission.position(deploy.op_id),
        )
        await self._c.db(self._c.status.add_progress, deploy.node_id, phase, percent, "deploy")

    async def _move(
        self,
        node_id: str,
        src: State,
        dst: State,
        target: State | None,
        last_error: str | None = None,
    ) -> None:
        """Moves the node and records the transition, as every provisioning action does."""
        await self._c.db(self._c.status.set_provision, node_id, dst, target, last_error)
        await self._c.db(
            self._c.status.add_events, [(node_id, "provision", f"{src.value} -> {dst.value}")]
        )

    async def _bmc(self, fn: Callable[..., Any], *args: Any, phase: str) -> Any:
        try:
            return await self._c.bmc(fn, *args, self._cfg.bmc_timeout)
        except DriverError as err:
            raise DeployFailure(phase, str(err), grpc.StatusCode.UNAVAILABLE) from None

    async def _wait(self, awaitable: Awaitable[Any], timeout: float, phase: str, what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            raise DeployFailure(
                phase, f"{what} within {timeout:.0f} s", grpc.StatusCode.DEADLINE_EXCEEDED
            ) from None

    async def _renew(self, lease: Lease) -> None:
        interval = max(1.0, self._cfg.lock_lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            await self._c.db(self._c.locks.renew, lease)

    async def _run(self, deploy: ActiveDeploy, lease: Lease, info: node_pb2.InstanceInfo) -> None:
        name = f"cells/{self._c.nodes.cell}/nodes/{deploy.node_id}"
        clock = PhaseClock(name, deploy.deploy_id, self._phase_hist, self._total_hist)
        renewer = asyncio.get_running_loop().create_task(self._renew(lease))
        error: tuple[grpc.StatusCode, str] | None = None
        shutting_down = False
        try:
            await self._progress(deploy, "queued", 0)
            async with self.admission.slot(deploy.op_id):
                clock.mark("queued")
                await self._deploy(deploy, info, clock)
        except asyncio.CancelledError:
            if not deploy.aborted:
                shutting_down = True  # leave node, lease and operation to restart recovery
                raise
            error = (grpc.StatusCode.ABORTED, f"deploy aborted: {deploy.aborted}")
        except DeployFailure as failure:
            error = (failure.code, str(failure))
        except Exception as exc:
            log.exception("deploy of %s failed unexpectedly", name)
            error = (
                grpc.StatusCode.INTERNAL,
                f"deploy failed: internal error ({type(exc).__name__})",
            )
        finally:
            renewer.cancel()
            self._active.pop(deploy.node_id, None)
            if not shutting_down:
                await self._finish(deploy, lease, clock, error)

    async def _finish(
        self,
        deploy: ActiveDeploy,
        lease: Lease,
        clock: PhaseClock,
        error: tuple[grpc.StatusCode, str] | None,
    ) -> None:
        status = self._c.status
        timings = clock.finish("failed" if error else "active", error[1] if error else "")
        await self._c.db(status.set_last_deploy, deploy.node_id, timings)
        if error:
            current = (await self._c.db(status.status, deploy.node_id)).provision_state
            target = states.failure_target(current) if current in states.TRANSIENT else current
            await self._move(deploy.node_id, current, target, None, error[1])
            await self._c.db(status.add_events, [(deploy.node_id, "deploy_failed", error[1])])
        else:
            await self._c.db(status.add_events, [(deploy.node_id, "deployed", deploy.deploy_id)])
        await self._c.db(self._c.locks.release, lease)
        await self._c.db(self._c.operations.finish, deploy.op_id, error)

    async def _deploy(
        self, deploy: ActiveDeploy, info: node_pb2.InstanceInfo, clock: PhaseClock
    ) -> None:
        # The image stays pinned in the cache until the deploy ends, so an agent that resumes
        # its download with a Range request still finds it.
        async with contextlib.AsyncExitStack() as stack:
            await self._deploy_pinned(deploy, info, clock, stack)

    async def _deploy_pinned(
        self,
        deploy: ActiveDeploy,
        info: node_pb2.InstanceInfo,
        clock: PhaseClock,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        c, status = self._c, self._c.status
        node_id = deploy.node_id
        await self._progress(deploy, "image_cache", 5)
        try:
            image = await asyncio.wait_for(
                stack.enter_async_context(self._cache.use(info.image_url, info.image_checksum)),
                self._cfg.deploy_image_timeout,
            )
        except ImageCacheError as err:
            raise DeployFailure(
                "image_cache", str(err), grpc.StatusCode.FAILED_PRECONDITION
            ) from None
        except TimeoutError:
            raise DeployFailure(
                "image_cache",
                f"image not cached within {self._cfg.deploy_image_timeout:.0f} s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        clock.mark("image_cache")
        deploy.plan = agent_service_pb2.DeployPlan(
            deploy_id=deploy.deploy_id,
            token=deploy.token,
            image_url=f"{self._http_base()}/images/{image.sha256}",
            image_checksum=info.image_checksum,
            image_size=image.size,
            target_device=info.root_device or "/dev/sda",
        )
        node = await c.db(status.status, node_id)
        driver = c.driver(node.bmc.driver)
        await self._progress(deploy, "power_on", 15)
        await self._bmc(
            driver.boot.set_boot_device, node.bmc, BootDevice.PXE, False, phase="power_on"
        )
        deploy.report = asyncio.get_running_loop().create_future()
        deploy.awaiting_boot = True
        await self._move(node_id, State.DEPLOYING, State.WAIT_CALL_BACK, State.ACTIVE)
        await self.pacer.acquire()
        power = await self._bmc(driver.power.get_power, node.bmc, phase="power_on")
        action = PowerAction.REBOOT if power is PowerState.ON else PowerAction.ON
        await self._bmc(driver.power.set_power, node.bmc, action, phase="power_on")
        await c.db(status.record_power, node_id, PowerState.ON.value, None)
        clock.mark("power_on")
        await self._progress(deploy, "pxe", 25)
        await self._wait(
            deploy.script_fetched.wait(),
            self._cfg.deploy_pxe_timeout,
            "pxe",
            "the node did not fetch its boot script",
        )
        clock.mark("pxe")
        await self._progress(deploy, "agent_lookup", 35)
        await self._wait(
            deploy.looked_up.wait(),
            self._cfg.deploy_lookup_timeout,
            "agent_lookup",
            "the node's agent did not look itself up",
        )
        clock.mark("agent_lookup")
        await self._progress(deploy, "image_write", 45)
        report = await self._wait(
            deploy.report, self._cfg.deploy_write_timeout, "image_write", "the agent did not report"
        )
        clock.mark("image_write")
        deploy.awaiting_boot = False
        if not report.success:
            raise DeployFailure(
                "image_write", f"the agent reported: {report.error}", grpc.StatusCode.ABORTED
            )
        if report.written_checksum != info.image_checksum:
            raise DeployFailure(
                "image_write",
                f"the agent wrote {report.written_checksum}, expected {info.image_checksum}",
                grpc.StatusCode.DATA_LOSS,
            )
        await self._move(
            node_id,
            State.WAIT_CALL_BACK,
            states.next_state(State.WAIT_CALL_BACK, Event.RESUME),
            State.ACTIVE,
        )
        await self._progress(deploy, "reboot", 90)
        await self._bmc(
            driver.boot.set_boot_device, node.bmc, BootDevice.DISK, True, phase="reboot"
        )
        await self._bmc(driver.power.set_power, node.bmc, PowerAction.REBOOT, phase="reboot")
        clock.mark("reboot")
        await self._move(
            node_id, State.DEPLOYING, states.next_state(State.DEPLOYING, Event.DONE), None, ""
        )
        await self._progress(deploy, "active", 100)
