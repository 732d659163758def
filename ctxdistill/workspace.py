"""The workspace's files around its database: the directory, run directories, backups, restore.

    home = workspace_home()                     # --workspace, else $CTXDISTILL_HOME, else ./workspace
    check_database(home / DB_NAME)              # "ok", or what SQLite's integrity check finds
    restore_backup(home)                        # `ctxdistill doctor --restore`

The SQL lives in store.py; this module only handles files. A run directory `runs/<job id>/`
belongs to its job through a random key kept in both the job's row and the directory's `run_key`
file: after the database was recreated (or restored from an older backup) a directory that the
current database did not make is moved aside (`runs/<id>.orphan-<time>`), never resumed or
overwritten. Opening the store checks the database and keeps a rolling backup of it in `backups/`
(SQLite's online backup API, at most every BACKUP_EVERY_S, the last BACKUPS_KEPT kept);
`restore_backup` puts the newest good one back.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Callable

DB_NAME = "ctxdistill.db"
BACKUP_DIR = "backups"
BACKUP_EVERY_S = 600.0
BACKUPS_KEPT = 2
RUN_KEY_FILE = "run_key"


class StoreError(Exception):
    """A request the store cannot honour (bad value, bad state)."""


class ReadOnlyError(StoreError):
    """The workspace database cannot be written (permissions, an immutable flag, a read-only disk)."""

    def __init__(self, path: Path):
        super().__init__(
            f"the workspace database {path} is read-only (file permissions, an immutable flag or a "
            f"read-only disk), so nothing can be saved: make it writable (chmod u+w {path}) or use "
            "another --workspace / $CTXDISTILL_HOME; nothing was changed"
        )


def workspace_home(path: str | os.PathLike | None = None) -> Path:
    """The workspace directory: `path`, else $CTXDISTILL_HOME, else ./workspace.

    Creates it, with runs/ and models/, if missing; StoreError if it cannot."""
    home = Path(path or os.environ.get("CTXDISTILL_HOME") or "workspace").expanduser().resolve()
    for d in (home, home / "runs", home / "models"):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot use {home} as the workspace: {e.strerror or e} ({d})") from None
    if not os.access(home, os.W_OK):
        raise StoreError(f"cannot use {home} as the workspace: it is not writable")
    return home


def check_openable(path: Path) -> None:
    """Refuse a database file that SQLite would open wrongly: an emptied one beside a backup (SQLite
    would take it for a new database), or one that cannot be written."""
    if path.is_file() and path.stat().st_size == 0 and backups(path.parent):
        raise StoreError(
            f"{path} is empty (truncated?) and the workspace has a backup: run "
            "`ctxdistill doctor --restore` to put it back, or delete the file to start afresh"
        )
    if any(f.exists() and not os.access(f, os.W_OK) for f in (path, *wal_files(path))):
        raise ReadOnlyError(path)


def wal_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


# --------------------------------------------------------------------------- run directories


def claim_run_dir(runs_dir: Path, job_id: int, key: str | None) -> Path:
    """runs/<job_id>/, made for the job whose run key is `key`: a directory there that another
    database's job left (its run_key differs, or it has none) is moved aside first, so its
    checkpoints and data are never taken for this job's. A job from before run keys (`key` None)
    keeps whatever directory it has."""
    path = Path(runs_dir) / str(int(job_id))
    if key is None:
        path.mkdir(parents=True, exist_ok=True)
        return path
    try:
        if (path / RUN_KEY_FILE).read_text().strip() == key:
            return path
    except OSError:
        pass
    if path.exists():
        path.rename(path.with_name(f"{path.name}.orphan-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"))
    path.mkdir(parents=True)
    (path / RUN_KEY_FILE).write_text(key + "\n")
    return path


# --------------------------------------------------------------------------- backups


def backups(home: str | os.PathLike) -> list[Path]:
    """The workspace's database backups, newest first."""
    folder = Path(home) / BACKUP_DIR
    found = [p for p in folder.glob(f"{DB_NAME}.*") if p.suffix[1:].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.suffix[1:]))


def rotate_backup(home: Path, copy: Callable[[sqlite3.Connection], None], force: bool = False) -> Path | None:
    """A new backup, written by `copy(target connection)`, when the newest one is older than
    BACKUP_EVERY_S (or `force`); the last BACKUPS_KEPT are kept. Returns the new copy, or None when
    none was due or it could not be written (a full disk must not stop the workspace from opening)."""
    kept = backups(home)
    if kept and not force and time.time() - kept[0].stat().st_mtime < BACKUP_EVERY_S:
        return None
    folder = home / BACKUP_DIR
    tmp = folder / f".{DB_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(exist_ok=True)
        target = sqlite3.connect(tmp)
        try:
            copy(target)
        finally:
            target.close()
        for n in range(BACKUPS_KEPT - 1, 0, -1):  # shift the older copies down
            older = folder / f"{DB_NAME}.{n}"
            if older.exists():
                os.replace(older, folder / f"{DB_NAME}.{n + 1}")
        os.replace(tmp, folder / f"{DB_NAME}.1")
    except (OSError, sqlite3.Error):
        tmp.unlink(missing_ok=True)
        return None
    return folder / f"{DB_NAME}.1"


def damaged_message(home: Path, error: Exception) -> str:
    tail = (
        "run `ctxdistill doctor --restore` to put the newest backup back"
        if backups(home)
        else "there is no backup: move the file aside to start an empty workspace"
    )
    return f"the workspace database {home / DB_NAME} cannot be used ({error}); {tail}"


def check_database(path: str | os.PathLike) -> str:
    """ "ok", or what SQLite's integrity check finds wrong with the database file at `path`."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return str(e)
    return "ok" if [tuple(r) for r in rows] == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])


def restore_backup(home: str | os.PathLike) -> dict:
    """Put the newest backup that passes an integrity check in place of the workspace database.

    The current database (and its -wal/-shm files, which must not be applied to the copy) is
    moved aside as ctxdistill.db.damaged-<time>. Nothing may have the workspace open meanwhile.
    Returns {"restored": backup path, "saved_as": moved-aside path or None, "backup_time": mtime}."""
    home = Path(home)
    good = next((b for b in backups(home) if check_database(b) == "ok"), None)
    if good is None:
        raise StoreError(f"no usable backup in {home / BACKUP_DIR}")
    db = home / DB_NAME
    saved_as = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        current = db.with_name(DB_NAME + suffix)
        if current.exists():
            aside = db.with_name(f"{DB_NAME}.damaged-{stamp}{suffix}")
            os.replace(current, aside)
            saved_as = saved_as or (aside if not suffix else None)
    source, target = sqlite3.connect(f"file:{good}?mode=ro", uri=True), sqlite3.connect(db)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return {"restored": str(good), "saved_as": str(saved_as) if saved_as else None, "backup_time": good.stat().st_mtime}
