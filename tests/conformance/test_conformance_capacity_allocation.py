"""CapacityService and AllocationService answer the same directly at a leaf and through the top
cell (which answers capacity from the inventory it derives from the leaves' streams, so each
test lets it catch up with ``api.settle()`` first).
"""

from __future__ import annotations

import grpc
from conformance_kit import (
    PA,
    RPC_GUARD,
    Api,
    error_info,
    fake_node,
    rpc_error,
    unique,
)
from google.protobuf import field_mask_pb2

from rackcells.v1 import (
    allocation_service_pb2,
    capacity_service_pb2,
    node_pb2,
    node_service_pb2,
)

AP = allocation_service_pb2.AllocationPolicy


def capacity(
    api: Api, parent: str, rc: str = "", **traits: list[str]
) -> capacity_service_pb2.GetCapacityResponse:
    return api.capacity.GetCapacity(
        capacity_service_pb2.GetCapacityRequest(parent=parent, resource_class=rc, **traits),
        timeout=RPC_GUARD,
    )


def counts(**values: int) -> capacity_service_pb2.CapacityCounts:
    return capacity_service_pb2.CapacityCounts(**values)


def claim(
    api: Api,
    rc: str,
    parent: str | None = None,
    policy: allocation_service_pb2.AllocationPolicy.ValueType = AP.ALLOCATION_POLICY_UNSPECIFIED,
    **traits: list[str],
) -> allocation_service_pb2.Allocation:
    return api.allocations.CreateAllocation(
        allocation_service_pb2.CreateAllocationRequest(
            parent=parent or api.parent,
            allocation=allocation_service_pb2.Allocation(resource_class=rc, **traits),
            policy=policy,
        ),
        timeout=RPC_GUARD,
    )


def test_capacity_counts_a_class_by_state_and_traits(api: Api) -> None:
    rc, prefix = unique("rc-"), unique("c")
    # 0,1 available (1 with CUSTOM_GPU); 2 available in maintenance; 3 manageable; 4 enroll.
    for i in range(5):
        traits = ["CUSTOM_GPU"] if i in (1, 3) else []
        api.create(f"{prefix}-{i}", fake_node(rc, traits=traits))
    for i in (0, 1, 2):
        api.make_available(f"{prefix}-{i}")
    api.nodes.UpdateNode(
        node_service_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=api.name(f"{prefix}-2"), maintenance=True),
            update_mask=field_mask_pb2.FieldMask(paths=["maintenance"]),
        ),
        timeout=RPC_GUARD,
    )
    api.run(f"{prefix}-3", PA.PROVISION_ACTION_MANAGE)
    api.settle()

    whole = capacity(api, api.parent, rc)
    assert whole.totals == counts(total=5, available=2, maintenance=1)
    assert [c.cell for c in whole.cells] == [api.parent]
    cell = whole.cells[0]
    assert cell.counts == whole.totals and cell.schedulable
    assert cell.generation == api.leaf_generation()
    assert not whole.unreachable

    gpu = capacity(api, api.parent, rc, required_traits=["CUSTOM_GPU"])
    assert gpu.totals == counts(total=2, available=1)
    no_gpu = capacity(api, api.parent, rc, forbidden_traits=["CUSTOM_GPU"])
    assert no_gpu.totals == counts(total=3, available=1, maintenance=1)
    nobody = capacity(api, api.parent, rc, required_traits=["CUSTOM_NOBODY"])
    assert nobody.totals == counts()
    # Over every cell the leaf answers for itself and the top for all; this class lives in one.
    assert capacity(api, "cells/-", rc).totals == whole.totals


def test_capacity_of_every_class_matches_the_leafs_own_figures(api: Api) -> None:
    api.create(unique("c"), fake_node(unique("rc-")))
    api.settle()
    own = api.leaf_channel  # the leaf itself, whatever api talks to
    leaf = Api("leaf", api.cell, own, own)
    assert capacity(api, api.parent).cells[0].counts == capacity(leaf, api.parent).totals


def test_allocations_claim_available_nodes_until_none_is_left(api: Api) -> None:
    rc, prefix = unique("rc-"), unique("a")
    for i in range(2):
        api.create(f"{prefix}-{i}", fake_node(rc, traits=["CUSTOM_GPU"] if i else []))
        api.make_available(f"{prefix}-{i}")
    api.settle()

    gpu = claim(api, rc, required_traits=["CUSTOM_GPU"])
    assert gpu.name.startswith(f"cells/{api.cell}/allocations/")
    assert gpu.node == api.name(f"{prefix}-1")
    assert (gpu.resource_class, list(gpu.required_traits)) == (rc, ["CUSTOM_GPU"])
    assert gpu.HasField("create_time")
    assert api.get(f"{prefix}-1").allocation == gpu.name
    got = api.allocations.GetAllocation(
        allocation_service_pb2.GetAllocationRequest(name=gpu.name), timeout=RPC_GUARD
    )
    assert got == gpu

    other = claim(api, rc, forbidden_traits=["CUSTOM_GPU"])
    assert other.node == api.name(f"{prefix}-0")
    none_left = rpc_error(
        api.allocations.CreateAllocation,
        allocation_service_pb2.CreateAllocationRequest(
            parent=api.parent, allocation=allocation_service_pb2.Allocation(resource_class=rc)
        ),
    )
    assert none_left.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, none_left.details()

    claimed = rpc_error(api.nodes.DeleteNode, node_service_pb2.DeleteNodeRequest(name=gpu.node))
    assert claimed.code() == grpc.StatusCode.FAILED_PRECONDITION, claimed.details()

    api.settle()
    assert capacity(api, api.parent, rc).totals == counts(total=2, allocated=2)

    api.allocations.DeleteAllocation(
        allocation_service_pb2.DeleteAllocationRequest(name=gpu.name), timeout=RPC_GUARD
    )
    assert api.get(f"{prefix}-1").allocation == ""
    gone = rpc_error(
        api.allocations.GetAllocation, allocation_service_pb2.GetAllocationRequest(name=gpu.name)
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND, gone.details()
    again = rpc_error(
        api.allocations.DeleteAllocation,
        allocation_service_pb2.DeleteAllocationRequest(name=gpu.name),
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND, again.details()

    api.settle()
    assert capacity(api, api.parent, rc).totals == counts(total=2, available=1, allocated=1)
    # Over every cell: the leaf claims from itself, the top picks the cell from its inventory.
    anywhere = claim(api, rc, parent="cells/-", policy=AP.ALLOCATION_POLICY_PACK)
    assert anywhere.node == api.name(f"{prefix}-1")
    assert anywhere.name.startswith(f"cells/{api.cell}/allocations/")


def test_a_claim_for_a_class_nobody_has_is_resource_exhausted(api: Api) -> None:
    for parent in (api.parent, "cells/-"):
        err = rpc_error(
            api.allocations.CreateAllocation,
            allocation_service_pb2.CreateAllocationRequest(
                parent=parent,
                allocation=allocation_service_pb2.Allocation(resource_class=unique("rc-")),
            ),
        )
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (parent, err.details())
        info = error_info(err)
        assert info is not None and info.reason == "RESOURCE_EXHAUSTED"
