"""``load_driver`` hands out one shared instance per driver name and refuses unknown names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leaf_cell.drivers import available_drivers, load_driver
from leaf_cell.drivers.fake import FakeDriver
from leaf_cell.drivers.ipmi import IpmiDriver


def test_known_names() -> None:
    assert available_drivers() == ("fake", "ipmi")


def test_fake_is_shared_until_closed() -> None:
    first = load_driver("fake")
    assert isinstance(first, FakeDriver)
    assert load_driver("fake") is first
    first.close()
    second = load_driver("fake")
    assert second is not first and not getattr(second, "closed", True)


def test_ipmi_is_a_process_wide_ipmi_driver() -> None:
    driver = load_driver("ipmi")
    assert isinstance(driver, IpmiDriver)
    assert driver.name == "ipmi"
    assert driver.power is driver and driver.boot is driver
    assert load_driver("ipmi") is driver


@pytest.mark.parametrize("name", ["", "IPMI", "redfish", "ipmitool", "fake "])
def test_unknown_name_is_a_value_error_listing_the_known_ones(name: str) -> None:
    with pytest.raises(ValueError, match="known: fake, ipmi"):
        load_driver(name)


def test_fake_driver_does_not_import_pyghmi() -> None:
    code = (
        "import sys; from leaf_cell.drivers import load_driver; load_driver('fake'); "
        "print('pyghmi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
