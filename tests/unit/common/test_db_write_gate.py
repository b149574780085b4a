"""SQLite writers of one process take turns on the file's gate; readers never wait for it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from common.db import _WriteGate, make_engine


def _engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    return engine


def _gate_held(tmp_path: Path) -> bool:
    return _WriteGate.of(str(tmp_path / "gate.db"))._lock.locked()


def test_a_write_transaction_holds_the_gate_from_its_first_write_to_its_end(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path)
    with engine.begin() as conn:
        conn.execute(text("SELECT count(*) FROM t"))
        assert not _gate_held(tmp_path)
        conn.execute(text("INSERT INTO t VALUES (1)"))
        assert _gate_held(tmp_path)
        conn.execute(text("SELECT count(*) FROM t"))
        assert _gate_held(tmp_path)
    assert not _gate_held(tmp_path)
    with engine.connect() as conn:
        conn.execute(text("SELECT v FROM t"))
        assert not _gate_held(tmp_path)


def test_a_second_writer_waits_for_the_first_to_commit(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    order: list[str] = []
    started = threading.Event()

    def second() -> None:
        started.set()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            order.append("second wrote")

    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        thread = threading.Thread(target=second)
        thread.start()
        started.wait()
        time.sleep(0.3)  # long enough for the second writer to have written, were it not queued
        order.append("first commits")
    thread.join(5)
    assert order == ["first commits", "second wrote"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t ORDER BY v")).scalars().all() == [1, 2]


def test_readers_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    seen: list[list[int]] = []
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))

        def read() -> None:
            with engine.connect() as other:
                seen.append(other.execute(text("SELECT v FROM t")).scalars().all())

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(2)
        assert not thread.is_alive()
    assert seen == [[]]  # the uncommitted row is not visible, and the read did not block


def test_a_rolled_back_or_failed_write_gives_the_gate_back(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        raise RuntimeError("abandon")
    with pytest.raises(OperationalError), engine.begin() as conn:
        conn.execute(text("INSERT INTO missing VALUES (1)"))
    done = threading.Event()

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (3)"))
        done.set()

    assert not _gate_held(tmp_path)
    threading.Thread(target=write).start()
    assert done.wait(2)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalars().all() == [3]
