"""One simulated BMC: pyghmi's IPMI 2.0 / RMCP+ server, fed by our own event loop.

pyghmi's server side (``pyghmi.ipmi.bmc.Bmc`` on ``serversession.IpmiServer``) does the real
protocol work here: RAKP key exchange, HMAC-SHA1 integrity, AES-CBC confidentiality and the
IPMI message framing.  What it gets wrong for a 1,000-BMC simulator is the plumbing around it,
so this subclass keeps the protocol and replaces the plumbing:

* ``IpmiServer.__init__`` binds through pyghmi's *client* socket pool and starts pyghmi's
  select()-based I/O thread, which wakes for every socket of the process, caps a process near
  1,024 descriptors and can miss a wake-up and stall for the full listen timeout (30 s).  We do
  not call it: the worker (:mod:`rackcells.sim.shard`) binds the socket, waits with epoll and
  hands each datagram to :meth:`SimBmc.datagram_received`.
* pyghmi keeps server sessions in the class-wide ``Session.bmc_handlers`` table keyed by the
  client address.  When a client that shares one UDP socket across many BMC ports (pyghmi's
  client does) starts a new login on one port, pyghmi deletes the client's sessions on *every*
  port of the process, and the next packet reaches a session object without
  ``sessionless_data`` and kills the listener.  Here each BMC owns its sessions
  (``SimBmc.sessions``), and a pre-session packet only ends that client's session on that port.
* pyghmi's server accepts every RMCP+ open-session proposal but only speaks cipher suite 3
  (HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128).  pyghmi's client proposes suite 17 first and then
  fails in RAKP2 with ``struct.error``.  We refuse anything but suite 3 with RMCP+ status 0x11
  ("no matching cipher suite"), which makes that client fall back to suite 3.
* Sessions were never freed (``close_server_session`` and the idle timeout are stubs); here a
  Close Session request or 60 s of silence ends one.

Boot options are re-implemented because pyghmi's version ignores the persistence flag and
reports the boot device selector unshifted (ipmitool would read "PXE" back as "default").
"""

from __future__ import annotations

import collections
import enum
import hashlib
import logging
import random
import socket
import struct
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.constants as ipmi_constants
from pyghmi.ipmi.private import serversession

from rackcells.sim.faults import FaultState
from rackcells.sim.machine import MachineSnapshot, PowerStateError, VirtualMachine

LOG = logging.getLogger(__name__)

SESSION_IDLE_SECONDS = 60.0  # what real BMCs use; pyghmi's client keeps alive every <29 s
_RMCP_IPMI = b"\x06\x00\xff\x07"
_ZERO_ID = b"\x00\x00\x00\x00"
_PAYLOAD_IPMI = 0x00
_PAYLOAD_OPEN_REQUEST = 0x10
_PAYLOAD_OPEN_RESPONSE = 0x11
_PAYLOAD_RAKP1 = 0x12
_PAYLOAD_RAKP2 = 0x13
_PAYLOAD_RAKP3 = 0x14
_STATUS_NO_CIPHER_SUITE = 0x11
_STATUS_UNAUTHORIZED_NAME = 0x0D
_CC_WRONG_STATE = 0xD5  # "command not supported in present state"
_CC_BAD_PARAMETER = 0x80  # get/set boot options: "parameter not supported"
_CC_INVALID_DATA = 0xCC
_SUITE3 = (1, 1, 1)  # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128

#: IPMI boot-flag device selector (data2 bits 5:2) <-> our boot-device names.
SELECTOR_TO_DEVICE = {
    0: "default",
    1: "pxe",
    2: "disk",
    3: "safe",
    5: "cdrom",
    6: "bios",
    15: "floppy",
}
DEVICE_TO_SELECTOR = {name: sel for sel, name in SELECTOR_TO_DEVICE.items()}

SockAddr = Any  # what socket.recvfrom returns: (host, port) or (host, port, flow, scope)


class PacketKind(enum.Enum):
    """How a received datagram must be routed."""

    JUNK = "junk"
    PRESESSION = "presession"  # sessionless IPMI: channel auth caps, cipher suites
    OPEN_SESSION = "open"  # RMCP+ open session request
    IN_SESSION = "session"  # RAKP 1/3 or an authenticated IPMI payload


def classify(data: bytes) -> PacketKind:
    """Decide, from the RMCP/IPMI session header alone, who must handle a datagram."""
    if len(data) < 14 or data[:4] != _RMCP_IPMI:
        return PacketKind.JUNK
    if data[4] == 6:  # RMCP+ (IPMI 2.0) session header
        if len(data) < 16:
            return PacketKind.JUNK
        payload_type = data[5] & 0x3F
        if payload_type == _PAYLOAD_OPEN_REQUEST:
            return PacketKind.OPEN_SESSION
        if payload_type in (_PAYLOAD_RAKP1, _PAYLOAD_RAKP3):
            return PacketKind.IN_SESSION
        if data[6:10] == _ZERO_ID:
            return PacketKind.PRESESSION if data[5] == _PAYLOAD_IPMI else PacketKind.JUNK
        return PacketKind.IN_SESSION
    # IPMI 1.5 header: only the sessionless form is served (this is a lanplus-only BMC).
    return PacketKind.PRESESSION if data[9:13] == _ZERO_ID else PacketKind.JUNK


def proposed_algorithms(request: bytes | bytearray) -> tuple[int, int, int] | None:
    """Authentication, integrity and confidentiality algorithms of an open-session request."""
    if len(request) < 32:
        return None
    return (request[12] & 0x3F, request[20] & 0x3F, request[28] & 0x3F)


def open_session_refusal(request: bytes | bytearray) -> bytes:
    """RMCP+ open-session response refusing the proposed cipher suite (status 0x11)."""
    payload = bytes([request[0], _STATUS_NO_CIPHER_SUITE, 0, 0]) + bytes(request[4:8])
    header = _RMCP_IPMI + bytes([6, _PAYLOAD_OPEN_RESPONSE]) + _ZERO_ID + _ZERO_ID
    return header + struct.pack("<H", len(payload)) + payload


class BmcHost(Protocol):
    """What a BMC needs from the worker that runs it."""

    def now(self) -> float:
        """Monotonic time."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the event loop at monotonic time ``when``."""
        ...

    def machine_changed(self, bmc: SimBmc) -> None:
        """The machine's state changed; schedule its next POST deadline."""
        ...


class Responder(Protocol):
    """The part of a server session a request handler answers through."""

    def send_ipmi_response(self, data: Any = ..., code: int = ...) -> None: ...


class _Accounts:
    """pyghmi's ``authdata``: user name -> the password this BMC currently expects."""

    def __init__(self, bmc: SimBmc) -> None:
        self._bmc = bmc

    def get(self, username: str) -> str | None:
        if username != self._bmc.username:
            return None
        expected = self._bmc.faults.expected_password
        return expected if expected is not None else self._bmc.password


class SimSession(serversession.ServerSession):  # type: ignore[misc]
    """A server session owned by one :class:`SimBmc` instead of pyghmi's global table."""

    def __new__(cls, *_args: object, **_kwargs: object) -> SimSession:
        # ServerSession.__new__ has a fixed signature; it only skips the client-side
        # session sharing, which object.__new__ does as well.
        return object.__new__(cls)

    def __init__(self, bmc: SimBmc, clientaddr: SockAddr, request: bytearray) -> None:
        # Same fields as ServerSession.__init__, minus its registration in the
        # process-wide Session.bmc_handlers table (the cause of bug 2).
        self.bmc = bmc
        self.uuid = bmc.uuid
        self.authdata = bmc.authdata
        self.kg = bmc.kg
        self.socket = bmc.serversocket
        self.sockaddr = clientaddr
        self.currhashlib = hashlib.sha1
        self.currhashlen = 12
        self.rqaddr = ipmi_constants.IPMI_BMC_ADDRESS
        self.servermode = True
        self.ipmiversion = 2.0
        self.sequencenumber = 0
        self.sessionid = 0
        self.lastpayload = None
        self.rqlun = None
        self.broken = False
        self.authtype = 6
        self.integrityalgo = 0
        self.confalgo = 0
        self.k1 = None  # pyghmi reads it before RAKP3 has set it
        self.clientpriv = 4  # pyghmi reads it if a client asks for privilege <= 1
        self.pendingpayloads: collections.deque[Any] = collections.deque()
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.last_seen = bmc.host.now()
        response = self.create_open_session_response(request)
        self.send_payload(
            response, ipmi_constants.payload_types["rmcpplusopenresponse"], retry=False
        )

    def _got_rakp1(self, data: bytearray) -> None:
        if bytes(data[4:8]) != bytes(self.managedsessionid):
            return  # for an older open-session exchange of a retrying client
        name_length = data[27] if len(data) > 27 else 0
        username = bytes(data[28 : 28 + name_length]).decode("utf-8", "replace")
        if name_length and self.authdata.get(username) is None:
            # pyghmi stays silent here; a real BMC says "unauthorized name" at once.
            payload = bytearray([data[0], _STATUS_UNAUTHORIZED_NAME, 0, 0])
            payload += self.clientsessionid
            self.send_payload(payload, _PAYLOAD_RAKP2, retry=False)
            return
        super()._got_rakp1(data)

    def _got_rakp3(self, data: bytearray) -> None:
        if bytes(data[4:8]) != bytes(self.managedsessionid) or not hasattr(self, "Rc"):
            return
        super()._got_rakp3(data)

    def _xmit_packet(
        self, retry: bool = True, delay_xmit: float | None = None, timeout: float | None = None
    ) -> None:
        # pyghmi's version goes through its client machinery (retry timers, getaddrinfo,
        # the shared handler table); a server reply is just one datagram.
        del retry, delay_xmit, timeout
        if self.sequencenumber:
            self.sequencenumber += 1
        self.bmc.transmit(bytes(self.netpacket), self.sockaddr)

    def close_server_session(self) -> None:
        self.bmc.forget_session(self)


class SimBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """The BMC of one :class:`VirtualMachine`, listening on its own UDP socket."""

    def __init__(
        self,
        machine: VirtualMachine,
        sock: socket.socket,
        *,
        address: str,
        port: int,
        username: str,
        password: str,
        faults: FaultState,
        host: BmcHost,
        system_uuid: uuid.UUID,
        rng: random.Random,
    ) -> None:
        # IpmiServer.__init__ is skipped on purpose (see the module docstring); these are
        # the attributes pyghmi's request handlers read.
        self.machine = machine
        self.serversocket = sock
        self.address = address
        self.port = port
        self.username = username
        self.password = password
        self.faults = faults
        self.host = host
        self.rng = rng
        self.uuid = system_uuid
        self.authdata = _Accounts(self)
        self.kg = None
        self.timeout = SESSION_IDLE_SECONDS
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.deviceid = 0x20
        self.revision = 1
        self.firmwaremajor = 1
        self.firmwareminor = 0
        self.ipmiversion = 2
        self.additionaldevices = 0
        self.mfgid = 0
        self.prodid = 0
        # Get Channel Authentication Capabilities: completion code, channel 1, IPMI 2.0
        # extended capabilities, non-null user names, IPMI 2.0 supported, no OEM data.
        self.authcap = bytes([0, 1, 0x80, 0x04, 0x02, 0, 0, 0, 0])
        self.sessions: dict[SockAddr, SimSession] = {}
        self.sessions_opened = 0
        self.packets_in = 0
        self.packets_dropped = 0

    # -- transport -----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: SockAddr) -> None:
        """Entry point from the event loop: apply transport faults, then serve."""
        self.packets_in += 1
        faults = self.faults
        if faults.unreachable or (faults.loss and self.rng.random() < faults.loss):
            self.packets_dropped += 1
            return
        if faults.slow > 0:
            self.host.call_at(self.host.now() + faults.slow, lambda: self.serve(data, addr))
            return
        self.serve(data, addr)

    def serve(self, data: bytes, addr: SockAddr) -> None:
        """Route one datagram to the right protocol handler."""
        kind = classify(data)
        if kind is PacketKind.OPEN_SESSION:
            self._open_session(bytearray(data[16:]), addr)
        elif kind is PacketKind.PRESESSION:
            # A new login from this client: its old session on this port (only) is over.
            self.sessions.pop(addr, None)
            self.sessionless_data(data, addr)
        elif kind is PacketKind.IN_SESSION:
            session = self.sessions.get(addr)
            if session is not None:
                session.last_seen = self.host.now()
                session._handle_ipmi_packet(bytearray(data), sockaddr=addr)

    def _open_session(self, request: bytearray, addr: SockAddr) -> None:
        if proposed_algorithms(request) != _SUITE3:
            self.sessions.pop(addr, None)
            self.transmit(open_session_refusal(request), addr)
            return
        self.sessions.pop(addr, None)
        self.sessions[addr] = SimSession(self, addr, request)
        self.sessions_opened += 1

    def transmit(self, packet: bytes, addr: SockAddr) -> None:
        """Send one reply; a vanished client is not the simulator's problem."""
        try:
            self.serversocket.sendto(packet, addr)
        except OSError as err:
            LOG.debug("%s: send to %s failed: %s", self.machine.name, addr, err)

    def forget_session(self, session: SimSession) -> None:
        if self.sessions.get(session.sockaddr) is session:
            del self.sessions[session.sockaddr]

    def expire_sessions(self, now: float) -> None:
        """Drop sessions idle for longer than a real BMC would keep them."""
        stale = [a for a, s in self.sessions.items() if now - s.last_seen > self.timeout]
        for addr in stale:
            del self.sessions[addr]

    # -- pyghmi Bmc hooks: chassis -------------------------------------------------------

    def get_power_state(self) -> str:
        self.machine.refresh(self.host.now())
        return "on" if self.machine.power_on else "off"

    def power_on(self) -> int:
        return self._power(self.machine.press_power_on)

    def power_off(self) -> int:
        return self._power(self.machine.press_power_off)

    def power_cycle(self) -> int:
        return self._power(self.machine.power_cycle)

    def power_reset(self) -> int:
        return self._power(self.machine.hard_reset)

    def power_shutdown(self) -> int:
        return self._power(self.machine.soft_off)

    def pulse_diag(self) -> int:
        return 0  # an NMI changes nothing the simulator models

    def _power(self, action: Callable[[float], object]) -> int:
        try:
            action(self.host.now())
        except PowerStateError:
            return _CC_WRONG_STATE
        self.host.machine_changed(self)
        return 0

    def get_system_guid(self) -> uuid.UUID:
        return self.uuid

    def cold_reset(self) -> int:
        # The BMC reboots: sessions are gone, the host keeps running.
        self.sessions.clear()
        return 0

    # -- pyghmi Bmc hooks: boot options --------------------------------------------------

    def get_system_boot_options(self, request: dict[str, Any], session: Responder) -> None:
        parameter = request["data"][0] & 0x7F if request["data"] else -1
        if parameter == 5:
            machine = self.machine
            machine.refresh(self.host.now())
            flags = 0
            if machine.boot_device != "default":
                flags = 0x80 | (0x40 if machine.persistent else 0) | (0x20 if machine.efi else 0)
            selector = DEVICE_TO_SELECTOR[machine.boot_device] << 2
            session.send_ipmi_response(data=[1, 5, flags, selector, 0, 0, 0])
        elif parameter == 0:
            session.send_ipmi_response(data=[1, 0, 0])  # set-in-progress: set complete
        else:
            session.send_ipmi_response(code=_CC_BAD_PARAMETER)

    def set_system_boot_options(self, request: dict[str, Any], session: Responder) -> None:
        data = request["data"]
        parameter = data[0] & 0x7F if data else -1
        if parameter in (0, 3, 4):
            # set-in-progress, valid-bit clearing and acknowledgements carry no state here
            session.send_ipmi_response()
            return
        if parameter != 5:
            session.send_ipmi_response(code=_CC_BAD_PARAMETER)
            return
        if len(data) < 3:
            session.send_ipmi_response(code=_CC_INVALID_DATA)
            return
        flags = data[1]
        device = SELECTOR_TO_DEVICE.get((data[2] >> 2) & 0x0F) if flags & 0x80 else "default"
        if device is None:
            session.send_ipmi_response(code=_CC_INVALID_DATA)
            return
        self.machine.set_boot_device(
            device, self.host.now(), persistent=bool(flags & 0x40), efi=bool(flags & 0x20)
        )
        self.host.machine_changed(self)
        session.send_ipmi_response()

    # -- reporting -----------------------------------------------------------------------

    def snapshot(self, wall_offset: float) -> MachineSnapshot:
        """The machine, its BMC endpoint and its faults, for the control API."""
        machine = self.machine
        machine.refresh(self.host.now())
        return MachineSnapshot(
            name=machine.name,
            index=machine.index,
            bmc_address=self.address,
            bmc_port=self.port,
            power="on" if machine.power_on else "off",
            phase=str(machine.phase),
            boot_device=machine.boot_device,
            persistent=machine.persistent,
            efi=machine.efi,
            booted_from=machine.booted_from,
            power_on_count=machine.power_on_count,
            boot_count=machine.boot_count,
            last_action=machine.last_action,
            last_change=round(machine.last_change + wall_offset, 3),
            power_changed_at=round(machine.power_changed_at + wall_offset, 3),
            faults=self.faults.as_json(),
            sessions=len(self.sessions),
            sessions_opened=self.sessions_opened,
            last_boot_script=str(machine.last_boot_script) if machine.last_boot_script else None,
            pxe_failures=machine.pxe_failures,
            agent_runs=machine.agent_runs,
            deploys=machine.deploys,
            deploy_error=machine.deploy_error,
            disk_bytes=machine.disk_bytes,
            disk_sha256=machine.disk_sha256,
            booted_image=machine.booted_image,
        )
