"""The workspace's files around its database: the directory, run directories, backups, restore.

    home = workspace_home()                     # --workspace, else $CTXDISTILL_HOME, else ./workspace
    check_database(home / DB_NAME)              # "ok", or what SQLite's integrity check finds
    restore_backup(home, force=False)           # `ctxdistill doctor --restore [--force]`

The queries live in store.py; this module handles files, and reads database files only to check
them. Every Store holds the workspace lock (`workspace.lock`, a shared flock) while it is open: the
app, each job's worker, each command. A restore needs it alone, so it is refused while any of them
runs, and the kernel lets go of a crashed process's lock.

A run directory `runs/<job id>/` belongs to its job through a random key kept in both the job's row
and the directory's `run_key` file, and job ids are never issued twice (`last_job_id` and the run
directories keep the highest one, whatever database is in place): a directory that is not the job's
(left by another database, copied in by hand) is refused by the worker and by anything else that
would write into it, never resumed or overwritten. Older versions moved such a directory aside as
`runs/<id>.orphan-<time>`; `ctxdistill doctor` lists those.

Opening the store checks the database and keeps a rolling backup of it in `backups/` (SQLite's
online backup API, at most every BACKUP_EVERY_S, the last BACKUPS_KEPT kept); `restore_backup` puts
the newest good one back.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import sqlite3
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

DB_NAME = "ctxdistill.db"
BACKUP_DIR = "backups"
BACKUP_EVERY_S = 600.0
BACKUPS_KEPT = 2
RUN_KEY_FILE = "run_key"
LOCK_FILE = "workspace.lock"
JOB_IDS_FILE = "last_job_id"
LOCK_WAIT_S = 10.0  # how long opening the workspace waits for a restore to finish


class StoreError(Exception):
    """A request the store cannot honour (bad value, bad state)."""


class ReadOnlyError(StoreError):
    """The workspace database cannot be written (permissions, an immutable flag, a read-only disk); the
    message says which, and the command that fixes it."""

    def __init__(self, path: Path):
        culprit = next((f for f in (path, *wal_files(path)) if f.exists() and not os.access(f, os.W_OK)), path)
        super().__init__(
            f"the workspace database {path} is read-only and nothing can be saved: {how_to_write(culprit)}, or "
            "use another --workspace / $CTXDISTILL_HOME; nothing was changed"
        )


FS_IOC_GETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x10  # linux/fs.h: what lsattr reads


def how_to_write(path: Path) -> str:
    """Why `path` cannot be written, and the command that makes it writable."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return f"{path} is on a disk mounted read-only: remount it read-write (`mount -o remount,rw`)"
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            flags = int.from_bytes(fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4], sys.byteorder)
        finally:
            os.close(fd)
    except OSError:  # no such flags on this filesystem
        flags = 0
    if flags & FS_IMMUTABLE_FL:
        return f"{path} carries the immutable flag: remove it with `chattr -i {path}` (as root)"
    return f"the permissions of {path} forbid writing: make it writable with `chmod u+w {path}`"


class WorkspaceBusy(StoreError):
    """The workspace lock is held by someone else: a restore while it is open, or the other way round."""


def workspace_home(path: str | os.PathLike | None = None) -> Path:
    """The workspace directory: `path`, else $CTXDISTILL_HOME, else ./workspace.

    Creates it, with runs/ and models/, if missing; StoreError if it cannot."""
    home = Path(path or os.environ.get("CTXDISTILL_HOME") or "workspace").expanduser().resolve()
    for d in (home, home / "runs", home / "models"):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            where = next(p for p in (d, *d.parents) if p.exists())
            fix = f": {how_to_write(where)}" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else ""
            raise StoreError(f"cannot use {home} as the workspace: {e.strerror or e} ({d}){fix}") from None
    if not os.access(home, os.W_OK):
        raise StoreError(
            f"cannot use {home} as the workspace: it is not writable ({how_to_write(home)}), or use another "
            "--workspace / $CTXDISTILL_HOME"
        )
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


# --------------------------------------------------------------------------- the lock


def _lock_file(home: Path) -> int:
    try:
        return os.open(Path(home) / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(f"cannot open the workspace lock {Path(home) / LOCK_FILE}: {e.strerror or e}") from None


def hold_shared(home: Path) -> int:
    """Take the workspace lock shared (every open Store holds it; close the returned descriptor to
    let go). Waits up to LOCK_WAIT_S for a restore to finish, then WorkspaceBusy."""
    fd = _lock_file(home)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise WorkspaceBusy(
                    f"the workspace {home} is being restored (`ctxdistill doctor --restore` holds it): try again "
                    "once it is done"
                ) from None
            time.sleep(0.1)


@contextmanager
def alone(home: Path):
    """The workspace lock, exclusive: WorkspaceBusy at once while anything has the workspace open."""
    fd = _lock_file(home)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkspaceBusy(
            f"the workspace {home} is in use (the app, a job's worker, another command or another restore has "
            "it open): stop the app, let its jobs finish or cancel them (`ctxdistill jobs`), then try again; "
            "nothing was changed"
        ) from None
    try:
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- run directories


def highest_job_id(home: Path) -> int:
    """The highest job id the workspace ever issued, as its files tell: `last_job_id` and the run
    directories (runs/<id>, runs/<id>.orphan-…). A database put back from a backup does not know
    the jobs made after it; these files do."""
    ids = [int(name) for p in (home / "runs").iterdir() if (name := p.name.split(".")[0]).isdigit()]
    try:
        ids.append(int((home / JOB_IDS_FILE).read_text()))
    except (OSError, ValueError):
        pass
    return max(ids, default=0)


def note_job_id(home: Path, job_id: int) -> None:
    """Keep `job_id` as the highest issued (written before the job's row is committed)."""
    tmp = home / f".{JOB_IDS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(f"{int(job_id)}\n")
    os.replace(tmp, home / JOB_IDS_FILE)


def claim_run_dir(runs_dir: Path, job_id: int, key: str | None) -> Path:
    """runs/<job_id>/ of the job whose run key is `key`, made (with the key) if missing. A directory
    there that is not this job's (its run_key differs, or it has none) is refused with StoreError:
    a job writes only into its own. A job from before run keys (`key` None) keeps whatever it has."""
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
        raise StoreError(
            f"{path} is not job {job_id}'s (its {RUN_KEY_FILE} is another job's, or missing): job {job_id} will not "
            "write into it; move it aside to let the job make its own"
        )
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


def rows_since(path: Path, when: float) -> dict[str, int]:
    """How many jobs and constitution versions the database at `path` made after `when`, and how many
    samples it made or changed since: what putting back a backup of that time would throw away."""
    counted = {"jobs": ("jobs", "created_at"), "constitution versions": ("constitutions", "created_at")}
    counted["samples"] = ("samples", "updated_at")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            what: conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} > ?", (when,)).fetchone()[0]
            for what, (table, column) in counted.items()
        }
    finally:
        conn.close()


def restore_backup(home: str | os.PathLike, force: bool = False) -> dict:
    """Put the newest backup that passes an integrity check in place of the workspace database.

    Refused (WorkspaceBusy) while anything has the workspace open: the app, a job, a command, another
    restore. A damaged backup is skipped (and listed). A database that passes its own integrity check
    is only replaced with `force`: without it, StoreError says what the restore would throw away (the
    jobs, constitution versions and samples made or changed since the backup). The current database
    (and its -wal/-shm files, which must not be applied to the copy) is moved aside as
    ctxdistill.db.damaged-<time>, or ctxdistill.db.replaced-<time> when it was sound. Returns
    {"restored", "backup_time", "saved_as" (or None), "skipped": [{"path", "problem"}], "lost": counts}."""
    home = Path(home)
    with alone(home):
        skipped, good = [], None
        for candidate in backups(home):
            problem = check_database(candidate)
            if problem == "ok":
                good = candidate
                break
            skipped.append({"path": str(candidate), "problem": problem})
        if good is None:
            found = "; ".join(f"{Path(b['path']).name} is damaged ({b['problem']})" for b in skipped)
            raise StoreError(f"no usable backup in {home / BACKUP_DIR}" + (f": {found}" if found else ""))
        db, backup_time = home / DB_NAME, good.stat().st_mtime
        sound = db.is_file() and db.stat().st_size > 0 and check_database(db) == "ok"
        try:
            lost = rows_since(db, backup_time) if sound else {}
        except sqlite3.Error:  # sound as a file, but not a workspace database
            sound, lost = False, {}
        if sound and not force:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup_time))
            counts = ", ".join(f"{n} {what}" for what, n in lost.items())
            raise StoreError(
                f"the workspace database passes its integrity check; putting back the backup of {when} would "
                f"lose what was made or changed since ({counts}): confirm with `ctxdistill doctor --restore "
                "--force`; nothing was changed"
            )
        saved_as = None
        stamp = f"{'replaced' if sound else 'damaged'}-{time.strftime('%Y%m%d-%H%M%S')}"
        for suffix in ("", "-wal", "-shm"):
            current = db.with_name(DB_NAME + suffix)
            if current.exists():
                aside = db.with_name(f"{DB_NAME}.{stamp}{suffix}")
                os.replace(current, aside)
                saved_as = saved_as or (aside if not suffix else None)
        source, target = sqlite3.connect(f"file:{good}?mode=ro", uri=True), sqlite3.connect(db)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
    return {
        "restored": str(good),
        "backup_time": backup_time,
        "saved_as": str(saved_as) if saved_as else None,
        "skipped": skipped,
        "lost": lost,
    }
