"""Typed client of the simulator's control API, for tests and tools.

It uses urllib with proxies switched off: the control API lives on loopback, and an
``http_proxy`` in the environment must not send "power off r1-n0007" somewhere else.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, cast

from rackcells.sim.machine import MachineSnapshot


class SimControlError(Exception):
    """The control API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SimControl:
    """``SimControl("http://127.0.0.1:PORT")``: observe and steer simulated machines."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"control URL must be http(s): {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def summary(self) -> dict[str, Any]:
        """Rack-wide figures: node count, ports, per-worker session and packet counters."""
        return cast(dict[str, Any], self._call("GET", "/"))

    def machines(self) -> list[MachineSnapshot]:
        """Every machine of the rack, in node order."""
        return cast(list[MachineSnapshot], self._call("GET", "/machines")["machines"])

    def machine(self, name: str) -> MachineSnapshot:
        """One machine; raises :class:`SimControlError` (404) for an unknown name."""
        return cast(MachineSnapshot, self._call("GET", f"/machines/{name}"))

    def set_fault(
        self,
        name: str,
        *,
        clear: bool = False,
        unreachable: bool | None = None,
        slow: float | None = None,
        loss: float | None = None,
        bad_credentials: bool | str | None = None,
    ) -> MachineSnapshot:
        """Change a BMC's faults; ``None`` leaves a fault as it is, ``clear`` resets all first.

        ``slow``/``loss`` of 0 switch those faults off; ``bad_credentials`` may be the
        password the BMC should expect instead of ``True``.
        """
        body: dict[str, object] = {"clear": clear} if clear else {}
        for key, value in (
            ("unreachable", unreachable),
            ("slow", slow),
            ("loss", loss),
            ("bad_credentials", bad_credentials),
        ):
            if value is not None:
                body[key] = value
        return cast(MachineSnapshot, self._call("POST", f"/machines/{name}/fault", body))

    def clear_faults(self, name: str) -> MachineSnapshot:
        """Make a BMC healthy again."""
        return self.set_fault(name, clear=True)

    def press_power(self, name: str, on: bool) -> MachineSnapshot:
        """Switch a machine on or off out of band, as if someone pressed its button."""
        return cast(MachineSnapshot, self._call("POST", f"/machines/{name}/power", {"on": on}))

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        # S310: the scheme was checked in __init__
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            try:
                message = json.load(err).get("error", err.reason)
            except ValueError:
                message = str(err.reason)
            raise SimControlError(err.code, str(message)) from None
