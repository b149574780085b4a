"""Text the CLI writes: aligned tables and key/value blocks for people, JSON for programs.

No third-party table library: the layouts are simple, and a CLI that runs on a jump host or in
a rescue shell should need nothing beyond grpc and protobuf. With ``-o json`` stdout carries
exactly one JSON document; everything else (warnings, progress) goes to stderr so that
``rackcells -o json node list | jq`` always parses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

__all__ = [
    "FORMATS",
    "NONE",
    "OutputFormat",
    "StatusLine",
    "enum_label",
    "format_age",
    "format_duration",
    "format_span",
    "format_time",
    "message_to_dict",
    "print_json",
    "render_fields",
    "render_table",
    "truncate",
    "warn",
]

OutputFormat = Literal["table", "json"]
FORMATS: tuple[OutputFormat, ...] = ("table", "json")

NONE = "-"


def message_to_dict(message: Message, *, zeros: bool = False) -> dict[str, Any]:
    """The protobuf JSON form with the field names of the .proto file (``memory_mb``).

    Snake case is what ``node import`` documents and what the table headers echo, so the
    JSON an operator saves from ``node show`` can be edited and imported again. ``zeros``
    keeps fields at their default value: for counts, ``"available": 0`` is the answer a
    script asks for, and a missing key would read as "not reported".
    """
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=zeros,
    )


def print_json(value: object, stream: TextIO | None = None) -> None:
    """Writes one pretty-printed JSON document and a newline."""
    out = stream or sys.stdout
    json.dump(value, out, indent=2, sort_keys=False, ensure_ascii=False)
    out.write("\n")


def warn(message: str) -> None:
    """A non-fatal note for the operator on stderr, never mixed into the command's output."""
    print(f"rackcells: warning: {message}", file=sys.stderr)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns left-aligned to their widest cell, separated by two spaces.

    Trailing spaces are stripped so the output diffs and greps cleanly.
    """
    materialised = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in materialised) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in materialised
    ]
    return "\n".join(lines)


def render_fields(pairs: Sequence[tuple[str, str]], indent: int = 0) -> str:
    """A vertical ``key:  value`` block; continuation lines of a value stay aligned."""
    if not pairs:
        return ""
    width = max(len(key) for key, _ in pairs) + 1
    pad = " " * indent
    lines: list[str] = []
    for key, value in pairs:
        first, *rest = (value or NONE).split("\n")
        lines.append(f"{pad}{(key + ':').ljust(width)}  {first}".rstrip())
        lines.extend(f"{pad}{' ' * width}  {line}".rstrip() for line in rest)
    return "\n".join(lines)


def enum_label(name: str, prefix: str) -> str:
    """``PROVISION_STATE_WAIT_CALL_BACK`` → ``wait-call-back``; unspecified → ``-``.

    The lower-case hyphenated form is what operators of Ironic-like systems know and what
    the state machine's documentation uses.
    """
    short = name.removeprefix(prefix)
    if short == "UNSPECIFIED":
        return NONE
    return short.lower().replace("_", "-")


# Clocks of two hosts disagree a little; a timestamp this far ahead still reads as "now".
_SKEW = 5.0


def format_span(seconds: float) -> str:
    """A length of time in its largest whole unit: ``42s``, ``3m``, ``5h``, ``2d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    return f"{format_span(seconds)} ago"


def format_time(ts: timestamp_pb2.Timestamp, now: datetime | None = None) -> str:
    """UTC time to the second and its age: ``2025-01-02 03:04:05Z (3m ago)``; unset → ``-``."""
    if not ts.seconds and not ts.nanos:
        return NONE
    when = ts.ToDatetime(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    age = (reference - when).total_seconds()
    return f"{when:%Y-%m-%d %H:%M:%S}Z ({_ago(age)})"


def format_age(ts: timestamp_pb2.Timestamp, now: datetime | None = None) -> str:
    """Only the age of a time, ``2s ago``, for table columns; unset → ``-``."""
    if not ts.seconds and not ts.nanos:
        return NONE
    reference = now or datetime.now(UTC)
    age = (reference - ts.ToDatetime(tzinfo=UTC)).total_seconds()
    if -_SKEW < age < 0:
        age = 0.0
    return _ago(age)


def format_duration(duration: duration_pb2.Duration) -> str:
    """Seconds with one decimal place, the precision that matters for deploy phases."""
    return f"{duration.ToTimedelta().total_seconds():.1f}"


def truncate(text: str, width: int) -> str:
    """The first line of ``text``, cut to ``width`` characters with an ellipsis."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    return line[: max(width - 1, 0)] + "…"


class StatusLine:
    """A one-line progress display on stderr, redrawn in place; silent when not on a terminal.

    Progress is only useful to a person watching. In a pipeline or a log file, carriage
    returns make a mess, so nothing is written there at all.
    """

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self._stream = stream or sys.stderr
        self._shown = False

    def show(self, text: str) -> None:
        """Replaces the current line with ``text``."""
        if not self.enabled:
            return
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erases the line so that the next output starts on a clean line."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
