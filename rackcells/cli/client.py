"""The connection to one rackcells endpoint and the settings every command shares.

A leaf cell and the top cell serve the same API, so the CLI only ever needs one endpoint; the
cell is part of each resource name, not of the connection. (``CellService`` is the one
exception: only the top cell knows the other cells.) The channel is opened lazily so
that usage errors (a bare node id without a cell, a malformed import file) are reported
without touching the network.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import grpc
from google.longrunning import operations_pb2_grpc

from rackcells.cli.names import NodeRef, cell_parent, node_ref
from rackcells.cli.output import OutputFormat
from rackcells.v1 import (
    allocation_service_pb2_grpc,
    capacity_service_pb2_grpc,
    cell_service_pb2_grpc,
    node_service_pb2_grpc,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_TIMEOUT",
    "ENV_CELL",
    "ENV_ENDPOINT",
    "Session",
]

ENV_ENDPOINT = "RACKCELLS_ENDPOINT"
ENV_CELL = "RACKCELLS_CELL"
DEFAULT_ENDPOINT = "127.0.0.1:7001"
DEFAULT_TIMEOUT = 30.0

# A page of 1000 nodes with every field set is well under this; the default 4 MiB is not
# always enough once extra and traits grow.
_MAX_MESSAGE = 64 * 1024 * 1024


@dataclass
class Session:
    """What a command needs: where to connect, the default cell, deadline and output format.

    The service stubs (``nodes``, ``operations``, ``cells``, ``capacity``, ``allocations``) may
    be replaced by test doubles; otherwise they are created on first use over one shared
    channel.
    """

    endpoint: str = DEFAULT_ENDPOINT
    cell: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    output: OutputFormat = "table"
    # Whether stderr is a terminal: progress lines that redraw in place only make sense there.
    interactive: bool = False
    # Whether stdout is a terminal: `node watch` then draws live progress bars instead of
    # printing one line per event, which is what a pipe or a log file wants.
    live: bool = False
    _channel: grpc.Channel | None = field(default=None, repr=False)
    _nodes: node_service_pb2_grpc.NodeServiceStub | None = field(default=None, repr=False)
    _operations: operations_pb2_grpc.OperationsStub | None = field(default=None, repr=False)
    _cells: cell_service_pb2_grpc.CellServiceStub | None = field(default=None, repr=False)
    _capacity: capacity_service_pb2_grpc.CapacityServiceStub | None = field(
        default=None, repr=False
    )
    _allocations: allocation_service_pb2_grpc.AllocationServiceStub | None = field(
        default=None, repr=False
    )

    @classmethod
    def from_settings(
        cls,
        endpoint: str | None,
        cell: str | None,
        timeout: float | None,
        output: OutputFormat | None,
    ) -> Session:
        """Flags first, then ``RACKCELLS_ENDPOINT`` / ``RACKCELLS_CELL``, then the defaults."""
        return cls(
            endpoint=endpoint or os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT,
            cell=cell or os.environ.get(ENV_CELL) or None,
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            output=output or "table",
            interactive=sys.stderr.isatty(),
            live=sys.stdout.isatty(),
        )

    @property
    def json(self) -> bool:
        """Whether the operator asked for machine-readable output."""
        return self.output == "json"

    def channel(self) -> grpc.Channel:
        """The shared channel, opened on first use."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.endpoint,
                options=[
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                ],
            )
        return self._channel

    @property
    def nodes(self) -> node_service_pb2_grpc.NodeServiceStub:
        """The NodeService of the endpoint."""
        if self._nodes is None:
            self._nodes = node_service_pb2_grpc.NodeServiceStub(self.channel())
        return self._nodes

    @property
    def operations(self) -> operations_pb2_grpc.OperationsStub:
        """The ``google.longrunning.Operations`` service of the same endpoint.

        Operations live in the leaf that runs them and the top routes them by name, so the
        endpoint that started an operation can always answer for it.
        """
        if self._operations is None:
            self._operations = operations_pb2_grpc.OperationsStub(self.channel())
        return self._operations

    @property
    def cells(self) -> cell_service_pb2_grpc.CellServiceStub:
        """The CellService of the endpoint; only a top cell serves it."""
        if self._cells is None:
            self._cells = cell_service_pb2_grpc.CellServiceStub(self.channel())
        return self._cells

    @property
    def capacity(self) -> capacity_service_pb2_grpc.CapacityServiceStub:
        """The CapacityService: every cell through the top, its own cell at a leaf."""
        if self._capacity is None:
            self._capacity = capacity_service_pb2_grpc.CapacityServiceStub(self.channel())
        return self._capacity

    @property
    def allocations(self) -> allocation_service_pb2_grpc.AllocationServiceStub:
        """The AllocationService: claims through the top (any cell) or at a leaf (its own)."""
        if self._allocations is None:
            self._allocations = allocation_service_pb2_grpc.AllocationServiceStub(self.channel())
        return self._allocations

    def node(self, text: str) -> NodeRef:
        """Resolves a node argument against ``--cell``."""
        return node_ref(text, self.cell)

    def list_parent(self) -> str:
        """``cells/{cell}`` with a cell, ``cells/-`` (every cell the endpoint serves) without."""
        return cell_parent(self.cell)

    def close(self) -> None:
        """Closes the channel if one was opened."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
