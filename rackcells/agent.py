"""The deploy agent: the program a node runs from its ramdisk to write its own image.

It is an actor, not a puppet: one ``AgentService.LookupNode`` call (by the machine's MACs) returns
the whole job, the agent streams the image from the leaf's cache straight to the target device
while hashing it, verifies checksum and size, and makes one ``ReportDeploy`` call with the
outcome.  The leaf never drives it step by step, so a slow or restarting leaf costs a retry, not
a failed deploy, and a rack of agents costs the leaf two calls each.

It needs only the standard library, grpcio and the generated ``rackcells.v1`` code, so it fits a
ramdisk, and it never holds an image in memory (images are larger than a ramdisk's RAM).  The
simulator (:mod:`rackcells.sim`) runs this very code against its virtual disks.

Where to find the leaf: ``--endpoint``, else ``rackcells.agent_endpoint=`` on the kernel command
line, which is where the leaf's iPXE script puts it.  The token of the plan authorises the report;
it is a secret and never appears in a log line or an error text.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf.duration_pb2 import Duration

from rackcells.v1 import agent_service_pb2 as pb
from rackcells.v1.agent_service_pb2_grpc import AgentServiceStub

LOG = logging.getLogger("rackcells.agent")

CHUNK_SIZE = 1 << 20
SYS_NET = Path("/sys/class/net")
PROC_CMDLINE = Path("/proc/cmdline")
ENDPOINT_PARAM = "rackcells.agent_endpoint"

#: Answers that mean "ask again later": the leaf is restarting or busy, or the node's deploy has
#: not reached the point where it waits for an agent (the agent may boot faster than the leaf
#: commits that state).
_RETRYABLE_LOOKUP = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
#: A report is worth repeating only while the leaf cannot be reached; any answer is final.
_RETRYABLE_REPORT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_FIRST_BACKOFF = 0.25
_MAX_BACKOFF = 5.0
_CANCEL_POLL = 0.1
_NO_MAC = "00:00:00:00:00:00"

_T = TypeVar("_T")
_R = TypeVar("_R")


class Device(Protocol):
    """Where the image goes; an open file or block device satisfies it.

    ``fileno`` may raise :class:`OSError` (e.g. ``io.UnsupportedOperation``) for devices that
    have no descriptor to fsync, such as the simulator's virtual disks.
    """

    def write(self, data: bytes | memoryview, /) -> int | None: ...

    def flush(self) -> None: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AgentResult:
    """What the agent did; ``seconds`` is the streaming-and-writing time it reported."""

    node: str
    deploy_id: str
    success: bool
    bytes_written: int
    checksum: str
    error: str
    seconds: float


class AgentError(Exception):
    """A step of the deploy failed; the message is what the leaf and the log are told."""


class Cancelled(Exception):
    """The caller asked the agent to stop (the simulated machine lost power)."""


class _PartialWrite(AgentError):
    """A failure after some bytes reached the device (they are reported)."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


@dataclass(frozen=True)
class _Written:
    bytes_written: int
    checksum: str
    seconds: float
    error: str


def run_agent(
    endpoint: str,
    macs: Sequence[str],
    open_device: Callable[[str], Device] | None = None,
    *,
    lookup_timeout: float = 60.0,
    rpc_timeout: float = 30.0,
    cancel: threading.Event | None = None,
) -> AgentResult:
    """Look the machine up, write its image, report; never raises for a failed deploy.

    ``open_device(target_device)`` opens the device to write (default: the path itself, ``wb``).
    ``lookup_timeout`` bounds how long the agent keeps asking a leaf that is unavailable or not
    ready yet, for the lookup and again for the report; ``rpc_timeout`` bounds each call and each
    read of the image download.  Setting ``cancel`` stops the agent at the next chunk or poll,
    without a report: the machine it runs on is gone.
    """
    opener: Callable[[str], Device] = open_device or _open_path
    channel = grpc.insecure_channel(endpoint, options=[("grpc.enable_http_proxy", 0)])
    leaf = _Leaf(AgentServiceStub(channel), lookup_timeout, rpc_timeout, cancel)
    try:
        LOG.info("looking up MACs %s at %s", ", ".join(macs), endpoint)
        try:
            found = leaf.lookup(macs)
        except AgentError as err:
            LOG.error("%s", err)
            return AgentResult("", "", False, 0, "", str(err), 0.0)
        plan = found.plan
        LOG.info(
            "node %s, deploy %s: %d bytes from %s to %s",
            found.node,
            plan.deploy_id,
            plan.image_size,
            _loggable_url(plan.image_url),
            plan.target_device,
        )
        written = _write_image(plan, opener, rpc_timeout, cancel)
        if written.error:
            LOG.error("deploy failed: %s", written.error)
        else:
            LOG.info("wrote and verified %d bytes in %.1fs", written.bytes_written, written.seconds)
        error = written.error
        try:
            leaf.report(found, written)
        except AgentError as err:
            LOG.error("%s", err)
            error = f"{error}; {err}" if error else str(err)
        return AgentResult(
            node=found.node,
            deploy_id=plan.deploy_id,
            success=not error,
            bytes_written=written.bytes_written,
            checksum=written.checksum,
            error=error,
            seconds=written.seconds,
        )
    except Cancelled:
        LOG.info("stopped: cancelled")
        return AgentResult("", "", False, 0, "", "cancelled", 0.0)
    finally:
        channel.close()


# -- the two round trips --------------------------------------------------------------------


class _Leaf:
    """The agent's side of AgentService: both calls, their retries, and cancellation."""

    def __init__(
        self,
        stub: AgentServiceStub,
        budget: float,
        rpc_timeout: float,
        cancel: threading.Event | None,
    ) -> None:
        self.stub = stub
        self.budget = budget
        self.rpc_timeout = rpc_timeout
        self.cancel = cancel

    def lookup(self, macs: Sequence[str]) -> pb.LookupNodeResponse:
        request = pb.LookupNodeRequest(macs=list(macs))
        return self._retrying(
            "lookup",
            lambda timeout: self._call(self.stub.LookupNode, request, timeout),
            _RETRYABLE_LOOKUP,
        )

    def report(self, found: pb.LookupNodeResponse, written: _Written) -> None:
        duration = Duration()
        duration.FromNanoseconds(round(written.seconds * 1e9))
        request = pb.ReportDeployRequest(
            node=found.node,
            deploy_id=found.plan.deploy_id,
            token=found.plan.token,
            success=not written.error,
            error=written.error,
            bytes_written=written.bytes_written,
            written_checksum=written.checksum,
            write_duration=duration,
        )
        self._retrying(
            "report",
            lambda timeout: self._call(self.stub.ReportDeploy, request, timeout),
            _RETRYABLE_REPORT,
        )
        LOG.info("reported %s", "failure" if written.error else "success")

    def _retrying(
        self,
        what: str,
        attempt: Callable[[float], _T],
        retryable: frozenset[grpc.StatusCode],
    ) -> _T:
        """Call until an answer that is not ``retryable``, with jittered exponential backoff."""
        deadline = time.monotonic() + self.budget
        delay = _FIRST_BACKOFF
        while True:
            remaining = deadline - time.monotonic()
            try:
                return attempt(max(0.5, min(self.rpc_timeout, remaining)))
            except grpc.RpcError as err:
                code, details = _status(err)
                if code not in retryable:
                    raise AgentError(f"{what} failed: {code.name}: {details}") from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AgentError(
                        f"{what} gave up after {self.budget:g}s: {code.name}: {details}"
                    ) from None
                pause = min(remaining, delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                LOG.info("%s: %s (%s), again in %.1fs", what, code.name, details, pause)
                self._sleep(pause)
                delay = min(delay * 2, _MAX_BACKOFF)

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[_R, _T], request: _R, timeout: float
    ) -> _T:
        """One unary call that the ``cancel`` event can interrupt."""
        if self.cancel is None:
            return method(request, timeout=timeout)
        future = method.future(request, timeout=timeout)
        while True:
            try:
                return future.result(timeout=_CANCEL_POLL)
            except grpc.FutureTimeoutError:
                if self.cancel.is_set():
                    future.cancel()
                    raise Cancelled from None

    def _sleep(self, seconds: float) -> None:
        if self.cancel is None:
            time.sleep(seconds)
        elif self.cancel.wait(seconds):
            raise Cancelled


def _status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return code, details or "no details"


# -- the image --------------------------------------------------------------------------------


def _write_image(
    plan: pb.DeployPlan,
    open_device: Callable[[str], Device],
    timeout: float,
    cancel: threading.Event | None,
) -> _Written:
    """Stream, write, fsync and verify; errors become the ``error`` text, never exceptions."""
    started = time.monotonic()
    digest = hashlib.sha256()
    written = 0
    error = ""
    try:
        expected = _expected_sha256(plan.image_checksum)
        written = _stream(plan, open_device, digest, timeout, cancel)
        actual = digest.hexdigest()
        if written != plan.image_size:
            error = f"size mismatch: wrote {written} bytes, the plan says {plan.image_size}"
        elif actual != expected:
            error = f"checksum mismatch: wrote sha256:{actual}, the plan says sha256:{expected}"
    except _PartialWrite as err:
        written = err.written
        error = str(err)
    except AgentError as err:
        error = str(err)
    except Cancelled:
        raise
    except Exception as err:
        # A bug here must still reach the leaf as a failed deploy, not leave it waiting.
        LOG.exception("unexpected error")
        error = f"agent error: {type(err).__name__}: {err}"
    return _Written(written, "sha256:" + digest.hexdigest(), time.monotonic() - started, error)


def _stream(
    plan: pb.DeployPlan,
    open_device: Callable[[str], Device],
    digest: hashlib._Hash,
    timeout: float,
    cancel: threading.Event | None,
) -> int:
    """Open the device, then the download, and copy; returns the bytes written."""
    # The device first: a missing or read-only disk fails the deploy before any download.
    try:
        device = open_device(plan.target_device)
    except OSError as err:
        if cancel is not None and cancel.is_set():
            raise Cancelled from None
        raise AgentError(f"cannot open {plan.target_device}: {err}") from None
    try:
        response = _open_image(plan.image_url, timeout)
        with contextlib.closing(response):
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != plan.image_size:
                raise AgentError(
                    f"image server offers {length} bytes at {_loggable_url(plan.image_url)}, "
                    f"the plan says {plan.image_size}"
                )
            written = _copy(response, device, plan, digest, cancel)
        _sync(device, plan.target_device, written)
    finally:
        with contextlib.suppress(OSError):
            device.close()
    return written


def _copy(
    response: HTTPResponse,
    device: Device,
    plan: pb.DeployPlan,
    digest: hashlib._Hash,
    cancel: threading.Event | None,
) -> int:
    """Chunk by chunk through one reused buffer: never more than a chunk of the image in
    memory, and no fresh allocation per chunk (at a hundred deploys a host, that is CPU)."""
    url = _loggable_url(plan.image_url)
    written = 0
    progress = _Progress(plan.image_size)
    buffer = memoryview(bytearray(CHUNK_SIZE))
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        try:
            got = response.readinto(buffer)
        except (OSError, HTTPException) as err:
            raise _PartialWrite(
                f"image download from {url} broke after {written} bytes: {err}", written
            ) from None
        if not got:
            return written
        chunk = buffer[:got]
        if written + len(chunk) > plan.image_size:
            raise _PartialWrite(
                f"image at {url} is larger than the plan's {plan.image_size} bytes", written
            )
        try:
            _write_all(device, chunk)
        except OSError as err:
            if cancel is not None and cancel.is_set():
                raise Cancelled from None
            raise _PartialWrite(
                f"writing {plan.target_device} failed at byte {written}: {err}", written
            ) from None
        digest.update(chunk)
        written += len(chunk)
        progress.update(written)


def _open_image(url: str, timeout: float) -> HTTPResponse:
    if urlsplit(url).scheme not in ("http", "https"):
        raise AgentError(f"image URL must be http(s): {_loggable_url(url)}")
    # The image comes from the leaf on the provisioning network: a proxy from the environment
    # would only send it the long way round, or nowhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        response = opener.open(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        raise AgentError(
            f"image download from {_loggable_url(url)} failed: HTTP {err.code} {err.reason}"
        ) from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise AgentError(f"image download from {_loggable_url(url)} failed: {reason}") from None
    if not isinstance(response, HTTPResponse):
        raise AgentError(f"unexpected response type from {_loggable_url(url)}")
    return response


def _write_all(device: Device, chunk: memoryview) -> None:
    done = device.write(chunk)
    while done is not None and done < len(chunk):
        if done <= 0:
            raise OSError("the device accepted no bytes")
        chunk = chunk[done:]
        done = device.write(chunk)


def _sync(device: Device, path: str, written: int) -> None:
    """Flush and fsync, so "verified" means "on the disk", not "in the page cache"."""
    try:
        device.flush()
        try:
            fd = device.fileno()
        except (OSError, ValueError):
            return  # nothing to fsync (a virtual disk)
        os.fsync(fd)
    except OSError as err:
        raise _PartialWrite(f"syncing {path} failed: {err}", written) from None


def _expected_sha256(checksum: str) -> str:
    algorithm, sep, value = checksum.strip().partition(":")
    value = value.lower()
    if not sep or algorithm.lower() != "sha256" or len(value) != 64:
        raise AgentError(f"the plan's checksum {checksum!r} is not sha256:HEX")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise AgentError(f"the plan's checksum {checksum!r} is not sha256:HEX") from None
    return value


class _Progress:
    """Logs every quarter of the image, so a stuck write is visible without flooding logs."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next_mark = 0.25

    def update(self, written: int) -> None:
        if self.total <= 0:
            return
        fraction = written / self.total
        if fraction >= self.next_mark:
            LOG.info("%d%% (%d of %d bytes)", int(fraction * 100), written, self.total)
            while self.next_mark <= fraction:
                self.next_mark += 0.25


def _loggable_url(url: str) -> str:
    """The URL without credentials or query string, which may carry signatures."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _open_path(path: str) -> BinaryIO:
    return open(path, "wb")


# -- command line ------------------------------------------------------------------------------


def discover_macs(sys_net: Path = SYS_NET) -> list[str]:
    """MACs of the machine's interfaces, skipping loopback and interfaces without one."""
    macs = []
    for entry in sorted(sys_net.glob("*/address")):
        if entry.parent.name == "lo":
            continue
        try:
            mac = entry.read_text().strip().lower()
        except OSError:
            continue
        if mac and mac != _NO_MAC and mac not in macs:
            macs.append(mac)
    return macs


def kernel_params(cmdline: str) -> dict[str, str]:
    """``key=value`` parameters of a kernel command line (bare words map to "")."""
    params = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        params[key] = value
    return params


def _boot_mac(params: dict[str, str]) -> str | None:
    """BOOTIF as iPXE (``aa:bb:…``) or pxelinux (``01-aa-bb-…``) writes it."""
    value = params.get("BOOTIF", "").lower()
    if value.startswith("01-") and len(value) == 20:
        value = value[3:].replace("-", ":")
    return value if len(value) == 17 else None


def _read_cmdline(path: Path = PROC_CMDLINE) -> dict[str, str]:
    try:
        return kernel_params(path.read_text())
    except OSError:
        return {}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rackcells.agent",
        description="Deploy agent: look this machine up at its leaf cell, write its image, "
        "verify it and report.",
    )
    parser.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help=f"the leaf's AgentService (default: {ENDPOINT_PARAM}= on the kernel command line)",
    )
    parser.add_argument(
        "--mac",
        action="append",
        default=[],
        help="a MAC of this machine, repeatable (default: BOOTIF and /sys/class/net)",
    )
    parser.add_argument(
        "--device", metavar="PATH", help="write here instead of the plan's target device"
    )
    parser.add_argument(
        "--lookup-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="keep asking a leaf that is unavailable or not ready this long (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when the image was written, verified and reported, 1 otherwise."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="rackcells-agent %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    params = _read_cmdline() if not (args.endpoint and args.mac) else {}
    endpoint = args.endpoint or params.get(ENDPOINT_PARAM)
    if not endpoint:
        parser.error(f"no --endpoint and no {ENDPOINT_PARAM}= on the kernel command line")
    macs = [m.lower() for m in args.mac]
    if not macs:
        boot_mac = _boot_mac(params)
        macs = ([boot_mac] if boot_mac else []) + discover_macs()
        macs = list(dict.fromkeys(macs))
    if not macs:
        parser.error("no --mac given and no network interface with a MAC found")
    override: str | None = args.device

    def open_override(_target: str) -> BinaryIO:
        assert override is not None
        return _open_path(override)

    result = run_agent(
        endpoint,
        macs,
        open_override if override else None,
        lookup_timeout=args.lookup_timeout,
    )
    if result.success:
        print(
            f"rackcells-agent: {result.node}: wrote {result.bytes_written} bytes, "
            f"{result.checksum}, in {result.seconds:.1f}s",
            file=sys.stderr,
        )
        return 0
    print(f"rackcells-agent: deploy failed: {result.error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
