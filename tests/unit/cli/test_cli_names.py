"""Node arguments resolve to full resource names, or fail before any call with a hint."""

from __future__ import annotations

import pytest

from rackcells.cli.errors import EXIT_USAGE, UsageError
from rackcells.cli.names import ALL_CELLS_PARENT, cell_parent, node_ref, short_node_name


def test_full_name_is_taken_as_is() -> None:
    ref = node_ref("cells/rack-2/nodes/n1", None)
    assert (ref.cell, ref.node, str(ref), ref.parent) == (
        "rack-2",
        "n1",
        "cells/rack-2/nodes/n1",
        "cells/rack-2",
    )


def test_full_name_wins_over_default_cell() -> None:
    assert str(node_ref("cells/rack-2/nodes/n1", "rack-1")) == "cells/rack-2/nodes/n1"


def test_bare_id_uses_cell() -> None:
    assert str(node_ref("n1", "rack-1")) == "cells/rack-1/nodes/n1"


def test_bare_id_without_cell_is_a_usage_error_that_says_how_to_fix_it() -> None:
    with pytest.raises(UsageError) as info:
        node_ref("n1", None)
    assert info.value.exit_code == EXIT_USAGE
    assert "--cell" in info.value.message and "RACKCELLS_CELL" in info.value.message


@pytest.mark.parametrize(
    "text",
    ["cells/rack-1/n1", "cells/rack-1/nodes/", "cells/Rack/nodes/n1", "rack-1/n1", "N1", "-n1"],
)
def test_malformed_names_are_rejected(text: str) -> None:
    with pytest.raises(UsageError):
        node_ref(text, "rack-1")


def test_bad_default_cell_is_rejected() -> None:
    with pytest.raises(UsageError, match="cell"):
        node_ref("n1", "Rack_1")


def test_list_parent_is_wildcard_without_cell() -> None:
    assert cell_parent(None) == ALL_CELLS_PARENT == "cells/-"
    assert cell_parent("rack-1") == "cells/rack-1"


def test_short_names() -> None:
    assert short_node_name("cells/r1/nodes/n1", with_cell=False) == "n1"
    assert short_node_name("cells/r1/nodes/n1", with_cell=True) == "r1/n1"
    assert short_node_name("odd", with_cell=True) == "odd"
