"""Fixtures for the image cache and boot HTTP server suites: a local image source."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imagekit import ImageSource


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables; traffic in these tests goes only to 127.0.0.1."""
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def source() -> Iterator[ImageSource]:
    src = ImageSource()
    yield src
    src.stop()
