"""The cost of one hop on this machine, for reading the federation's GetNode ratio.

Three tiny processes, like a leaf and the top: an *echo* NodeService whose GetNode returns a
fixed node without doing anything; a *gRPC relay* that forwards GetNode to the echo the way a
gRPC proxy written with grpc.aio would (raw bytes both ways); and the top's own *front*
(:mod:`top_cell.front`), which relays the call's HTTP/2 frames. Timing GetNode at the echo and
through each relay shows what one hop costs when the server behind it does no work, and why the
top relays frames instead of terminating gRPC.

    .venv/bin/python -m bench.grpc_hop            # p50/p95 direct, through each relay, ratios
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.harness import percentile
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc
from top_cell.front import Front

_SERVICE = "rackcells.v1.NodeService"
_NODE = node_pb2.Node(name="cells/c/nodes/n1", uid="0" * 36, resource_class="baremetal")


def _handler(behaviour: object) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "GetNode": grpc.unary_unary_rpc_method_handler(
                behaviour,  # type: ignore[arg-type]
                request_deserializer=node_service_pb2.GetNodeRequest.FromString,
                response_serializer=lambda data: data,
            )
        },
    )


class _Everywhere:
    """Routes for the front: every cell lives at the echo."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    def endpoint(self, cell: str) -> str | None:
        return self._endpoint


async def _serve_front(target: str) -> None:
    front = Front(_Everywhere(target), "/nonexistent")  # nothing falls back in this benchmark
    print(await front.listen("127.0.0.1:0"), flush=True)
    await asyncio.Event().wait()


async def _serve(target: str | None) -> None:
    reply = _NODE.SerializeToString()
    forward: Any = None
    if target is not None:
        forward = grpc.aio.insecure_channel(target).unary_unary(
            f"/{_SERVICE}/GetNode",
            request_serializer=node_service_pb2.GetNodeRequest.SerializeToString,
            response_deserializer=None,
        )

    async def get(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if forward is None:
            return reply
        data: bytes = await forward(request, timeout=context.time_remaining())
        return data

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(get),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


@contextmanager
def _process(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_hop", "--serve", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield f"127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Hops:
    """GetNode latencies (seconds): at the echo, through a gRPC relay, through the front."""

    direct: list[float] = field(default_factory=list)
    grpc_relay: list[float] = field(default_factory=list)
    front: list[float] = field(default_factory=list)


def measure(samples: int) -> Hops:
    """The three ways, interleaved in a rotating order after a warm-up of each channel."""
    hops = Hops()
    with (
        _process("echo") as echo,
        _process("relay", echo) as relay,
        _process("front", echo) as front,
    ):
        ways = [
            (node_service_pb2_grpc.NodeServiceStub(grpc.insecure_channel(address)), into)
            for address, into in (
                (echo, hops.direct),
                (relay, hops.grpc_relay),
                (front, hops.front),
            )
        ]
        request = node_service_pb2.GetNodeRequest(name=_NODE.name)
        for k in range(samples + 50):
            for stub, into in ways[k % 3 :] + ways[: k % 3]:
                t0 = time.perf_counter()
                stub.GetNode(request, timeout=30)
                if k >= 50:  # warm-up
                    into.append(time.perf_counter() - t0)
    return hops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, target = args.serve[0], args.serve[1] if len(args.serve) > 1 else None
        if kind == "front" and target is not None:
            asyncio.run(_serve_front(target))
        else:
            asyncio.run(_serve(target))
        return
    hops = measure(args.samples)
    for pct in (50, 95):
        d, g, f = (percentile(x, pct) for x in (hops.direct, hops.grpc_relay, hops.front))
        print(
            f"p{pct}: direct {d * 1000:.2f} ms; gRPC relay {g * 1000:.2f} ms (ratio {g / d:.2f}); "
            f"front {f * 1000:.2f} ms (ratio {f / d:.2f})"
        )


if __name__ == "__main__":
    main()
