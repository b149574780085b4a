"""SimBmc routing, cipher-suite refusal, faults and boot options, on loopback sockets."""

from __future__ import annotations

import random
import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rackcells.sim.bmc import (
    PacketKind,
    SimBmc,
    classify,
    open_session_refusal,
    proposed_algorithms,
)
from rackcells.sim.faults import FaultState
from rackcells.sim.machine import VirtualMachine

RMCP = b"\x06\x00\xff\x07"


def open_request(auth: int, integrity: int, confidentiality: int, tag: int = 9) -> bytes:
    payload = bytes([tag, 0, 0, 0]) + b"\x11\x22\x33\x44"
    for kind, algorithm in enumerate((auth, integrity, confidentiality)):
        payload += bytes([kind, 0, 0, 8, algorithm, 0, 0, 0])
    return RMCP + bytes([6, 0x10]) + bytes(8) + struct.pack("<H", len(payload)) + payload


def auth_capabilities_request() -> bytes:
    body = bytes([0x20, 0x18, 0xC8, 0x81, 0x00, 0x38, 0x8E, 0x04])
    body += bytes([-sum(body[3:]) & 0xFF])
    return RMCP + b"\x00" + bytes(8) + bytes([len(body)]) + body


class FakeHost:
    def __init__(self) -> None:
        self.time = 100.0
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.changed: list[str] = []

    def now(self) -> float:
        return self.time

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        self.timers.append((when, callback))

    def machine_changed(self, bmc: SimBmc) -> None:
        self.changed.append(bmc.machine.name)


class FakeSession:
    def __init__(self) -> None:
        self.replies: list[tuple[list[int], int]] = []

    def send_ipmi_response(self, data: Any = (), code: int = 0) -> None:
        self.replies.append((list(data), code))


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def make_bmc() -> Iterator[Callable[..., SimBmc]]:
    sockets: list[socket.socket] = []
    host = FakeHost()

    def make(index: int = 1, faults: FaultState | None = None) -> SimBmc:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        return SimBmc(
            VirtualMachine(name=f"u-n{index:04d}", index=index),
            sock,
            address="127.0.0.1",
            port=sock.getsockname()[1],
            username="admin",
            password="pw",
            faults=faults or FaultState(),
            host=host,
            system_uuid=uuid.uuid4(),
            rng=random.Random(0),
        )

    yield make
    for sock in sockets:
        sock.close()


def test_classify_headers() -> None:
    assert classify(open_request(1, 1, 1)) is PacketKind.OPEN_SESSION
    assert classify(auth_capabilities_request()) is PacketKind.PRESESSION
    rakp1 = RMCP + bytes([6, 0x12]) + bytes(8) + b"\x00\x00"
    assert classify(rakp1) is PacketKind.IN_SESSION
    in_session = RMCP + bytes([6, 0xC0]) + b"\x01\x02\x03\x04" + bytes(6)
    assert classify(in_session) is PacketKind.IN_SESSION
    assert classify(b"\x06\x00\xff\x06" + bytes(20)) is PacketKind.JUNK  # ASF ping
    assert classify(RMCP + b"\x00" + bytes(4) + b"\x01\x00\x00\x00" + bytes(3)) is PacketKind.JUNK
    assert classify(RMCP) is PacketKind.JUNK


def test_proposals_and_refusal_format() -> None:
    assert proposed_algorithms(open_request(3, 4, 1)[16:]) == (3, 4, 1)
    assert proposed_algorithms(b"short") is None
    refusal = open_session_refusal(open_request(3, 4, 1, tag=0x2A)[16:])
    assert refusal[:6] == RMCP + bytes([6, 0x11])
    payload = refusal[16:]
    assert payload[:2] == bytes([0x2A, 0x11])  # tag echoed, "no matching cipher suite"
    assert payload[4:8] == b"\x11\x22\x33\x44"  # the console's session id
    assert struct.unpack("<H", refusal[14:16])[0] == len(payload)


def test_suite_3_opens_a_session_and_suite_17_is_refused(
    make_bmc: Callable[..., SimBmc], client: socket.socket
) -> None:
    bmc = make_bmc()
    me = client.getsockname()
    bmc.serve(open_request(3, 4, 1), me)
    reply, _ = client.recvfrom(512)
    assert (reply[5], reply[17]) == (0x11, 0x11)
    assert (bmc.sessions, bmc.sessions_opened) == ({}, 0)

    bmc.serve(open_request(1, 1, 1), me)
    reply, _ = client.recvfrom(512)
    assert (reply[5], reply[17]) == (0x11, 0x00)
    assert list(bmc.sessions) == [me]
    assert bmc.sessions_opened == 1


def test_pre_session_packet_ends_only_that_ports_session(
    make_bmc: Callable[..., SimBmc], client: socket.socket
) -> None:
    first, second = make_bmc(1), make_bmc(2)
    me = client.getsockname()
    for bmc in (first, second):
        bmc.serve(open_request(1, 1, 1), me)
        client.recvfrom(512)
    second.serve(auth_capabilities_request(), me)
    reply, _ = client.recvfrom(512)
    assert reply[4] == 0  # an IPMI 1.5 sessionless answer
    assert second.sessions == {}
    assert list(first.sessions) == [me]


def test_idle_and_closed_sessions_are_forgotten(
    make_bmc: Callable[..., SimBmc], client: socket.socket
) -> None:
    bmc = make_bmc()
    me = client.getsockname()
    bmc.serve(open_request(1, 1, 1), me)
    bmc.expire_sessions(bmc.host.now() + 59)
    assert list(bmc.sessions) == [me]
    bmc.expire_sessions(bmc.host.now() + 61)
    assert bmc.sessions == {}
    bmc.serve(open_request(1, 1, 1), me)
    bmc.sessions[me].close_server_session()
    assert bmc.sessions == {}


def test_transport_faults(make_bmc: Callable[..., SimBmc], client: socket.socket) -> None:
    me = client.getsockname()
    dead = make_bmc(1, FaultState(unreachable=True))
    dead.datagram_received(auth_capabilities_request(), me)
    lossy = make_bmc(2, FaultState(loss=1.0))
    lossy.datagram_received(auth_capabilities_request(), me)
    assert (dead.packets_dropped, lossy.packets_dropped) == (1, 1)

    slow = make_bmc(3, FaultState(slow=2.0))
    slow.datagram_received(auth_capabilities_request(), me)
    host = slow.host
    assert isinstance(host, FakeHost)
    assert [when for when, _ in host.timers] == [102.0]
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recvfrom(512)  # nothing was answered yet: not by the dead, lossy or slow BMC
    host.timers[0][1]()
    client.settimeout(5)
    assert client.recvfrom(512)[0][:4] == RMCP


def test_wrong_password_fault_changes_what_the_bmc_expects(
    make_bmc: Callable[..., SimBmc],
) -> None:
    faults = FaultState()
    bmc = make_bmc(1, faults)
    assert bmc.authdata.get("admin") == "pw"
    faults.expected_password = "other"
    assert bmc.authdata.get("admin") == "other"
    assert bmc.authdata.get("root") is None


def test_boot_flags_round_trip_with_shifted_selector(make_bmc: Callable[..., SimBmc]) -> None:
    bmc = make_bmc()
    session = FakeSession()
    bmc.set_system_boot_options({"data": [5, 0x80 | 0x40, 1 << 2, 0, 0]}, session)
    assert (bmc.machine.boot_device, bmc.machine.persistent) == ("pxe", True)
    bmc.get_system_boot_options({"data": [5, 0, 0]}, session)
    assert session.replies[-1] == ([1, 5, 0xC0, 0x04, 0, 0, 0], 0)

    bmc.set_system_boot_options({"data": [5, 0x80 | 0x20, 2 << 2, 0, 0]}, session)
    bmc.get_system_boot_options({"data": [5, 0, 0]}, session)
    assert session.replies[-1] == ([1, 5, 0xA0, 0x08, 0, 0, 0], 0)

    bmc.set_system_boot_options({"data": [5, 0x00, 1 << 2, 0, 0]}, session)  # not valid
    assert bmc.machine.boot_device == "default"
    bmc.get_system_boot_options({"data": [5, 0, 0]}, session)
    assert session.replies[-1] == ([1, 5, 0x00, 0x00, 0, 0, 0], 0)


def test_boot_option_errors(make_bmc: Callable[..., SimBmc]) -> None:
    bmc = make_bmc()
    session = FakeSession()
    bmc.set_system_boot_options({"data": [5, 0x80, 9 << 2, 0, 0]}, session)
    bmc.set_system_boot_options({"data": [7, 0]}, session)
    bmc.get_system_boot_options({"data": [7, 0, 0]}, session)
    bmc.set_system_boot_options({"data": [3, 8]}, session)
    assert [code for _, code in session.replies] == [0xCC, 0x80, 0x80, 0]
    assert bmc.machine.boot_device == "default"


def test_chassis_control_codes(make_bmc: Callable[..., SimBmc]) -> None:
    bmc = make_bmc()
    assert bmc.power_cycle() == 0xD5
    assert bmc.power_reset() == 0xD5
    assert bmc.get_power_state() == "off"
    assert bmc.power_on() == 0
    assert bmc.get_power_state() == "on"
    assert bmc.power_cycle() == 0
    assert bmc.machine.power_on_count == 2
    host = bmc.host
    assert isinstance(host, FakeHost)
    assert host.changed == ["u-n0001", "u-n0001"]
