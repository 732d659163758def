"""The queries of the preference pairs table (the RL-CAI stage, prefs.py): a mixin of ``store.Store``.

    store.add_pairs([{"constitution_id": 3, "prompt": p, "chosen": a, "rejected": b, "source": "checks"}])
    store.list_pairs(constitution_id=3, status="pending", source="feedback", min_confidence=0.4)
    store.flip_pair(pair_id)

A pair is two answers to one prompt, the preferred one first; ``label`` is the probability that
``chosen`` is the better one (1 for a check or a revision, the judge's soft label for AI feedback)
and its *confidence* is ``|label - 0.5| * 2`` (0: a coin toss, 1: certain). Status is
pending/accepted/rejected as for samples; a flip swaps the two answers (the label becomes
``1 - label``) and accepts the pair. The table is in migrations.py (``_m004_pairs``).
"""

from __future__ import annotations

import sqlite3
import time

from .database import to_json
from .workspace import StoreError

PAIR_SOURCES = ("feedback", "revision", "checks", "instructions", "import")
PAIR_STATUSES = ("pending", "accepted", "rejected")
_COLUMNS = ("constitution_id", "prompt", "chosen", "rejected", "source", "label", "meta", "job_id")


def check_pair(item: dict) -> None:
    """StoreError unless ``item`` is a pair that can be stored: texts, two different answers, a known source."""
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise StoreError(f"a pair needs a non-empty {key} text")
    if item["chosen"].strip() == item["rejected"].strip():
        raise StoreError("a pair's two answers are identical: nothing to prefer")
    if item.get("source") not in PAIR_SOURCES:
        raise StoreError(f"pair source must be one of {', '.join(PAIR_SOURCES)}, not {item.get('source')!r}")
    if not 0 <= float(item.get("label", 1.0)) <= 1:
        raise StoreError(f"a pair's label is a probability in [0, 1], not {item.get('label')}")


def flipped_meta(meta: dict) -> dict:
    """A pair's meta once its answers swap sides: flipped toggled, the unfinished marks on their texts."""
    swap = {"chosen": "rejected", "rejected": "chosen"}
    out = {**meta, "flipped": not meta.get("flipped")}
    if meta.get("unfinished"):
        out["unfinished"] = sorted(swap[side] for side in meta["unfinished"])
    return out


def _pair_where(
    ids=None, constitution_id=None, status=None, source=None, min_confidence=None, search=None, owner: str | None = ""
) -> tuple[str, list]:
    if status is not None and status not in PAIR_STATUSES:
        raise StoreError(f"pair status must be one of {', '.join(PAIR_STATUSES)}, not {status!r}")
    parts, params = [], []
    for sql, value in (
        ("owner = ?", owner),
        ("constitution_id = ?", constitution_id),
        ("status = ?", status),
        ("source = ?", source or None),
        ("abs(label - 0.5) * 2 >= ?", min_confidence),
        ("(prompt LIKE ? OR chosen LIKE ? OR rejected LIKE ?)", f"%{search}%" if search else None),
    ):
        if value is not None:
            parts.append(sql)
            params += [value] * sql.count("?")
    if ids is not None:
        parts.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        params += [int(i) for i in ids]
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


class PairQueries:
    """Store methods for the pairs table (``self`` is a database.Database)."""

    def add_pairs(self, items: list[dict], owner: str = "") -> int:
        """Store pairs (each checked by ``check_pair``) in one transaction; a pair already stored (same
        prompt and answers) is skipped. Returns how many were new."""
        for item in items:
            check_pair(item)
        now, added = time.time(), 0
        with self._tx() as db:
            for item in items:
                values = [
                    to_json(item.get("meta") or {}) if c == "meta" else item.get(c, 1.0 if c == "label" else None)
                    for c in _COLUMNS
                ]
                added += db.execute(
                    f"INSERT OR IGNORE INTO pairs ({', '.join(_COLUMNS)}, status, owner, created_at, updated_at) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))}, ?, ?, ?, ?)",
                    [*values, item.get("status", "pending"), owner, now, now],
                ).rowcount
        return added

    def list_pairs(self, *, limit: int | None = None, offset: int = 0, **filters) -> list[dict]:
        """Pairs in the order they were made; filters: ids, constitution_id, status, source,
        min_confidence (0..1), search, owner ("" local, None every owner)."""
        where, params = _pair_where(**filters)
        sql = f"SELECT *, abs(label - 0.5) * 2 AS confidence FROM pairs {where} ORDER BY id"
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else int(limit), int(offset)]
        return self._rows(sql, params)

    def count_pairs(self, **filters) -> dict:
        """{total, pending, accepted, rejected} of the pairs list_pairs would return."""
        where, params = _pair_where(**filters)
        counts = {"total": 0, **dict.fromkeys(PAIR_STATUSES, 0)}
        for row in self._rows(f"SELECT status, COUNT(*) AS n FROM pairs {where} GROUP BY status", params):
            counts[row["status"]] = row["n"]
            counts["total"] += row["n"]
        return counts

    def get_pair(self, pair_id: int, owner: str | None = None) -> dict:
        where, params = _pair_where(ids=[pair_id], owner=owner)
        return self._one(f"SELECT *, abs(label - 0.5) * 2 AS confidence FROM pairs {where}", params, f"pair {pair_id}")

    def set_pairs_status(self, ids: list[int], status: str, reviewer: str = "", owner: str | None = "") -> int:
        """Accept or reject (or set back to pending) many pairs; returns how many changed."""
        if status not in PAIR_STATUSES:
            raise StoreError(f"pair status must be one of {', '.join(PAIR_STATUSES)}, not {status!r}")
        where, params = _pair_where(ids=list(ids), owner=owner)
        with self._tx() as db:
            return db.execute(
                f"UPDATE pairs SET status = ?, reviewer = ?, updated_at = ? {where}",
                [status, reviewer, time.time(), *params],
            ).rowcount

    def flip_pair(self, pair_id: int, reviewer: str = "", owner: str | None = "") -> dict:
        """The reviewer prefers the other answer: swap chosen and rejected (label -> 1 - label) and accept."""
        pair = self.get_pair(pair_id, owner=owner)
        with self._tx() as db:
            try:
                db.execute(
                    "UPDATE pairs SET chosen = ?, rejected = ?, label = ?, status = 'accepted', reviewer = ?, "
                    "meta = ?, updated_at = ? WHERE id = ?",
                    [pair["rejected"], pair["chosen"], 1 - pair["label"], reviewer, to_json(flipped_meta(pair["meta"]))]
                    + [time.time(), pair_id],
                )
            except sqlite3.IntegrityError as exc:  # the flipped pair exists already (it was made both ways)
                raise StoreError(f"cannot flip pair {pair_id}: {exc}") from None
        return self.get_pair(pair_id)
