"""BMC passwords are write-only: never in a response, an error, a log line, or the database
in plaintext (DESIGN.md, Security). Checked here in-process (caplog at DEBUG); the same calls
against a ``rackcells-leaf serve`` child logging at DEBUG are in test_leaf_process.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from leafkit import LeafClient, exercise, new_passwords

from leaf_cell.secrets import SecretBox


def test_bmc_passwords_never_appear_in_responses_errors_logs_or_the_database(
    leaf: LeafClient, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = new_passwords()
    caplog.set_level(logging.DEBUG)
    rec = exercise(leaf.stub, passwords)

    assert rec.leaks(*passwords.values()) == []
    assert any(r.levelno == logging.DEBUG for r in caplog.records), (
        "nothing was captured at DEBUG, so the log check below would prove nothing"
    )
    logged = caplog.text + "".join(repr(r.args) + repr(r.__dict__) for r in caplog.records)
    for tag, pw in passwords.items():
        assert pw not in logged, f"the {tag} password was logged"
    dump = repr(leaf.snapshot())
    for tag, pw in passwords.items():
        assert pw not in dump, f"the {tag} password is stored in plaintext"
    row = leaf.row("node-1")
    assert row is not None and row.bmc_password_enc
    for pw in passwords.values():
        assert pw not in row.bmc_password_enc
    box = SecretBox(leaf.key_file.read_bytes().strip())
    assert box.decrypt(row.bmc_password_enc) == passwords["whole-bmc"], "not the stored ciphertext"
    if leaf.db_url.startswith("sqlite:///"):
        path = Path(leaf.db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())
        for pw in passwords.values():
            assert pw.encode() not in raw
