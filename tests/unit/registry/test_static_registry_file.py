"""The static cell list: a YAML file is checked entry by entry with messages that name the
entry, membership never changes, and ``make_registry`` picks the registry from the setting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from top_cell.registry import CellInfo, StaticRegistry, ZkRegistry, make_registry

GOOD = """
cells:
  - name: rack-1
    endpoint: "127.0.0.1:7001"
  - {name: rack-2, endpoint: "leaf-2.example:7002", version: "1.4"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cells.yaml"
    path.write_text(text)
    return path


def test_a_good_file_gives_its_cells(tmp_path: Path) -> None:
    registry = make_registry(f"static:{write(tmp_path, GOOD)}")

    assert isinstance(registry, StaticRegistry)
    assert registry.static is True
    assert registry.cells() == {
        "rack-1": CellInfo("rack-1", "127.0.0.1:7001"),
        "rack-2": CellInfo("rack-2", "leaf-2.example:7002", "1.4"),
    }


def test_subscribers_hear_the_membership_once_and_it_never_changes(tmp_path: Path) -> None:
    registry = make_registry(f"static:{write(tmp_path, GOOD)}")
    heard: list[dict[str, CellInfo]] = []

    async def run() -> None:
        registry.subscribe(heard.append)
        await registry.start()
        await asyncio.sleep(0)
        await registry.stop()

    asyncio.run(run())
    assert heard == [registry.cells()]
    heard[0].clear()  # a subscriber's copy is its own
    assert len(registry.cells()) == 2


def test_an_empty_list_is_allowed(tmp_path: Path) -> None:
    assert make_registry(f"static:{write(tmp_path, 'cells: []')}").cells() == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cells: [", "not valid YAML"),
        ("- name: rack-1", "expected a mapping with a `cells` list"),
        ("cels: []", "expected a mapping with a `cells` list"),
        ("cells: []\nextra: 1", "unknown top-level keys ['extra']"),
        ("cells: {name: rack-1}", "`cells` must be a list"),
        ("cells: [rack-1]", "cells[0] must be a mapping"),
        ("cells: [{endpoint: '127.0.0.1:7001'}]", "cells[0]: `name` is required"),
        (
            "cells: [{name: rack-1, endpoint: '127.0.0.1:7001'}, {name: Rack_2, endpoint: 'h:1'}]",
            "cells[1] (name 'Rack_2'): cell id 'Rack_2' must be lower case",
        ),
        ("cells: [{name: -rack, endpoint: 'h:1'}]", "cells[0] (name '-rack'): cell id '-rack' is"),
        ("cells: [{name: rack-1}]", "cells[0] (name 'rack-1'): `endpoint` (HOST:PORT) is required"),
        (
            "cells: [{name: rack-1, endpoint: '127.0.0.1'}]",
            "cells[0] (name 'rack-1'): endpoint '127.0.0.1' is not HOST:PORT",
        ),
        (
            "cells: [{name: rack-1, endpoint: 'h:70000'}]",
            "cells[0] (name 'rack-1'): endpoint 'h:70000': port '70000'",
        ),
        (
            "cells: [{name: rack-1, endpoint: 'h:1', port: 2}]",
            "cells[0] (name 'rack-1'): unknown keys ['port']",
        ),
        (
            "cells: [{name: rack-1, endpoint: 'h:1', version: 2}]",
            "cells[0] (name 'rack-1'): `version` must be a string",
        ),
        (
            "cells:\n- {name: rack-1, endpoint: 'h:1'}\n- {name: rack-2, endpoint: 'h:2'}\n"
            "- {name: rack-1, endpoint: 'h:3'}",
            "cells[2] (name 'rack-1'): duplicate cell id, already used by cells[0]",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_entry(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        make_registry(f"static:{path}")
    assert str(info.value).startswith(f"registry static:{path}: ")
    assert problem in str(info.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the file: No such file"):
        make_registry(f"static:{tmp_path / 'nope.yaml'}")


def test_the_constructor_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate cell id 'rack-1'"):
        StaticRegistry([CellInfo("rack-1", "h:1"), CellInfo("rack-1", "h:2")])


def test_zk_urls_give_a_zookeeper_registry_without_connecting() -> None:
    registry = make_registry("zk://127.0.0.1:2181/rackcells/cells")
    assert isinstance(registry, ZkRegistry)
    assert registry.static is False
    assert registry.cells() == {}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "neither static:FILE"),
        ("cells.yaml", "neither static:FILE"),
        ("static:", "needs a file name"),
        ("zk://127.0.0.1/cells", "is not HOST:PORT"),
    ],
)
def test_bad_specs_are_refused(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^registry") as info:
        make_registry(spec)
    assert problem in str(info.value)
