"""Preference pairs as a Hugging Face preference dataset (``prompt``, ``chosen``, ``rejected``): export
and import, every row of an import checked before any is stored.

    ctxdistill prefs export pairs.jsonl --constitution 3
    ctxdistill prefs import pairs.jsonl --constitution 3
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .pair_store import check_pair
from .prefs import PrefsError
from .prompts import MAX_PROMPT_CHARS, ImportFileError, read_table
from .store import Store, StoreError

MAX_ANSWER_CHARS = 16_000  # one answer of an imported pair: a whole page; a 10 MB cell is a slip
MAX_IMPORT_BYTES = 64 * 2**20
HF_COLUMNS = ("prompt", "chosen", "rejected")


def export_pairs(store: Store, path, *, status: str | None = "accepted", owner: str = "", **filters) -> dict:
    """Write pairs as a Hugging Face preference dataset (``prompt``, ``chosen``, ``rejected``, plus
    ``source`` and ``label``): JSON lines for a .jsonl/.json path, else a ``datasets`` save_to_disk folder."""
    pairs = store.list_pairs(status=status, owner=owner, **filters)
    if not pairs:
        raise PrefsError(f"no {status or ''} pairs to export".replace("  ", " "))
    records = [{k: p[k] for k in (*HF_COLUMNS, "source", "label")} for p in pairs]
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        fmt = "jsonl"
    else:
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))
        fmt = "datasets"
    return {"path": str(path), "format": fmt, "pairs": len(records)}


def _text(value, role: str):
    """A cell as text: a string, or TRL's conversational form (a list of messages: the last of ``role``)."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        said = [m.get("content") for m in value if m.get("role") == role]
        return said[-1] if said else None
    return value


def read_pairs(path) -> list[dict]:
    """The pairs of a preference file (jsonl, json, csv, parquet or a ``datasets`` folder), every row
    checked before any is stored: PrefsError naming the first bad row."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_IMPORT_BYTES:
        raise PrefsError(f"{path} is {path.stat().st_size / 2**20:.0f} MB: at most {MAX_IMPORT_BYTES >> 20} MB")
    try:
        records = read_table(path)
    except (ImportFileError, OSError) as exc:
        raise PrefsError(str(exc)) from None
    if not records:
        raise PrefsError(f"{path} holds no rows")
    missing = [c for c in HF_COLUMNS if c not in records[0]]
    if missing:
        raise PrefsError(
            f"{path} lacks the column(s) {', '.join(missing)}: a preference file has {', '.join(HF_COLUMNS)}"
        )
    out = []
    for n, r in enumerate(records, 1):
        row = {
            "prompt": _text(r.get("prompt"), "user"),
            "chosen": _text(r.get("chosen"), "assistant"),
            "rejected": _text(r.get("rejected"), "assistant"),
        }
        for key, most in (("prompt", MAX_PROMPT_CHARS), ("chosen", MAX_ANSWER_CHARS), ("rejected", MAX_ANSWER_CHARS)):
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise PrefsError(f"row {n}: {key} is empty or not text")
            if len(value) > most:
                raise PrefsError(f"row {n}: {key} is {len(value):,} characters; at most {most:,}")
        label = r.get("label", 1.0)
        try:
            label = float(1.0 if label is None else label)
        except (TypeError, ValueError):
            raise PrefsError(f"row {n}: label {label!r} is not a number") from None
        if not (0 <= label <= 1) or math.isnan(label):
            raise PrefsError(f"row {n}: label {label} is not a probability in [0, 1]")
        try:
            check_pair({**row, "source": "import", "label": label})
        except StoreError as exc:
            raise PrefsError(f"row {n}: {exc}") from None
        out.append({**row, "source": "import", "label": label, "meta": {"file": os.path.basename(str(path))}})
    return out


def import_pairs(store: Store, path, constitution_id: int, owner: str = "", status: str = "pending") -> dict:
    """Store the pairs of a preference file for a constitution version (all or none)."""
    from . import demo

    try:
        store.get_constitution(constitution_id, owner=owner)
    except StoreError:
        raise PrefsError(f"constitution version {constitution_id} not found") from None
    rows = read_pairs(path)
    caps = demo.caps()
    if caps:
        try:
            caps.check(pairs=len(rows))
        except demo.DemoLimit as exc:
            raise PrefsError(str(exc)) from None
    added = store.add_pairs([{**r, "constitution_id": constitution_id, "status": status} for r in rows], owner=owner)
    return {"rows": len(rows), "added": added, "constitution_id": constitution_id}
