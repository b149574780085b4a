"""Key files and hardware addresses: small facts both cells need in the same form.

``load_or_create_key`` keeps a Fernet key outside the database (mode 0600, created on first
start) — the leaf encrypts BMC passwords with it, the top seals page tokens with it.
``normalize_mac`` is the one MAC notation the whole federation stores and compares: the top's
cross-cell uniqueness check only works if it normalises exactly as the leaves do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.fernet import Fernet

__all__ = ["load_or_create_key", "normalize_mac"]

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_CISCO_MAC = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")


def load_or_create_key(path: Path) -> bytes:
    """Reads the key file, creating it with a fresh key and mode 0600 if it does not exist."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key


def normalize_mac(text: str) -> str | None:
    """``AA-BB-CC-DD-EE-FF`` / ``aabb.ccdd.eeff`` / ``aabbccddeeff`` → ``aa:bb:cc:dd:ee:ff``;
    None when ``text`` is not a MAC address."""
    raw = text.strip().lower()
    if _CISCO_MAC.match(raw):
        raw = raw.replace(".", "")
    if not _MAC.match(raw):
        return None
    digits = re.sub(r"[:-]", "", raw)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
