"""The control API's contract: errors, fault bodies, the button, and the client's typing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from rackcells.sim.control import SimControl, SimControlError
from rackcells.sim.harness import RunningSim, wait_until


@pytest.fixture(scope="module")
def sim(launch_sim: Callable[..., RunningSim]) -> RunningSim:
    return launch_sim(3, "--post-seconds", "0.2", "--fault", "slow=0.5:3", prefix="ca-n")


def test_unknown_machine_and_route_are_404(sim: RunningSim) -> None:
    with pytest.raises(SimControlError) as err:
        sim.control.machine("ca-n9999")
    assert err.value.status == 404
    with pytest.raises(SimControlError) as err:
        sim.control.press_power("nope", True)
    assert err.value.status == 404
    with pytest.raises(SimControlError) as err:
        sim.control._call("POST", f"/machines/{sim.name(1)}/explode", {})
    assert err.value.status == 404


def test_bad_bodies_are_400_and_change_nothing(sim: RunningSim) -> None:
    name = sim.name(1)
    with pytest.raises(SimControlError) as err:
        sim.control._call("POST", f"/machines/{name}/fault", {"loss": 7})
    assert err.value.status == 400
    with pytest.raises(SimControlError) as err:
        sim.control._call("POST", f"/machines/{name}/power", {"on": "yes"})
    assert err.value.status == 400
    request = urllib.request.Request(
        sim.control.url + f"/machines/{name}/fault", data=b"not json", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request)
    assert http_err.value.code == 400
    machine = sim.control.machine(name)
    assert machine["faults"] == {
        "unreachable": False,
        "slow": 0.0,
        "loss": 0.0,
        "bad_credentials": False,
    }
    assert machine["power"] == "off"


def test_cli_faults_are_visible_and_can_be_cleared(sim: RunningSim) -> None:
    name = sim.name(3)
    assert sim.control.machine(name)["faults"]["slow"] == 0.5
    changed = sim.control.set_fault(name, loss=0.25, bad_credentials=True)
    assert changed["faults"] == {
        "unreachable": False,
        "slow": 0.5,
        "loss": 0.25,
        "bad_credentials": True,
    }
    assert sim.control.clear_faults(name)["faults"]["slow"] == 0.0


def test_button_starts_post_and_the_machine_boots(sim: RunningSim) -> None:
    name = sim.name(2)
    pressed = sim.control.press_power(name, True)
    assert (pressed["power"], pressed["phase"], pressed["power_on_count"]) == ("on", "post", 1)
    wait_until(lambda: sim.control.machine(name)["phase"] == "booted", "POST to end")
    booted = sim.control.machine(name)
    assert (booted["booted_from"], booted["boot_count"]) == ("disk", 1)
    assert booted["last_change"] >= pressed["power_changed_at"]
    off = sim.control.press_power(name, False)
    assert (off["power"], off["phase"], off["last_action"]) == ("off", "off", "button power off")


def test_summary_and_listing(sim: RunningSim) -> None:
    summary = sim.control.summary()
    assert summary["nodes"] == 3
    assert (summary["first_port"], summary["last_port"]) == (sim.port(1), sim.port(3))
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        sim.control.url + "/machines"
    ) as response:
        assert [m["name"] for m in json.load(response)["machines"]] == [
            sim.name(i) for i in (1, 2, 3)
        ]


def test_client_refuses_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        SimControl("file:///etc/passwd")
