"""The power sweep: reads every managed node, notices out-of-band changes, degrades per node."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, select

from leaf_cell.db.models import EventRow
from leaf_cell.drivers.base import DriverErrorKind, PowerState
from leaf_cell.power_sync import PowerSync
from rackcells.v1 import node_pb2


def _rack(cell, fake, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    names = []
    for i in range(count):
        address = f"10.9.0.{i + 1}"
        fake.add_bmc(address, power=PowerState.OFF)
        cell.create(f"s{i}", address)
        cell.manage(f"s{i}")
        names.append(f"s{i}")
    return names


def _events(db_url: str, node_id: str) -> list[str]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        kinds = list(
            conn.execute(select(EventRow.kind).where(EventRow.node_id == node_id)).scalars()
        )
    engine.dispose()
    return kinds


def test_sweep_reads_every_managed_node_and_skips_enrolled_ones(cell, fake) -> None:  # type: ignore[no-untyped-def]
    _rack(cell, fake, 5)
    fake.add_bmc("10.9.1.1")
    cell.create("enrolled", "10.9.1.1")
    result = cell.run(cell.server.power_sync.sweep())
    assert result.nodes == 5 and result.failures == 0 and result.changes == 0
    assert cell.get("s0").HasField("power_sync_time")
    assert not cell.get("enrolled").HasField("power_sync_time")


def test_out_of_band_change_is_recorded_as_an_event_and_accepted(cell, fake, db_url) -> None:  # type: ignore[no-untyped-def]
    _rack(cell, fake, 3)
    etag = cell.get("s1").etag
    fake.press_power("10.9.0.2", 0, True)
    result = cell.run(cell.server.power_sync.sweep())
    assert result.changes == 1 and result.enforced == 0
    node = cell.get("s1")
    assert node.power_state == node_pb2.POWER_STATE_ON
    assert node.etag != etag
    assert "power_out_of_band" in _events(db_url, "s1")
    assert fake.bmc("10.9.0.2").power is PowerState.ON


@pytest.fixture
def enforcing_cell(db_url, leaf_runner, fake):  # type: ignore[no-untyped-def]
    from conductorkit import Cell

    server = leaf_runner.start(db_url, bmc_timeout=1.0, power_sync_policy="enforce")
    c = Cell(server, leaf_runner)
    yield c
    c.close()


def test_enforce_policy_sets_the_recorded_state_back(enforcing_cell, fake, db_url) -> None:  # type: ignore[no-untyped-def]
    cell = enforcing_cell
    _rack(cell, fake, 2)
    fake.press_power("10.9.0.1", 0, True)
    result = cell.run(cell.server.power_sync.sweep())
    assert result.changes == 1 and result.enforced == 1
    assert fake.bmc("10.9.0.1").power is PowerState.OFF
    assert cell.get("s0").power_state == node_pb2.POWER_STATE_OFF
    assert {"power_out_of_band", "power_enforced"} <= set(_events(db_url, "s0"))


def test_a_dead_bmc_degrades_only_its_node(cell, fake) -> None:  # type: ignore[no-untyped-def]
    _rack(cell, fake, 4)
    fake.set_fault("10.9.0.3", 0, DriverErrorKind.TIMEOUT)
    result = cell.run(cell.server.power_sync.sweep())
    assert result.failures == 1 and result.failed_nodes == ["s2"]
    bad = cell.get("s2")
    assert bad.power_state == node_pb2.POWER_STATE_UNKNOWN and "10.9.0.3" in bad.last_error
    for name in ("s0", "s1", "s3"):
        node = cell.get(name)
        assert node.power_state == node_pb2.POWER_STATE_OFF and not node.last_error
    fake.set_fault("10.9.0.3", 0, None)
    cell.run(cell.server.power_sync.sweep())
    healed = cell.get("s2")
    assert healed.power_state == node_pb2.POWER_STATE_OFF and healed.last_error == ""


def test_sweep_exports_duration_and_failures_as_metrics(cell, fake) -> None:  # type: ignore[no-untyped-def]
    _rack(cell, fake, 3)
    fake.set_fault("10.9.0.1", 0, DriverErrorKind.AUTH)
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sync = PowerSync(cell.server.conductor, meter=meter)
    cell.run(sync.sweep())
    data = reader.get_metrics_data()
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert "rackcells.power_sync.duration" in metrics
    failures = metrics["rackcells.power_sync.failures"].data.data_points[0].value
    assert failures == 1
