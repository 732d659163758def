"""Light API endpoints, beside the tabs: read and write constitutions and review samples from a
script (``gradio_client``), each visitor only their own.

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    v = c.predict(open("assets/constitutions/pirate.yaml").read(), "first try", api_name="/save_version")
    c.predict(sample_id, version, "accepted", "", api_name="/review")

None of them touches the model, so they never wait behind a preview or a training run.
"""

from __future__ import annotations

import gradio as gr

from ctxdistill import constitution as cmod
from ctxdistill import curate
from ctxdistill.demo import kb
from ctxdistill.store import ConflictError, NotFound, StoreError
from ctxdistill.ui.common import AppContext

# Light events run many at a time: the store serialises its own writes.
LIGHT_CONCURRENCY = 16


def _sample_view(row: dict) -> dict:
    keys = (
        "id",
        "version",
        "status",
        "prompt",
        "prompted",
        "unprompted",
        "final",
        "note",
        "flags",
        "set_name",
        "constitution_id",
    )
    return {k: row[k] for k in keys}


def build(ctx: AppContext) -> None:
    def versions(request: gr.Request) -> list[dict]:
        """The visitor's constitution versions, newest first: id, name, message."""
        return [
            {"id": v["id"], "name": v["name"], "message": v["message"]}
            for v in ctx.store.list_constitution_versions(owner=ctx.owner(request))
        ]

    def save_version(constitution: str, message: str, request: gr.Request) -> dict:
        """Save a constitution (YAML or JSON text) as a new version; returns its id."""
        ctx.limit(text_kb=max(kb(constitution or ""), kb(message or "")))
        try:
            c = cmod.ensure_valid(cmod.parse(constitution))
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        new_id = ctx.store.save_constitution(
            c.name, cmod.to_dict(c), cmod.content_hash(c), message=message or "", owner=ctx.owner(request)
        )
        return {"id": new_id}

    def samples(constitution_id: int, status: str, limit: int, request: gr.Request) -> list[dict]:
        """Up to `limit` of the visitor's samples of a version ("" status = any)."""
        try:
            rows = ctx.store.list_samples(
                constitution_id=int(constitution_id),
                status=status or None,
                owner=ctx.owner(request),
                limit=max(1, min(int(limit), 200)),
            )
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        return [_sample_view(r) for r in rows]

    def sample(sample_id: int, request: gr.Request) -> dict:
        """One of the visitor's samples."""
        try:
            return _sample_view(ctx.store.get_sample(int(sample_id), owner=ctx.owner(request)))
        except (NotFound, ValueError):
            raise gr.Error(f"No sample {sample_id!r} here.") from None

    def review(sample_id: int, version: int, status: str, note: str, request: gr.Request) -> dict:
        """Accept or reject a sample (status "accepted"/"rejected"; "" keeps it) and/or set its note,
        as of the version read; a sample changed since then is reported, not overwritten."""
        owner = ctx.owner(request)
        ctx.limit(text_kb=kb(note or ""))
        sample(sample_id, request)  # the visitor's own, or gr.Error
        try:
            row = curate.review(
                ctx.store,
                int(sample_id),
                int(version),
                status=status or None,
                note=note if note else None,
                reviewer=owner,
            )
        except ConflictError as exc:
            raise gr.Error(f"Changed elsewhere since you read it: {exc}") from None
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        return _sample_view(row)

    for fn in (versions, save_version, samples, sample, review):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=LIGHT_CONCURRENCY)
