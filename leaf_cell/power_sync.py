"""The power sweep: read every managed node's power state from its BMC, periodically.

Cheap enough to run often because BMC sessions are kept alive by the driver (no login, no
process per call). Bounded: at most ``power_sync_concurrency`` BMCs at once, each within
``bmc_timeout``, so one dead BMC costs its own budget and nobody else's. Jittered: each sweep
starts up to ``power_sync_jitter`` x interval late and visits nodes in random order, so cells
don't align and logins after a restart spread out. Measured: every sweep's duration, failures
and changes go to OpenTelemetry and to :attr:`PowerSync.last`.

Out-of-band changes (someone pressed the button) are recorded as events and then either
accepted or, with ``power_sync_policy = enforce``, set back — never for nodes in maintenance.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from opentelemetry.metrics import Meter

from common.telemetry import get_meter
from leaf_cell.conductor import Conductor
from leaf_cell.drivers.base import DriverError, PowerAction, PowerState
from leaf_cell.node_status import SyncTarget
from leaf_cell.states import State

__all__ = ["PowerSync", "SweepResult"]

log = logging.getLogger(__name__)

_KNOWN = ("ON", "OFF")


@dataclass
class SweepResult:
    nodes: int = 0
    failures: int = 0
    changes: int = 0
    enforced: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    failed_nodes: list[str] = field(default_factory=list)


class PowerSync:
    def __init__(self, conductor: Conductor, meter: Meter | None = None) -> None:
        self._c = conductor
        self._cfg = conductor.config
        meter = meter or get_meter("rackcells.leaf")
        self._duration = meter.create_histogram(
            "rackcells.power_sync.duration", unit="s", description="wall time of one power sweep"
        )
        self._failures = meter.create_counter(
            "rackcells.power_sync.failures", description="BMCs that did not answer a sweep"
        )
        self._changes = meter.create_counter(
            "rackcells.power_sync.changes", description="out-of-band power changes seen"
        )
        self._nodes = meter.create_counter(
            "rackcells.power_sync.nodes", description="nodes read by power sweeps"
        )
        self.last: SweepResult | None = None

    async def run_forever(self) -> None:
        interval = self._cfg.power_sync_interval
        while True:
            await asyncio.sleep(interval * (1 + random.uniform(0, self._cfg.power_sync_jitter)))  # noqa: S311
            try:
                result = await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("power sweep failed")
                continue
            log.info(
                "power sweep: %d nodes in %.2f s (cpu %.2f s), %d failures, %d changes, "
                "%d enforced",
                result.nodes,
                result.wall_seconds,
                result.cpu_seconds,
                result.failures,
                result.changes,
                result.enforced,
            )

    async def sweep(self) -> SweepResult:
        """One pass over the cell's unlocked, managed nodes."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        targets = await self._c.db(self._c.status.sync_targets, (State.ENROLL,))
        random.shuffle(targets)
        budget = self._cfg.bmc_timeout
        gate = asyncio.Semaphore(self._cfg.power_sync_concurrency)
        read: list[tuple[SyncTarget, PowerState]] = []
        failed: list[tuple[SyncTarget, str]] = []

        async def one(target: SyncTarget) -> None:
            async with gate:
                driver = self._c.driver(target.bmc.driver)
                try:
                    # The driver enforces the budget; wait_for is a backstop, not the mechanism.
                    state = await asyncio.wait_for(
                        self._c.bmc(driver.power.get_power, target.bmc, budget), budget * 2 + 1
                    )
                except DriverError as err:
                    failed.append((target, str(err)))
                except TimeoutError:
                    failed.append(
                        (
                            target,
                            f"BMC {target.bmc.address}:{target.bmc.port} did not "
                            f"answer within {budget:.1f} s",
                        )
                    )
                else:
                    read.append((target, state))

        await asyncio.gather(*(one(t) for t in targets))
        result = SweepResult(nodes=len(targets), failures=len(failed))
        result.failed_nodes = sorted(t.node_id for t, _ in failed)
        await self._record(read, failed, result)
        result.wall_seconds = time.perf_counter() - wall0
        result.cpu_seconds = time.process_time() - cpu0
        self._duration.record(result.wall_seconds)
        self._nodes.add(result.nodes)
        self._failures.add(result.failures)
        self._changes.add(result.changes)
        self.last = result
        return result

    async def _record(
        self,
        read: list[tuple[SyncTarget, PowerState]],
        failed: list[tuple[SyncTarget, str]],
        result: SweepResult,
    ) -> None:
        status = self._c.status
        unchanged = [t.pk for t, state in read if state.value == t.power_state]
        await self._c.db(status.touch_synced, unchanged)
        events: list[tuple[str, str, str]] = []
        for target, state in read:
            if state.value == target.power_state:
                continue
            out_of_band = target.power_state in _KNOWN
            if out_of_band:
                result.changes += 1
                events.append(
                    (target.node_id, "power_out_of_band", f"{target.power_state} -> {state.value}")
                )
                enforce = self._cfg.power_sync_policy == "enforce" and target.enforce_ok
                if enforce and await self._enforce(target):
                    result.enforced += 1
                    events.append((target.node_id, "power_enforced", target.power_state))
                    continue
            clear = "" if target.power_state == "UNKNOWN" else None
            await self._c.db(status.record_power, target.node_id, state.value, clear)
        for target, message in failed:
            if target.power_state != "UNKNOWN":
                events.append((target.node_id, "power_sync_failed", message))
            await self._c.db(status.record_power, target.node_id, "UNKNOWN", message)
        await self._c.db(status.add_events, events)

    async def _enforce(self, target: SyncTarget) -> bool:
        """Sets the recorded power state back on the BMC; False if that was not possible."""
        action = PowerAction.ON if target.power_state == "ON" else PowerAction.OFF
        try:
            lease = await self._c.db(self._c.locks.acquire, target.node_id, "power sync enforce")
        except Exception:
            return False
        try:
            driver = self._c.driver(target.bmc.driver)
            state = await self._c.bmc(
                driver.power.set_power, target.bmc, action, self._cfg.bmc_timeout
            )
            await self._c.db(self._c.status.record_power, target.node_id, state.value, None)
            return True
        except DriverError as err:
            log.warning("could not enforce power on %s: %s", target.node_id, err)
            return False
        finally:
            await self._c.db(self._c.locks.release, lease)
