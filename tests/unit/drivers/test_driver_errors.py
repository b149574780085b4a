"""Driver errors are clear for an operator, distinct per kind, and never carry the password."""

from __future__ import annotations

import pickle

import pytest

from leaf_cell.drivers.base import BmcAccess, DriverError, DriverErrorKind, PowerAction
from leaf_cell.drivers.errors import (
    auth_failed,
    protocol_error,
    redact,
    timed_out,
    unreachable,
    unsupported,
)
from leaf_cell.drivers.fake import FakeDriver

PASSWORD = "Tr0ub4dor&3-xyz"
BMC = BmcAccess("ipmi", "127.0.0.1", 16001, "admin", PASSWORD)


def every_error(bmc: BmcAccess, detail: str) -> dict[DriverErrorKind, DriverError]:
    return {
        DriverErrorKind.AUTH: auth_failed(bmc, detail),
        DriverErrorKind.TIMEOUT: timed_out(bmc, 5.0),
        DriverErrorKind.UNSUPPORTED: unsupported(bmc, "set boot device", detail),
        DriverErrorKind.UNREACHABLE: unreachable(bmc, detail),
        DriverErrorKind.PROTOCOL: protocol_error(bmc, "get power state", detail),
    }


def test_bmc_access_repr_and_str_hide_the_password() -> None:
    for text in (repr(BMC), str(BMC), f"{BMC}", f"{BMC!r}", repr([BMC]), repr({"b": BMC})):
        assert PASSWORD not in text
        assert "127.0.0.1" in text


def test_bmc_access_port_zero_means_623_and_ipv6_is_bracketed() -> None:
    assert BmcAccess("ipmi", "10.1.2.3", 0, "u", "p").endpoint == "10.1.2.3:623"
    assert BmcAccess("ipmi", "fd00::7", 6230, "u", "p").endpoint == "[fd00::7]:6230"
    assert BMC.effective_port == 16001


def test_messages_match_the_documented_wording() -> None:
    assert str(auth_failed(BMC)) == "BMC 127.0.0.1:16001 rejected the credentials of user 'admin'"
    assert str(timed_out(BMC, 5.0)) == "BMC 127.0.0.1:16001 did not answer within 5.0 s"
    assert str(unsupported(BMC, "set boot device")) == (
        "BMC 127.0.0.1:16001 does not support set boot device"
    )


def test_each_kind_has_its_own_message_naming_the_bmc() -> None:
    errors = every_error(BMC, "detail")
    assert len({str(e) for e in errors.values()}) == len(DriverErrorKind)
    for kind, err in errors.items():
        assert err.kind is kind
        assert str(err).startswith("BMC 127.0.0.1:16001 ")
        assert err.endpoint == "127.0.0.1:16001"


@pytest.mark.parametrize(
    "detail",
    [
        PASSWORD,
        f"login failed with password={PASSWORD}",
        f"b'{PASSWORD}' rejected",
        f"{PASSWORD}\n{PASSWORD}\x00trailing",
        "x" * 500 + PASSWORD,
    ],
)
def test_password_in_a_detail_never_reaches_the_message(detail: str) -> None:
    for err in every_error(BMC, detail).values():
        for text in (str(err), repr(err), err.message, repr(err.args)):
            assert PASSWORD not in text


def test_password_that_equals_the_user_name_is_still_hidden() -> None:
    same = BmcAccess("ipmi", "127.0.0.1", 16001, "operator7", "operator7")
    for err in every_error(same, "operator7").values():
        assert "operator7" not in str(err)


def test_redact_drops_control_characters_and_caps_length() -> None:
    assert redact("a\x1b[31mb\r\nc") == "a [31mb  c"
    assert len(redact("y" * 1000)) <= 200
    assert redact("pw=hunter2 and hunter2", "hunter2") == "pw=*** and ***"
    assert redact("nothing", "") == "nothing"


def test_driver_error_repr_and_pickle_keep_kind_and_message() -> None:
    err = timed_out(BMC, 2.5)
    assert repr(err) == "DriverError('timeout', 'BMC 127.0.0.1:16001 did not answer within 2.5 s')"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.kind, str(copy), copy.endpoint) == (err.kind, str(err), err.endpoint)


def test_fake_driver_errors_hide_the_password() -> None:
    fake = FakeDriver()
    fake.add_bmc("127.0.0.1", 16001, password="the-right-one")
    for kind in DriverErrorKind:
        fake.set_fault("127.0.0.1", 16001, kind)
        with pytest.raises(DriverError) as caught:
            fake.power.set_power(BMC, PowerAction.ON, 1.0)
        assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)
    fake.set_fault("127.0.0.1", 16001, None)
    with pytest.raises(DriverError) as caught:
        fake.power.get_power(BMC, 1.0)
    assert caught.value.kind is DriverErrorKind.AUTH
    assert PASSWORD not in str(caught.value) and "the-right-one" not in str(caught.value)
