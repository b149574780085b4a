"""common.listing: page sizes, the filter language and order_by, parsed without a database."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgument
from common.listing import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Condition,
    OrderKey,
    page_size,
    parse_filter,
    parse_order_by,
)


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (0, DEFAULT_PAGE_SIZE),
        (1, 1),
        (100, 100),
        (999, 999),
        (1000, 1000),
        (1001, 1000),
        (2**31 - 1, 1000),
    ],
)
def test_page_size_defaults_zero_to_100_and_caps_at_1000(requested: int, expected: int) -> None:
    assert DEFAULT_PAGE_SIZE == 100
    assert MAX_PAGE_SIZE == 1000
    assert page_size(requested) == expected


@pytest.mark.parametrize("requested", [-1, -(2**31)])
def test_a_negative_page_size_is_rejected_naming_page_size(requested: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        page_size(requested)
    assert fields_of(exc) == ["page_size"]


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_an_empty_filter_has_no_conditions(text: str) -> None:
    assert parse_filter(text).conditions == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("provision_state = AVAILABLE", Condition("provision_state", "=", "AVAILABLE")),
        ("provision_state = available", Condition("provision_state", "=", "AVAILABLE")),
        ("provision_state = PROVISION_STATE_ACTIVE", Condition("provision_state", "=", "ACTIVE")),
        ("provision_state != ENROLL", Condition("provision_state", "!=", "ENROLL")),
        ("power_state = POWER_STATE_ON", Condition("power_state", "=", "ON")),
        ("power_state=off", Condition("power_state", "=", "OFF")),
        ('resource_class = "gpu"', Condition("resource_class", "=", "gpu")),
        ("resource_class = 'gpu'", Condition("resource_class", "=", "gpu")),
        ("resource_class = gpu", Condition("resource_class", "=", "gpu")),
        ('resource_class="gpu"', Condition("resource_class", "=", "gpu")),
        ('resource_class != "gpu"', Condition("resource_class", "!=", "gpu")),
        ("maintenance = true", Condition("maintenance", "=", True)),
        ("maintenance = FALSE", Condition("maintenance", "=", False)),
        ("maintenance != false", Condition("maintenance", "!=", False)),
        ('traits:"CUSTOM_A"', Condition("traits", "has", "CUSTOM_A")),
        ("traits:CUSTOM_A", Condition("traits", "has", "CUSTOM_A")),
        ('-traits:"CUSTOM_A"', Condition("traits", "has_not", "CUSTOM_A")),
    ],
)
def test_each_condition_parses_to_its_field_operator_and_normalised_value(
    text: str, expected: Condition
) -> None:
    assert parse_filter(text).conditions == (expected,)


def test_conditions_joined_by_and_are_kept_in_order() -> None:
    parsed = parse_filter(
        'provision_state = AVAILABLE AND resource_class = "gpu" AND maintenance = false '
        'AND traits:"CUSTOM_RACK_R1" AND -traits:"CUSTOM_BAD"'
    )
    assert parsed.conditions == (
        Condition("provision_state", "=", "AVAILABLE"),
        Condition("resource_class", "=", "gpu"),
        Condition("maintenance", "=", False),
        Condition("traits", "has", "CUSTOM_RACK_R1"),
        Condition("traits", "has_not", "CUSTOM_BAD"),
    )


def test_and_inside_a_quoted_value_does_not_split_the_condition() -> None:
    assert parse_filter('resource_class = "a AND b"').conditions == (
        Condition("resource_class", "=", "a AND b"),
    )


@pytest.mark.parametrize("value", ["OR", "A-OR-B", "gpu.OR"])
def test_the_word_or_inside_a_quoted_value_is_a_value_not_an_operator(value: str) -> None:
    """Resource classes such as ``A-OR-B`` are valid; quoting them must make them filterable."""
    assert parse_filter(f'resource_class = "{value}"').conditions == (
        Condition("resource_class", "=", value),
    )


@pytest.mark.parametrize(
    "text",
    [
        "colour = red",
        "name = node-1",
        "provision_state = FLYING",
        "provision_state = POWER_STATE_ON",
        "power_state = PROVISION_STATE_ACTIVE",
        "maintenance = yes",
        "maintenance:true",
        'traits = "CUSTOM_A"',
        'traits != "CUSTOM_A"',
        "-provision_state = ENROLL",
        'resource_class = "a" OR resource_class = "b"',
        "provision_state",
        "= ENROLL",
        'resource_class = "unterminated',
        "resource_class = two words",
        "AND provision_state = ENROLL",
        "provision_state = ENROLL AND",
        "provision_state = ENROLL AND AND maintenance = true",
        "provision_state > ENROLL",
    ],
)
def test_a_bad_filter_is_rejected_naming_filter(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_filter(text)
    assert fields_of(exc) == ["filter"]


def test_order_by_defaults_to_name() -> None:
    assert parse_order_by("").keys == (OrderKey("name"),)
    assert parse_order_by("  ").keys == (OrderKey("name"),)


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("name", (OrderKey("name"),)),
        ("name desc", (OrderKey("name", desc=True),)),
        ("name DESC", (OrderKey("name", desc=True),)),
        ("resource_class desc", (OrderKey("resource_class", desc=True), OrderKey("name"))),
        ("create_time", (OrderKey("create_time"), OrderKey("name"))),
        ("create_time asc", (OrderKey("create_time"), OrderKey("name"))),
        (
            "provision_state, update_time desc",
            (OrderKey("provision_state"), OrderKey("update_time", desc=True), OrderKey("name")),
        ),
        (
            "power_state,name desc, create_time",
            (OrderKey("power_state"), OrderKey("name", desc=True), OrderKey("create_time")),
        ),
    ],
)
def test_order_by_parses_keys_and_ends_with_name_as_tie_breaker(
    text: str, keys: tuple[OrderKey, ...]
) -> None:
    assert parse_order_by(text).keys == keys


def test_order_by_canonical_form_is_the_same_for_equivalent_spellings() -> None:
    a = parse_order_by("resource_class DESC")
    b = parse_order_by(" resource_class desc , name asc")
    assert a.canonical() == b.canonical() == "resource_class desc,name"
    assert parse_order_by("resource_class").canonical() != a.canonical()


@pytest.mark.parametrize(
    "text",
    [
        "colour",
        "traits",
        "maintenance",
        "Name",
        "name sideways",
        "name desc extra",
        "name, name",
        "create_time, create_time desc",
        "name,",
        ",name",
    ],
)
def test_a_bad_order_by_is_rejected_naming_order_by(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_order_by(text)
    assert fields_of(exc) == ["order_by"]
