"""Encryption at rest for BMC passwords.

Passwords are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) before they reach the database,
so a copied database file or a PostgreSQL dump does not hand out the keys to a rack's BMCs. The
key lives in a file outside the database (mode 0600), created on first start.
:class:`SecretBox` never puts a plaintext into an exception message.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from common.keys import load_or_create_key

__all__ = ["SecretBox", "SecretError", "load_or_create_key"]


class SecretError(RuntimeError):
    """A stored secret cannot be decrypted with this leaf's key (the key file changed)."""


class SecretBox:
    """Encrypts and decrypts secrets with one Fernet key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise SecretError(
                "a stored BMC password cannot be decrypted with this leaf's key file"
            ) from None
