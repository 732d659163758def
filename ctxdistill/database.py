"""The connection to a workspace database: opening it, transactions, reads, rows as dicts.

    class Store(Database): ...            # store.py: one method per query

Opening checks the file (workspace.check_openable), sets WAL mode, applies the migrations, runs a
quick check and keeps a rolling backup. Writes go through one connection, one transaction at a
time (``_tx``, re-entrant); reads outside a transaction use a connection of the reading thread's
own. Rows come back as plain dicts with JSON columns decoded and 0/1 flags turned into bools. A
file that turned read-only or is damaged becomes a one-line StoreError.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from .migrations import migrate, rollback
from .workspace import (
    DB_NAME,
    ReadOnlyError,
    StoreError,
    check_openable,
    damaged_message,
    hold_shared,
    rotate_backup,
    workspace_home,
)

# Columns stored as JSON text and decoded on the way out, and 0/1 columns.
_JSON_COLUMNS = {"content", "chain", "flags", "meta", "config", "result", "run_ids", "results"}
_BOOL_COLUMNS = {"edited", "cancel_requested", "heavy"}
MAX_INTEGER = 2**63 - 1  # SQLite's INTEGER
OUT_OF_RANGE = f"a number is out of range: ids and counts go up to {MAX_INTEGER}"


class NotFound(StoreError):
    """No row with that id (or name)."""


def read_only(error: sqlite3.Error) -> bool:
    """Whether SQLite refused a write because the database file cannot be written."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY


class Database:
    """A connection to one workspace database. Safe to share between threads.

    Writes go through one connection, one transaction at a time. Reads outside a transaction use
    a connection of the reading thread's own (WAL readers never block, nor wait for a writer), so
    a write waiting for another process's lock does not hold up every page of the app.
    """

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = workspace_home(home)
        self.runs_dir = self.home / "runs"
        self.path = self.home / DB_NAME
        self._lock = threading.RLock()
        self._local = threading.local()  # .reader: this thread's read connection; .in_tx
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # never the write lock: a reader must not wait for it
        check_openable(self.path)
        self._conn = None
        self._held = hold_shared(self.home)  # the workspace lock, shared: no restore while this is open
        try:
            self._conn = self._connect()
            self._conn.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL is still crash-safe; it only skips an fsync per commit.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._lock:
                migrate(self._conn)
            problem = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
        except sqlite3.Error as e:
            self.close()
            raise (ReadOnlyError(self.path) if read_only(e) else StoreError(damaged_message(self.home, e))) from None
        self.backup()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; _tx() opens them explicitly.
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            with self._readers_lock:
                for reader in self._readers:
                    reader.close()
                self._readers.clear()
            if self._held is not None:
                os.close(self._held)
                self._held = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self):
        """One write transaction. Re-entrant: an inner _tx joins the outer one."""
        with self._lock:
            db = self._db()
            if db.in_transaction:
                yield db
                return
            self._local.in_tx = True  # this thread's reads see its own uncommitted writes
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    rollback(db)
                    raise
                db.execute("COMMIT")
            except sqlite3.OperationalError as e:  # the file turned read-only while the workspace was open
                if not read_only(e):
                    raise
                raise ReadOnlyError(self.path) from None
            except OverflowError:  # an id or count beyond SQLite's INTEGER, from a form or a flag
                raise StoreError(OUT_OF_RANGE) from None
            finally:
                self._local.in_tx = False

    def transaction(self):
        """Group several store writes into one all-or-nothing transaction:
        `with store.transaction(): store.add_prompts(...); store.upsert_samples(...)`."""
        return self._tx()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _reader(self) -> sqlite3.Connection:
        self._db()  # StoreError once closed
        reader = getattr(self._local, "reader", None)
        if reader is None:  # this thread's first read
            with self._readers_lock:
                reader = self._local.reader = self._connect()
                self._readers.append(reader)
        return reader

    def _rows(self, sql: str, params: Iterable = ()) -> list[dict]:
        try:
            if getattr(self._local, "in_tx", False):
                with self._lock:
                    return [decode(r) for r in self._db().execute(sql, tuple(params)).fetchall()]
            return [decode(r) for r in self._reader().execute(sql, tuple(params)).fetchall()]
        except OverflowError:  # an id or count beyond SQLite's INTEGER, from a form or a flag
            raise StoreError(OUT_OF_RANGE) from None

    def _one(self, sql: str, params: Iterable, what: str) -> dict:
        params = tuple(params)
        if any(isinstance(p, int) and abs(p) > MAX_INTEGER for p in params):  # no row has such an id
            raise NotFound(f"{what} not found")
        rows = self._rows(sql, params)
        if not rows:
            raise NotFound(f"{what} not found")
        return rows[0]

    def integrity_ok(self) -> bool:
        with self._lock:
            rows = self._db().execute("PRAGMA integrity_check").fetchall()
        return len(rows) == 1 and rows[0][0] == "ok"

    def backup(self, force: bool = False) -> Path | None:
        """Copy the database to backups/ with SQLite's online backup (consistent while others write),
        when one is due (workspace.rotate_backup). Returns the new copy, or None."""

        def copy(target: sqlite3.Connection) -> None:
            with self._lock:
                self._db().backup(target)

        return rotate_backup(self.home, copy, force)


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None and column == "result" else to_json(value)
    if column in _BOOL_COLUMNS:
        return int(bool(value))
    return value


def decode(row: sqlite3.Row) -> dict:
    out = {}
    for key in row.keys():
        value = row[key]
        if key in _JSON_COLUMNS and isinstance(value, str):
            value = json.loads(value)
        elif key in _BOOL_COLUMNS and value is not None:
            value = bool(value)
        out[key] = value
    return out
