"""The workspace database's tables, as an ordered list of small migrations.

``migrate(db)`` applies those a database has not seen yet, one transaction each, and counts them
in SQLite's ``user_version``. A new table or column is a new function at the end of
``MIGRATIONS``; a released one is never edited. Used by database.py only.
"""

from __future__ import annotations

import sqlite3


def _m001_initial(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
    CREATE TABLE constitutions (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        content     TEXT NOT NULL,
        hash        TEXT NOT NULL,
        parent_id   INTEGER REFERENCES constitutions(id) ON DELETE SET NULL,
        message     TEXT NOT NULL DEFAULT '',
        owner       TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL
    );
    CREATE INDEX constitutions_by_name ON constitutions(owner, name, id);

    CREATE TABLE prompt_sets (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        source      TEXT NOT NULL DEFAULT '',
        owner       TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        UNIQUE (owner, name)
    );

    CREATE TABLE prompts (
        id          INTEGER PRIMARY KEY,
        set_id      INTEGER NOT NULL REFERENCES prompt_sets(id) ON DELETE CASCADE,
        text        TEXT NOT NULL,
        split       TEXT NOT NULL CHECK (split IN ('train', 'heldout')),
        category    TEXT NOT NULL DEFAULT '',
        source      TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        UNIQUE (set_id, text)
    );

    CREATE TABLE samples (
        id              INTEGER PRIMARY KEY,
        prompt_id       INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
        constitution_id INTEGER NOT NULL REFERENCES constitutions(id) ON DELETE CASCADE,
        idx             INTEGER NOT NULL DEFAULT 0,
        prompted        TEXT NOT NULL DEFAULT '',
        unprompted      TEXT NOT NULL DEFAULT '',
        chain           TEXT NOT NULL DEFAULT '[]',
        final           TEXT NOT NULL DEFAULT '',
        edited          INTEGER NOT NULL DEFAULT 0,
        status          TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'accepted', 'rejected')),
        note            TEXT NOT NULL DEFAULT '',
        reviewer        TEXT NOT NULL DEFAULT '',
        flags           TEXT NOT NULL DEFAULT '[]',
        meta            TEXT NOT NULL DEFAULT '{}',
        version         INTEGER NOT NULL DEFAULT 1,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        UNIQUE (prompt_id, constitution_id, idx)
    );
    CREATE INDEX samples_by_constitution ON samples(constitution_id, status);

    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY,
        kind             TEXT NOT NULL,
        config           TEXT NOT NULL DEFAULT '{}',
        state            TEXT NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        heavy            INTEGER NOT NULL DEFAULT 0,
        progress_done    INTEGER NOT NULL DEFAULT 0,
        progress_total   INTEGER NOT NULL DEFAULT 0,
        message          TEXT NOT NULL DEFAULT '',
        pid              INTEGER,
        error            TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        kill_after       REAL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        heartbeat_at     REAL,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        result           TEXT,
        owner            TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_by_state ON jobs(state, heavy, id);

    CREATE TABLE metrics (
        job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        step    INTEGER NOT NULL,
        name    TEXT NOT NULL,
        value   REAL,
        at      REAL NOT NULL,
        PRIMARY KEY (job_id, name, step)
    );

    CREATE TABLE evals (
        id              INTEGER PRIMARY KEY,
        job_id          INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
        constitution_id INTEGER REFERENCES constitutions(id) ON DELETE SET NULL,
        run_ids         TEXT NOT NULL DEFAULT '[]',
        results         TEXT NOT NULL DEFAULT '{}',
        owner           TEXT NOT NULL DEFAULT '',
        created_at      REAL NOT NULL
    );

    CREATE TABLE votes (
        id          INTEGER PRIMARY KEY,
        eval_id     INTEGER NOT NULL REFERENCES evals(id) ON DELETE CASCADE,
        prompt_id   INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
        choice      TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
        a_is        TEXT NOT NULL,
        reviewer    TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        UNIQUE (eval_id, prompt_id, reviewer)
    )
    """,
    )


def _m002_drafts(db: sqlite3.Connection) -> None:
    # The constitution being edited, autosaved on every change so a reload loses nothing.
    _run_script(
        db,
        """
    CREATE TABLE drafts (
        owner TEXT PRIMARY KEY,
        content TEXT NOT NULL,
        base_id INTEGER REFERENCES constitutions(id) ON DELETE SET NULL,
        updated_at REAL NOT NULL
    )
    """,
    )


def _m003_run_keys(db: sqlite3.Connection) -> None:
    # The key that binds runs/<id>/ to its job row (see the module docstring); NULL for older jobs,
    # whose directories are taken as they are.
    db.execute("ALTER TABLE jobs ADD COLUMN run_key TEXT")


def _m004_pairs(db: sqlite3.Connection) -> None:
    # Preference pairs (prefs.py): two answers to one prompt, the preferred one first. `label` is the
    # probability that `chosen` is the better one (1 for a check or a revision, the judge's soft
    # label for AI feedback); `source` says where the pair came from.
    _run_script(
        db,
        """
    CREATE TABLE pairs (
        id              INTEGER PRIMARY KEY,
        constitution_id INTEGER REFERENCES constitutions(id) ON DELETE CASCADE,
        prompt          TEXT NOT NULL,
        chosen          TEXT NOT NULL,
        rejected        TEXT NOT NULL,
        source          TEXT NOT NULL CHECK (source IN ('feedback', 'revision', 'checks', 'import')),
        label           REAL NOT NULL DEFAULT 1.0,
        status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'rejected')),
        reviewer        TEXT NOT NULL DEFAULT '',
        meta            TEXT NOT NULL DEFAULT '{}',
        job_id          INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
        owner           TEXT NOT NULL DEFAULT '',
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE UNIQUE INDEX pairs_unique ON pairs(owner, ifnull(constitution_id, 0), prompt, chosen, rejected);
    CREATE INDEX pairs_by_constitution ON pairs(owner, constitution_id, status, source)
    """,
    )


def _m005_instruction_pairs(db: sqlite3.Connection) -> None:
    # Pairs of the "instructions" source (prefs.py: an answer edited to follow a user's instruction).
    # SQLite cannot change a CHECK, so the rows move to a copy of the table whose CHECK allows it.
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'pairs'").fetchone()
    wider = sql.replace("'checks', 'import')", "'checks', 'instructions', 'import')", 1)
    indexes = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'pairs' AND sql IS NOT NULL"
    )
    indexes = [row[0] for row in indexes]
    db.execute(wider.replace("CREATE TABLE pairs", "CREATE TABLE pairs_wider", 1))
    db.execute("INSERT INTO pairs_wider SELECT * FROM pairs")
    db.execute("DROP TABLE pairs")
    db.execute("ALTER TABLE pairs_wider RENAME TO pairs")
    for index in indexes:
        db.execute(index)


MIGRATIONS = [_m001_initial, _m002_drafts, _m003_run_keys, _m004_pairs, _m005_instruction_pairs]


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would commit the surrounding transaction; run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def migrate(db: sqlite3.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock first, so two processes opening a
    # fresh workspace at once cannot both run the same migration.
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= len(MIGRATIONS):
                db.execute("COMMIT")
                return
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise


def rollback(db: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (a full disk, an I/O error); a second ROLLBACK
    # would then raise "no transaction is active" and hide the error that matters.
    if db.in_transaction:
        db.execute("ROLLBACK")
