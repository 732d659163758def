"""The workspace store: one SQLite file holding everything a user makes, and every query of it.

    store = Store("./workspace")          # or Store() -> $CTXDISTILL_HOME or ./workspace
    cid = store.save_constitution("pirate", c.to_dict(), c.content_hash())
    job = store.create_job("train", cfg.to_dict(), heavy=True)
    store.run_dir(job)                    # runs/<job>/, this job's own (workspace.claim_run_dir)

Every query of the project lives in this module, one method each (those of preference pairs in
pair_store.py, a part of Store kept apart for its length); the tables are in migrations.py,
the connection (WAL, transactions, a reader per thread, rows as dicts) in database.py, and the
files around the database (the workspace directory, run directories, backups, restore) in
workspace.py. The web server (many threads, one Store) and job worker processes (a Store each)
read while one writes. Every write is a single transaction. Timestamps are Unix seconds (floats).

`owner` separates visitors in the hosted demo; "" is the shared local workspace. List methods take
`owner=` ("" by default; None means every owner).
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import workspace
from .database import Database, NotFound, decode, encode, to_json
from .pair_store import PairQueries
from .workspace import DB_NAME, ReadOnlyError, StoreError, workspace_home  # noqa: F401  (re-exported)

SPLITS = ("train", "heldout")
SAMPLE_STATUSES = ("pending", "accepted", "rejected")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES = ("done", "failed", "cancelled")
VOTE_CHOICES = ("a", "b", "tie", "both_bad")

# What callers may write through upsert_sample / update_sample / update_job.
_SAMPLE_FIELDS = ("prompted", "unprompted", "chain", "final", "edited", "status", "note", "reviewer", "flags", "meta")
# A new sample's fields where the pipeline gives none ("final" follows the answers: _default_final).
_NEW_SAMPLE = {"prompted": "", "unprompted": "", "chain": [], "edited": False, "status": "pending", "note": ""}
_NEW_SAMPLE |= {"reviewer": "", "flags": [], "meta": {}}
_JOB_FIELDS = tuple(
    "kind config state progress_done progress_total message pid error cancel_requested kill_after heartbeat_at "
    "started_at finished_at result owner heavy attempts".split()
)


class ConflictError(StoreError):
    """The row changed since the caller read it; `.current` holds it as it is now."""

    def __init__(self, message: str, current: dict | None = None):
        super().__init__(message)
        self.current = current


class Store(Database, PairQueries):
    """A connection to one workspace database (database.Database), with one method per query. Safe to
    share between threads."""

    # ------------------------------------------------------------------ constitutions

    def save_constitution(
        self,
        name: str,
        content: dict,
        content_hash: str,
        parent_id: int | None = None,
        message: str = "",
        owner: str = "",
    ) -> int:
        """Store a new immutable version of constitution `name`; returns its id.

        If the latest version of `name` already has this hash, nothing is written
        and that version's id is returned. Without `parent_id` the new version's
        parent is the latest version of the same name (if any)."""
        name = (name or "").strip()
        if not name:
            raise StoreError("a constitution needs a name")
        with self._tx() as db:
            latest = db.execute(
                "SELECT id, hash FROM constitutions WHERE owner = ? AND name = ? ORDER BY id DESC LIMIT 1",
                (owner, name),
            ).fetchone()
            if latest is not None and latest["hash"] == content_hash:
                return latest["id"]
            if parent_id is None and latest is not None:
                parent_id = latest["id"]
            cur = db.execute(
                "INSERT INTO constitutions (name, content, hash, parent_id, message, owner, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, to_json(content), content_hash, parent_id, message or "", owner, time.time()),
            )
            return cur.lastrowid

    def get_constitution(self, version_id: int, owner: str | None = None) -> dict:
        """One version; with `owner`, NotFound unless it belongs to that owner."""
        where, params = _where(("id = ?", version_id), ("owner = ?", owner))
        return self._one(f"SELECT * FROM constitutions {where}", params, f"constitution version {version_id}")

    def list_constitution_versions(self, name: str | None = None, owner: str | None = "") -> list[dict]:
        """Versions, newest first; all names unless `name` is given."""
        where, params = _where(("owner = ?", owner), ("name = ?", name))
        return self._rows(f"SELECT * FROM constitutions {where} ORDER BY id DESC", params)

    def save_draft(self, content: dict, base_id: int | None = None, owner: str = "") -> None:
        """Autosave the constitution being edited (one draft per owner)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO drafts (owner, content, base_id, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(owner) DO UPDATE SET content = excluded.content, "
                "base_id = excluded.base_id, updated_at = excluded.updated_at",
                (owner, to_json(content), base_id, time.time()),
            )

    def get_draft(self, owner: str = "") -> dict | None:
        rows = self._rows("SELECT * FROM drafts WHERE owner = ?", (owner,))
        return rows[0] if rows else None

    # ------------------------------------------------------------------ prompts

    def add_prompts(self, set_name: str, rows: list[dict], source: str = "", owner: str = "") -> int:
        """Add prompts to a set (created if new); returns how many were new.

        Each row is {text, split ('train' | 'heldout', default 'train'), category?}.
        Texts are stripped; a text already in the set (or repeated in `rows`) is
        skipped, whatever its split, so no prompt is both trained on and held out.
        All or nothing: one bad row raises StoreError and nothing is added."""
        set_name = (set_name or "").strip()
        if not set_name:
            raise StoreError("a prompt set needs a name")
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO prompt_sets (name, source, owner, created_at) VALUES (?, ?, ?, ?)",
                (set_name, source or "", owner, now),
            )
            if source:
                db.execute(
                    "UPDATE prompt_sets SET source = ? WHERE owner = ? AND name = ? AND source = ''",
                    (source, owner, set_name),
                )
            set_id = db.execute(
                "SELECT id FROM prompt_sets WHERE owner = ? AND name = ?", (owner, set_name)
            ).fetchone()["id"]
            added = 0
            for n, row in enumerate(rows, 1):
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise StoreError(f"prompt row {n}: empty or missing text")
                split = row.get("split") or "train"
                if split not in SPLITS:
                    raise StoreError(f"prompt row {n}: split must be 'train' or 'heldout', not {split!r}")
                cur = db.execute(
                    "INSERT OR IGNORE INTO prompts (set_id, text, split, category, source, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (set_id, text.strip(), split, str(row.get("category") or ""), source or "", now),
                )
                added += cur.rowcount
            return added

    def prompt_sets(self, owner: str | None = "") -> list[dict]:
        """[{id, name, n_train, n_heldout, source, owner, created_at}] by name."""
        where, params = _where(("ps.owner = ?", owner))
        return self._rows(
            f"""
            SELECT ps.id, ps.name, ps.source, ps.owner, ps.created_at,
                   COALESCE(SUM(p.split = 'train'), 0)   AS n_train,
                   COALESCE(SUM(p.split = 'heldout'), 0) AS n_heldout
            FROM prompt_sets ps LEFT JOIN prompts p ON p.set_id = ps.id
            {where} GROUP BY ps.id ORDER BY ps.name""",
            params,
        )

    def get_prompts(
        self, set_name: str | None, split: str | None = None, ids: list[int] | None = None, owner: str | None = ""
    ) -> list[dict]:
        """[{id, set_name, text, split, category, source, owner}] in insertion order."""
        ids = None if ids is None else [int(i) for i in ids]
        if ids == []:
            return []
        where, params = _where(
            ("ps.owner = ?", owner), ("ps.name = ?", set_name), ("p.split = ?", split), ("p.id IN ?", ids)
        )
        return self._rows(
            f"""
            SELECT p.id, ps.name AS set_name, p.text, p.split, p.category, p.source, ps.owner
            FROM prompts p JOIN prompt_sets ps ON ps.id = p.set_id
            {where} ORDER BY p.id""",
            params,
        )

    # ------------------------------------------------------------------ samples

    def upsert_sample(self, prompt_id: int, constitution_id: int, idx: int = 0, **fields) -> int:
        """Create or overwrite the sample (prompt, constitution version, idx); returns its id.

        Meant for pipeline writes (generation, revision). Unless the sample was
        hand-edited or `final` is given, `final` follows the latest revision,
        else the prompted answer. Every write bumps `version`."""
        _check_sample_fields(fields)
        now = time.time()
        with self._tx() as db:
            old = db.execute(
                "SELECT * FROM samples WHERE prompt_id = ? AND constitution_id = ? AND idx = ?",
                (prompt_id, constitution_id, idx),
            ).fetchone()
            if old is None:
                row = {**_NEW_SAMPLE, **fields}
                if "final" not in fields:
                    row["final"] = _default_final(row)
                cols = ["prompt_id", "constitution_id", "idx", *_SAMPLE_FIELDS, "version", "created_at", "updated_at"]
                values = [prompt_id, constitution_id, idx, *[encode(c, row[c]) for c in _SAMPLE_FIELDS], 1, now, now]
                try:
                    cur = db.execute(
                        f"INSERT INTO samples ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values
                    )
                except sqlite3.IntegrityError as e:
                    raise StoreError(f"cannot add sample: {e}") from None
                return cur.lastrowid
            changes = dict(fields)
            merged = {**decode(old), **fields}
            if "final" not in fields and not merged["edited"]:
                changes["final"] = _default_final(merged)
            self._write_sample(db, old["id"], changes, now)
            return old["id"]

    def get_sample(self, sample_id: int, owner: str | None = None) -> dict:
        """The sample with its prompt's text, set, split and owner; with `owner`, NotFound
        unless it belongs to that owner."""
        where, params = _where(("s.id = ?", sample_id), ("ps.owner = ?", owner))
        return self._one(f"{_SAMPLE_SELECT} {where}", params, f"sample {sample_id}")

    def list_samples(
        self, where: "SampleFilter | None" = None, *, limit: int | None = None, offset: int = 0, **filters
    ) -> list[dict]:
        """Samples in prompt order that pass ``where`` (or a SampleFilter of the keyword ``filters``)."""
        clause, params = (where or SampleFilter(**filters)).sql()
        sql = f"{_SAMPLE_SELECT} {clause} ORDER BY s.prompt_id, s.constitution_id, s.idx"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        elif offset:
            sql += " LIMIT -1 OFFSET ?"
            params.append(int(offset))
        return self._rows(sql, params)

    def count_samples(self, where: "SampleFilter | None" = None, **filters) -> dict:
        """{total, pending, accepted, rejected, flagged} of the samples list_samples would return,
        counted by SQLite (nothing is decoded)."""
        clause, params = (where or SampleFilter(**filters)).sql()
        rows = self._rows(
            f"""
            SELECT s.status, COUNT(*) AS n, SUM(json_array_length(s.flags) > 0) AS flagged FROM samples s
            JOIN prompts p ON p.id = s.prompt_id JOIN prompt_sets ps ON ps.id = p.set_id
            {clause} GROUP BY s.status""",
            params,
        )
        counts = {"total": 0, **{s: 0 for s in SAMPLE_STATUSES}, "flagged": 0}
        for r in rows:
            counts[r["status"]] = r["n"]
            counts["total"] += r["n"]
            counts["flagged"] += r["flagged"] or 0
        return counts

    def update_sample(self, sample_id: int, expected_version: int, **fields) -> dict:
        """A reviewer's edit, applied only if the sample is still at `expected_version`.

        Raises ConflictError (with `.current`) when someone else changed it first,
        so no edit is silently lost. Setting `final` marks the sample edited unless
        it equals the generated text (or `edited` is given). Returns the new row."""
        _check_sample_fields(fields)
        with self._tx() as db:
            old = db.execute("SELECT * FROM samples WHERE id = ?", (sample_id,)).fetchone()
            if old is None:
                raise NotFound(f"sample {sample_id} not found")
            if old["version"] != expected_version:
                current = self.get_sample(sample_id)
                raise ConflictError(
                    f"sample {sample_id} was changed elsewhere (now version {old['version']}, "
                    f"you edited version {expected_version}); reload it and reapply your edit",
                    current,
                )
            changes = dict(fields)
            merged = {**decode(old), **fields}
            if "final" in fields and "edited" not in fields:
                changes["edited"] = fields["final"] != _default_final(merged)
            elif "final" not in fields and not merged["edited"]:
                changes["final"] = _default_final(merged)
            self._write_sample(db, sample_id, changes, time.time())
            return self.get_sample(sample_id)

    def _write_sample(self, db: sqlite3.Connection, sample_id: int, changes: dict, now: float) -> None:
        sets = [f"{c} = ?" for c in changes]
        values = [encode(c, v) for c, v in changes.items()]
        try:
            db.execute(
                f"UPDATE samples SET {', '.join(sets + ['version = version + 1', 'updated_at = ?'])} WHERE id = ?",
                [*values, now, sample_id],
            )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"cannot update sample {sample_id}: {e}") from None

    def upsert_samples(self, items: list[dict]) -> list[int]:
        """Several upsert_sample calls in one transaction (all of a prompt's answers land
        together, so a killed job never leaves a prompt half-written). Each item holds
        prompt_id, constitution_id, idx and sample fields."""
        with self._tx():
            return [self.upsert_sample(**item) for item in items]

    def set_sample_flags(self, flags_by_id: dict[int, list[str]]) -> int:
        """Replace machine-computed flags without bumping `version`: recomputing flags
        must not make a reviewer's open edit conflict. Returns how many rows changed."""
        changed = 0
        with self._tx() as db:
            for sample_id, flags in flags_by_id.items():
                _check_sample_fields({"flags": flags})
                changed += db.execute(
                    "UPDATE samples SET flags = ? WHERE id = ? AND flags != ?",
                    (to_json(flags), sample_id, to_json(flags)),
                ).rowcount
        return changed

    def bulk_set_status(
        self, sample_ids: list[int], status: str, reviewer: str = "", from_status: str | None = "pending"
    ) -> int:
        """Set the status of many samples at once (bumping each version); with
        `from_status`, only those still in that status. Returns how many changed."""
        _check_sample_fields({"status": status})
        ids = [int(i) for i in sample_ids]
        if not ids:
            return 0
        where, params = _where(("status = ?", from_status), ("id IN ?", ids))
        with self._tx() as db:
            return db.execute(
                f"UPDATE samples SET status = ?, reviewer = ?, version = version + 1, updated_at = ? {where}",
                [status, reviewer or "", time.time(), *params],
            ).rowcount

    # ------------------------------------------------------------------ jobs

    def create_job(self, kind: str, config: dict, owner: str = "", heavy: bool = False) -> int:
        """A new queued job and its run directory; `heavy` jobs (they load the model) run one at a time. Its id
        is above any the workspace ever issued (workspace.highest_job_id), even after a restore."""
        key, now = secrets.token_hex(16), time.time()
        with self._tx() as db:
            job_id = db.execute(
                "INSERT INTO jobs (id, kind, config, heavy, owner, created_at, run_key) "
                "VALUES ((SELECT MAX(IFNULL(MAX(id), 0), ?) + 1 FROM jobs), ?, ?, ?, ?, ?, ?)",
                (workspace.highest_job_id(self.home), kind, to_json(config or {}), int(heavy), owner, now, key),
            ).lastrowid
            workspace.note_job_id(self.home, job_id)
        workspace.claim_run_dir(self.runs_dir, job_id, key)
        return job_id

    def run_dir(self, job_id: int) -> Path:
        """runs/<job_id>/, made if missing; StoreError if the directory there is another job's (its run key)."""
        return workspace.claim_run_dir(self.runs_dir, job_id, self.get_job(job_id)["run_key"])

    def get_job(self, job_id: int, owner: str | None = None) -> dict:
        """One job; with `owner`, NotFound unless it belongs to that owner."""
        where, params = _where(("id = ?", job_id), ("owner = ?", owner))
        return self._one(f"SELECT * FROM jobs {where}", params, f"job {job_id}")

    def list_jobs(
        self,
        kind: str | None = None,
        owner: str | None = None,
        limit: int | None = 50,
        state: str | Iterable[str] | None = None,
    ) -> list[dict]:
        """Jobs, newest first. `owner=None` lists every owner; `state` may be one or several."""
        where, params = _where(("kind = ?", kind), ("owner = ?", owner), ("state IN ?", _listed(state)))
        sql = f"SELECT * FROM jobs {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._rows(sql, params)

    def update_job(self, job_id: int, if_state: Iterable[str] | None = None, **fields) -> bool:
        """Set job columns. With `if_state`, only while the job is in one of those
        states (so a late writer cannot overwrite a final state). Returns whether
        the row was changed."""
        unknown = set(fields) - set(_JOB_FIELDS)
        if unknown:
            raise StoreError(f"unknown job field(s): {', '.join(sorted(unknown))}")
        if "state" in fields and fields["state"] not in JOB_STATES:
            raise StoreError(f"bad job state {fields['state']!r}")
        if not fields:
            return False
        where, params = _where(("id = ?", job_id), ("state IN ?", _listed(if_state)))
        with self._tx() as db:
            changed = db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in fields)} {where}",
                [encode(c, v) for c, v in fields.items()] + params,
            ).rowcount
            if not changed and not db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                raise NotFound(f"job {job_id} not found")
            return bool(changed)

    def claim_job(self, job_id: int, pid: int, per_owner: int | None = None) -> int:
        """Atomically move a queued job to 'running' if it may start now.

        Returns 0 when claimed, the number of jobs ahead when it must wait (for a heavy job, heavy ones running
        or queued before it; with `per_owner`, that many of its owner's running), or -1 when no longer queued."""
        with self._tx() as db:
            job = db.execute("SELECT state, heavy, owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                raise NotFound(f"job {job_id} not found")
            if job["state"] != "queued":
                return -1
            if per_owner is not None and job["owner"]:
                mine = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = 'running' AND id != ?",
                    (job["owner"], job_id),
                ).fetchone()[0]
                if mine >= per_owner:
                    return mine
            if job["heavy"]:
                ahead = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE heavy = 1 AND id != ? AND "
                    "(state = 'running' OR (state = 'queued' AND id < ? AND pid IS NOT NULL))",
                    (job_id, job_id),
                ).fetchone()[0]
                if ahead:
                    return ahead
            now = time.time()
            db.execute(
                "UPDATE jobs SET state = 'running', pid = ?, started_at = ?, heartbeat_at = ?, "
                "message = '', attempts = attempts + 1 WHERE id = ?",
                (pid, now, now, job_id),
            )
            return 0

    # ------------------------------------------------------------------ metrics

    def log_metrics(self, job_id: int, step: int, values: dict[str, float]) -> None:
        """Record metric values at a step. Logging the same (name, step) again replaces it,
        so a resumed job may safely repeat a step."""
        now = time.time()
        try:
            rows = [(job_id, int(step), str(k), None if v is None else float(v), now) for k, v in values.items()]
        except (TypeError, ValueError) as e:
            raise StoreError(f"metric values must be numbers: {e}") from None
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics (job_id, step, name, value, at) VALUES (?, ?, ?, ?, ?)", rows
            )

    def get_metrics(self, job_id: int, name: str | None = None) -> list[dict]:
        """[{step, name, value, at}] ordered by step, then name."""
        where, params = _where(("job_id = ?", job_id), ("name = ?", name))
        return self._rows(f"SELECT step, name, value, at FROM metrics {where} ORDER BY step, name", params)

    # ------------------------------------------------------------------ evals and votes

    def save_eval(
        self, job_id: int | None, constitution_id: int | None, run_ids: list, results: dict, owner: str = ""
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO evals (job_id, constitution_id, run_ids, results, owner, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, constitution_id, to_json(list(run_ids or [])), to_json(results or {}), owner, time.time()),
            )
            return cur.lastrowid

    def get_eval(self, eval_id: int) -> dict:
        return self._one("SELECT * FROM evals WHERE id = ?", (eval_id,), f"eval {eval_id}")

    def list_evals(self, owner: str | None = "") -> list[dict]:
        """Evals, newest first."""
        where, params = _where(("owner = ?", owner))
        return self._rows(f"SELECT * FROM evals {where} ORDER BY id DESC", params)

    def add_vote(self, eval_id: int, prompt_id: int, choice: str, a_is: str, reviewer: str = "") -> int:
        """A blind A/B vote; `a_is` names the system shown as A. A reviewer voting
        again on the same prompt of the same eval replaces their vote."""
        if choice not in VOTE_CHOICES:
            raise StoreError(f"vote must be one of {', '.join(VOTE_CHOICES)}, not {choice!r}")
        if not a_is:
            raise StoreError("a vote must say which system was shown as A")
        with self._tx() as db:
            try:
                db.execute(
                    """
                    INSERT INTO votes (eval_id, prompt_id, choice, a_is, reviewer, created_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (eval_id, prompt_id, reviewer)
                    DO UPDATE SET choice = excluded.choice, a_is = excluded.a_is,
                                  created_at = excluded.created_at""",
                    (eval_id, prompt_id, choice, a_is, reviewer or "", time.time()),
                )
            except sqlite3.IntegrityError as e:
                raise StoreError(f"cannot record vote: {e}") from None
            return db.execute(
                "SELECT id FROM votes WHERE eval_id = ? AND prompt_id = ? AND reviewer = ?",
                (eval_id, prompt_id, reviewer or ""),
            ).fetchone()["id"]

    def list_votes(self, eval_id: int) -> list[dict]:
        return self._rows("SELECT * FROM votes WHERE eval_id = ? ORDER BY id", (eval_id,))


# --------------------------------------------------------------------------- helpers

_SAMPLE_SELECT = """
    SELECT s.*, p.text AS prompt, p.split, p.category, ps.name AS set_name, ps.owner
    FROM samples s JOIN prompts p ON p.id = s.prompt_id JOIN prompt_sets ps ON ps.id = p.set_id"""


@dataclass(frozen=True)
class SampleFilter:
    """Which samples a list, a count or a bulk action applies to; None (or "" for owner: the local
    workspace) leaves a field unfiltered. ``search`` matches the prompt, the answers and the note
    (case-insensitive); min_len/max_len bound len(final) in characters; ``flag`` keeps samples
    carrying that flag; ``principle`` keeps samples whose revision chain used that principle id or
    that carry the flag "failed_check:<principle>"; ``split`` filters on the prompt's split."""

    constitution_id: int | None = None
    set_name: str | None = None
    status: str | None = None
    search: str | None = None
    min_len: int | None = None
    max_len: int | None = None
    flag: str | None = None
    principle: str | None = None
    split: str | None = None
    owner: str | None = ""

    def sql(self) -> tuple[str, list]:
        if self.status is not None and self.status not in SAMPLE_STATUSES:
            raise StoreError(f"bad sample status {self.status!r}")
        like = None
        if self.search:
            like = "%" + self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return _where(
            ("ps.owner = ?", self.owner),
            ("s.constitution_id = ?", self.constitution_id),
            ("ps.name = ?", self.set_name),
            ("s.status = ?", self.status),
            (
                "("
                + " OR ".join(
                    f"{c} LIKE ? ESCAPE '\\'" for c in ("p.text", "s.final", "s.prompted", "s.unprompted", "s.note")
                )
                + ")",
                like,
            ),
            ("length(s.final) >= ?", self.min_len),
            ("length(s.final) <= ?", self.max_len),
            ("EXISTS (SELECT 1 FROM json_each(s.flags) WHERE json_each.value = ?)", self.flag),
            (
                "(EXISTS (SELECT 1 FROM json_each(s.chain) WHERE json_extract(json_each.value, '$.principle') = ?)"
                " OR EXISTS (SELECT 1 FROM json_each(s.flags) WHERE json_each.value = 'failed_check:' || ?))",
                self.principle,
            ),
            ("p.split = ?", self.split),
        )


def _where(*conditions: tuple[str, Any]) -> tuple[str, list]:
    """WHERE clause from (sql, value) pairs, skipping those whose value is None.

    The value fills every ? of its condition; a list fills the one ? of "column IN ?" with as many
    placeholders as it has items."""
    parts, params = [], []
    for sql, value in conditions:
        if isinstance(value, list):
            parts.append(sql.replace("?", f"({','.join('?' * len(value))})"))
            params += value
        elif value is not None:
            parts.append(sql)
            params += [value] * sql.count("?")
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


def _listed(value: str | Iterable[str] | None) -> list[str] | None:
    """One value or several as a list, for an "IN ?" condition of _where; None stays None."""
    return None if value is None else [value] if isinstance(value, str) else list(value)


def _check_sample_fields(fields: dict) -> None:
    unknown = set(fields) - set(_SAMPLE_FIELDS)
    if unknown:
        raise StoreError(f"unknown sample field(s): {', '.join(sorted(unknown))}")
    if "status" in fields and fields["status"] not in SAMPLE_STATUSES:
        raise StoreError(f"sample status must be one of {', '.join(SAMPLE_STATUSES)}, not {fields['status']!r}")
    if "flags" in fields and not all(isinstance(f, str) for f in fields["flags"] or []):
        raise StoreError("sample flags must be a list of strings")


def _default_final(row: dict) -> str:
    """The text to train on when nobody edited it: the last revision, else the prompted answer."""
    for step in reversed(row.get("chain") or []):
        if isinstance(step, dict) and step.get("revision"):
            return step["revision"]
    return row.get("prompted") or ""
