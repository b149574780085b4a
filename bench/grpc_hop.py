"""The cost of one gRPC hop on this machine, for reading the federation's GetNode ratio.

Two tiny servers, each its own process like a leaf and the top: an *echo* NodeService whose
GetNode returns a fixed node without doing anything, and a *relay* that forwards GetNode to the
echo as the top's router does (grpc.aio, raw bytes both ways). Timing GetNode at the echo and
through the relay gives the ratio that one extra Python gRPC hop alone produces when the server
behind it does no work; a real leaf's work is what brings the federation's ratio below it.

    .venv/bin/python -m bench.grpc_hop            # prints p50/p95 direct, relayed, ratio
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from bench.harness import percentile
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

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


def measure(samples: int) -> tuple[list[float], list[float]]:
    """GetNode latencies (seconds) at the echo and through the relay, interleaved."""
    with _process("echo") as echo, _process("relay", echo) as relay:
        stubs = [
            node_service_pb2_grpc.NodeServiceStub(grpc.insecure_channel(address))
            for address in (echo, relay)
        ]
        request = node_service_pb2.GetNodeRequest(name=_NODE.name)
        times: tuple[list[float], list[float]] = ([], [])
        for k in range(samples + 50):
            for which in (0, 1) if k % 2 else (1, 0):
                t0 = time.perf_counter()
                stubs[which].GetNode(request, timeout=30)
                if k >= 50:  # warm-up
                    times[which].append(time.perf_counter() - t0)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve[1] if args.serve[0] == "relay" else None))
        return
    direct, relayed = measure(args.samples)
    for pct in (50, 95):
        d, r = percentile(direct, pct), percentile(relayed, pct)
        print(f"p{pct}: direct {d * 1000:.2f} ms, relayed {r * 1000:.2f} ms, ratio {r / d:.2f}")


if __name__ == "__main__":
    main()
